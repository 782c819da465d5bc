"""Logger lost while running: connections stall, `ftcp status` says so, they resume.

The first tests drive `LoggerClient(reconnect=True)` against an in-process
logger that is stopped and started again on the same port (same data dir:
resume; empty data dir: refused). The lab tests (root) kill -9 the logger
under `ftcp run` mid-transfer and check invariant 1 on the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ithelpers import (
    APPS,
    FTCP,
    Capture,
    Env,
    check_ack_clamping,
    echo_server,
    iptables_rules,
    kill9,
    logger_on,
    start_env,
    wait_until,
)

from ftcp.core import seq
from ftcp.core.records import (
    Close,
    CloseHow,
    Handshake,
    InSegment,
    ReadKind,
    ReadResult,
    SynOptions,
)
from ftcp.logger.client import LoggerClient
from ftcp.logger.daemon import LoggerConfig, LoggerServer

SECRET = b"logger-loss-secret"


def _hs(cid: int) -> Handshake:
    o = SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1, ts_ecr=None)
    return Handshake(cid, 0, "10.0.0.2", 40000, "10.0.0.1", 8080, 1000, 5000, o, o)


def _seg(cid: int, off: int, data: bytes) -> InSegment:
    return InSegment(cid, seq.add(1000, 1 + off), 5001, 65535, payload=data)


async def _server(d: Path, port: int = 0) -> LoggerServer:
    srv = LoggerServer(LoggerConfig(data_dir=d, secret=SECRET, port=port))
    await srv.start()
    return srv


async def _until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_client_resumes_on_the_same_data_dir_and_refuses_an_empty_one(tmp_path: Path) -> None:
    async def go() -> None:
        srv = await _server(tmp_path / "a")
        host, port = srv.address
        events: list[tuple[bool, str]] = []
        pressure: list[bool] = []
        c = await LoggerClient.connect(
            host, port, app_id="app", secret=SECRET, reconnect=True, max_unacked=20_000,
            on_link=lambda up, why: events.append((up, why)), on_pressure=pressure.append,
        )  # fmt: skip
        data = os.urandom(60_000)
        c.send([_hs(1), _seg(1, 0, data[:10_000]), ReadResult(1, 0, ReadKind.DATA, 100)])
        await asyncio.wait_for(c.wait_batch(), 5)
        assert c.stable[1][0] == seq.add(1000, 10_001) and c.next_order == 1
        await srv.close()  # the logger goes away
        await _until(lambda: not c.link_up)
        assert events and events[-1][0] is False
        # while down: sends are buffered, never raise; past max_unacked intake is paused
        for i in range(1, 6):
            c.send([_seg(1, 10_000 * i, data[10_000 * i : 10_000 * (i + 1)])])
        c.send([ReadResult(1, 1, ReadKind.DATA, 50), Close(1, CloseHow.SHUT_WR)])
        st = c.link_status()
        assert st["up"] is False and st["unacked_bytes"] > 50_000 and st["intake_paused"]
        assert pressure == [True]
        assert c.stable[1][0] == seq.add(1000, 10_001)  # nothing new acknowledged
        waiter = asyncio.ensure_future(c.wait_batch())
        # an empty data dir is another logger: refused, the link stays down
        other = await _server(tmp_path / "empty", port)
        await _until(lambda: c.history_lost is not None)
        assert not c.link_up and "history" in c.history_lost
        assert c.stable[1][0] == seq.add(1000, 10_001) and not waiter.done()
        await other.close()
        # the same logger again (its data dir): resumes, resends, acks advance
        srv = await _server(tmp_path / "a", port)
        await asyncio.wait_for(waiter, 10)
        assert c.link_up and c.history_lost is None and events[-1][0] is True
        assert c.stable[1][0] == seq.add(1000, 60_001) and c.next_order == 2
        assert pressure == [True, False] and c.link_status()["unacked_bytes"] == 0
        # duplicates the resend may carry are stored once
        c.send([_seg(1, 0, data[:20_000]), ReadResult(1, 1, ReadKind.DATA, 50), _hs(1)])
        c.send([Close(1, CloseHow.SHUT_WR)])
        await asyncio.wait_for(c.wait_batch(), 5)
        (lg,) = await asyncio.wait_for(c.recover(), 5)
        assert lg.instream == data
        assert [(r.order, r.length) for r in lg.reads] == [(0, 100), (1, 50)]
        assert lg.closes == [Close(1, CloseHow.SHUT_WR)]
        await c.close()
        await srv.close()

    asyncio.run(go())


def test_nothing_acknowledged_means_any_logger_will_do(tmp_path: Path) -> None:
    async def go() -> None:
        srv = await _server(tmp_path / "a")
        host, port = srv.address
        c = await LoggerClient.connect(host, port, app_id="app", secret=SECRET, reconnect=True)
        await srv.close()
        await _until(lambda: not c.link_up)
        c.send([_hs(7)])
        srv = await _server(tmp_path / "b", port)
        await asyncio.wait_for(c.wait_batch(), 10)
        assert c.link_up and 7 in c.handshakes
        await c.close()
        await srv.close()

    asyncio.run(go())


# ---------------------------------------------------------------- lab (root)

# a client that streams NBYTES, reads the echo back, and reports its counts to a file
STREAMER = textwrap.dedent(
    """
    import hashlib, json, os, socket, sys, threading, time
    host, port, nbytes, prog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    s = socket.create_connection((host, port), timeout=120)
    data = os.urandom(nbytes)
    sent = hashlib.sha256(data).hexdigest()
    st = {"sent": 0, "recv": 0}
    def tx():
        for i in range(0, nbytes, 4096):
            s.sendall(data[i:i + 4096]); st["sent"] = i + len(data[i:i + 4096])
            time.sleep(0.0005)
        s.shutdown(socket.SHUT_WR)
    th = threading.Thread(target=tx); th.start()
    got = hashlib.sha256()
    def report():
        with open(prog + ".tmp", "w") as f:
            json.dump(st, f)
        os.replace(prog + ".tmp", prog)
    last = 0.0
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        got.update(d); st["recv"] += len(d)
        if time.monotonic() - last > 0.02:
            report(); last = time.monotonic()
    th.join(); report()
    print(json.dumps({"recv": st["recv"], "recv_sha": got.hexdigest(), "sent_sha": sent}))
    """
)


def _status(env: Env, state_dir: Path) -> list[dict]:
    r = env.lab.run("server", [*FTCP, "status", "--state-dir", str(state_dir), "--json"])
    return json.loads(r.stdout)


def _status_text(env: Env, state_dir: Path) -> str:
    return env.lab.run("server", [*FTCP, "status", "--state-dir", str(state_dir)]).stdout


def _progress(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"sent": 0, "recv": 0}


@pytest.fixture
def lossenv(lab_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = start_env(lab_factory("unshaped"), tmp_path)
    try:
        yield env
    finally:
        env.close()


@pytest.mark.root
@pytest.mark.parametrize("empty_first", [False, True])
def test_logger_killed_mid_transfer_stalls_then_resumes(lossenv: Env, empty_first: bool) -> None:
    """(a) kill -9 the logger mid-transfer: the echo stalls (nothing unlogged acked,
    invariant 1 on the wire), `ftcp status` says the link is down; restarted on its
    data dir the transfer completes byte-exact. With `empty_first`, (c): a logger on
    an EMPTY data dir first is refused (connections keep stalling, status says so)."""
    env = lossenv
    lab = env.lab
    port = env.next_port()
    sip = lab.ip("server")
    script = env.tmp / "streamer.py"
    script.write_text(STREAMER)
    prog = env.tmp / "progress.json"
    nbytes = 6 << 20
    with echo_server(env, port) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        cl = lab.popen(
            "client", [sys.executable, str(script), sip, str(port), str(nbytes), str(prog)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_until(lambda: _progress(prog)["recv"] > nbytes // 6, 60, "the echo to flow")
        kill9(env.logger)
        time.sleep(0.5)
        p1 = _progress(prog)
        time.sleep(1.5)
        p2 = _progress(prog)
        assert p2["recv"] == p1["recv"] < nbytes, (p1, p2)  # stalled
        state = srv.dir / "state"
        (doc,) = _status(env, state)
        assert doc["logger_ok"] is False and doc["logger_link"]["up"] is False
        assert doc["logger_link"]["reconnect_attempts"] >= 2
        (conn,) = [c for c in doc["connections"] if not c["finished"]]
        assert conn["logged_bytes"] > 0 and conn["unlogged_bytes"] > 0  # the stalled lag
        assert "down since" in _status_text(env, state)
        lags = re.findall(r" lag=(\d+) B ", _status_text(env, state))
        assert lags and int(lags[0]) > 0
        assert "lost:" in srv.err() and "connections stall until it is back" in srv.err()
        assert cl.poll() is None
        if empty_first:
            other = logger_on(env, env.tmp / "empty-data")
            try:
                wait_until(
                    lambda: _status(env, state)[0]["logger_link"]["history_lost"], 20,
                    "the empty logger to be refused",
                )  # fmt: skip
                time.sleep(1.0)
                assert _progress(prog)["recv"] == p2["recv"]  # still stalled
                assert "REFUSING" in srv.err() and "REFUSED" in _status_text(env, state)
            finally:
                kill9(other)
        env.logger = logger_on(env, env.tmp / "logger-data")
        out, err = cl.communicate(timeout=120)
        assert cl.returncode == 0, err
        r = json.loads(out.decode().strip().splitlines()[-1])
        assert r["recv"] == nbytes and r["recv_sha"] == r["sent_sha"], r
        (doc,) = _status(env, state)
        assert doc["logger_link"]["up"] and doc["logger_link"]["reconnects"] == 1
        assert " is back (" in srv.err()  # the reconnect's line, not the loss's
        cap.stop()
    n = check_ack_clamping(cap.path, srv.trace, sip, port)
    assert n > 100


@pytest.mark.root
def test_crash_while_logger_down_waits_for_the_logger(lossenv: Env) -> None:
    """(b)+: the logger unreachable for long, `ftcp status` says "down"; the application
    crashes meanwhile: recovery waits for the logger (status says so), then completes."""
    env = lossenv
    lab = env.lab
    port = env.next_port()
    sip = lab.ip("server")
    with echo_server(env, port) as srv:
        script = env.tmp / "streamer.py"
        script.write_text(STREAMER)
        prog = env.tmp / "progress.json"
        nbytes = 3 << 20
        cl = lab.popen(
            "client", [sys.executable, str(script), sip, str(port), str(nbytes), str(prog)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_until(lambda: _progress(prog)["recv"] > nbytes // 6, 60, "the echo to flow")
        kill9(env.logger)
        state = srv.dir / "state"
        time.sleep(4.0)
        (doc,) = _status(env, state)
        assert doc["logger_link"]["up"] is False and doc["logger_link"]["reconnect_attempts"] >= 4
        assert "down since" in _status_text(env, state)
        app_pid = doc["app_pid"]
        lab.run("server", ["kill", "-9", str(app_pid)])
        wait_until(
            lambda: (_status(env, state)[0].get("recovery") or {}).get("waiting_for_logger"),
            20, "recovery to wait for the logger",
        )  # fmt: skip
        time.sleep(1.0)
        rec = _status(env, state)[0]["recovery"]
        assert not rec["gave_up"] and rec["recoveries"] == 0
        assert "WAITING FOR THE LOGGER" in _status_text(env, state)
        env.logger = logger_on(env, env.tmp / "logger-data")
        out, err = cl.communicate(timeout=120)
        assert cl.returncode == 0, err
        r = json.loads(out.decode().strip().splitlines()[-1])
        assert r["recv"] == nbytes and r["recv_sha"] == r["sent_sha"], r
        # the status file is rewritten every second: it may not show the end yet
        wait_until(
            lambda: _status(env, state)[0]["recovery"]["recoveries"] >= 1, 5, "status to catch up"
        )
        rec = _status(env, state)[0]["recovery"]
        assert rec["recoveries"] == 1 and not rec["waiting_for_logger"], rec


@pytest.mark.root
def test_stop_while_recovery_waits_for_the_logger(lossenv: Env) -> None:
    """SIGTERM to `ftcp run` whose recovery waits for a dead logger: it stops at once
    (exit 0, the restarted application stopped, its rules gone), not when a logger
    comes back."""
    env = lossenv
    lab = env.lab
    port = env.next_port()
    before = iptables_rules(lab, "server")
    with echo_server(env, port) as srv:
        cl = lab.popen(
            "client", [sys.executable, "-c", HOLD_OPEN, lab.ip("server"), str(port)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert cl.stdout is not None and b"echoed" in cl.stdout.readline()
            kill9(env.logger)
            wait_until(lambda: " lost: " in srv.err(), 20, f"the logger loss\n{srv.err()}")
            (app,) = _apps(port)
            os.kill(app, 9)
            wait_until(
                lambda: "recovery waits for the logger" in srv.err(), 20, f"the wait\n{srv.err()}"
            )
            assert _apps(port), "the restarted application"  # it starts before the log comes
            assert srv.stop() == 0, srv.err()
            assert "stopped during a recovery" in srv.err(), srv.err()
            assert _apps(port) == []
        finally:
            cl.kill()
            cl.wait()
    assert iptables_rules(lab, "server") == before


def _apps(port: int) -> list[int]:
    """The pids of echo servers on `port` (the tests' APPS echo-server)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [APPS.encode(), b"echo-server", str(port).encode()]:  # not ftcp run
            pids.append(int(d.name))
    return pids


HOLD_OPEN = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"x" * 1000)
    got = b""
    while len(got) < 1000:
        got += s.recv(65536)
    print("echoed", flush=True)
    time.sleep(120)
    """
)
