"""Step 1: kill -9 of a protected echo server mid-transfer is invisible to the client."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crashlib import finish_client, kill_app, recovered_count, run_client, verify
from ithelpers import APPS, Capture, Env, Protected, kill9, logger_on, wait_until

BIGAPPS = str(Path(__file__).with_name("bigapps.py"))

pytestmark = pytest.mark.root


@pytest.mark.parametrize("restore", ["handshake", "repair"])
def test_echo_killed_mid_transfer(unshaped: Env, restore: str) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    cmd = [sys.executable, APPS, "echo-server", str(port)]
    with Protected(unshaped, port, cmd, extra=["--restore", restore]) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        cl = run_client(unshaped, ["duplex", lab.ip("server"), port, 4 << 20, 16384, 0.01])
        time.sleep(1.0)
        kill_app(srv)
        wait_until(lambda: recovered_count(srv) >= 1, 30, f"recovery\n{srv.err()}")
        r = finish_client(cl)
        assert r["ok"], r
    verify(unshaped, srv, cap, port)
    assert "Traceback" not in srv.err(), srv.err()
    print(srv.err())


@pytest.mark.parametrize("restore", ["repair", "handshake"])
def test_log_larger_than_the_receive_queue_replays_byte_exact(
    unshaped: Env, restore: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logged upload larger than a receive queue can take (TCP_REPAIR queues what fits,
    ~32 MB here; SSW refills the rest as the application's reads make room): after the
    crash the restarted server re-reads all of it from the log and its digest matches."""
    lab = unshaped.lab
    port = unshaped.next_port()
    rmem_max = int(lab.run("server", ["sysctl", "-n", "net.ipv4.tcp_rmem"]).stdout.split()[2])
    nbytes = min(rmem_max + (8 << 20), 96 << 20)
    timing = unshaped.tmp / f"timing-{port}.jsonl"
    monkeypatch.setenv("FTCP_BENCH_RECOVERY_TIMING", str(timing))
    with _loaded(unshaped, port, restore, nbytes) as (srv, cl):
        kill_app(srv)
        _answered(srv, cl)
    err = srv.err()
    assert "Traceback" not in err and "DIVERGENCE" not in err, err
    t = json.loads(timing.read_text().splitlines()[-1])
    assert t["logged_bytes"] >= nbytes
    if restore == "repair":
        assert t["repaired"] == 1, err
        assert 0 < t["queued_bytes"] < t["logged_bytes"], t  # the rest came by refill


@pytest.mark.parametrize("restore", ["repair", "handshake"])
def test_log_transfer_cut_mid_way_recovers_again(
    unshaped: Env, restore: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logs stream into the rebuild: the restarted server is already reading the
    first megabytes when the logger dies mid-transfer. Those plans can never be
    completed, so `ftcp run` restarts the application and recovers again from the log
    once a logger is back; the client sees nothing but a longer stall."""
    from ftcp.logger.daemon import TEST_RECOVER_DELAY_ENV

    port = unshaped.next_port()
    nbytes = 24 << 20
    data_dir = unshaped.tmp / "logger-data"
    with _loaded(unshaped, port, restore, nbytes) as (srv, cl):
        # a logger (same data dir) that sends each megabyte of a log 50 ms apart
        kill9(unshaped.logger)
        monkeypatch.setenv(TEST_RECOVER_DELAY_ENV, "50")
        unshaped.logger = logger_on(unshaped, data_dir)
        monkeypatch.delenv(TEST_RECOVER_DELAY_ENV)
        # not "...until it is back" of the loss line: the reconnect's own line
        wait_until(lambda: " is back (" in srv.err(), 20, f"the logger link\n{srv.err()}")
        kill_app(srv)
        wait_until(lambda: "recovering 1 connection" in srv.err(), 10, "the crash")
        time.sleep(0.4)  # the transfer (24 x 50 ms) is under way
        kill9(unshaped.logger)
        wait_until(lambda: "log transfer broke off" in srv.err(), 20, f"the cut\n{srv.err()}")
        unshaped.logger = logger_on(unshaped, data_dir)
        _answered(srv, cl)
    err = srv.err()
    assert "Traceback" not in err and "DIVERGENCE" not in err, err
    assert err.count("the application died from signal") >= 2, err  # recovered again


@contextlib.contextmanager
def _loaded(
    env: Env, port: int, restore: str, nbytes: int
) -> Iterator[tuple[Protected, subprocess.Popen[str]]]:
    """`bigapps.py serve` under `ftcp run --restore <restore>` and its client, once the
    client's `nbytes` upload is read and logged (the client waits for "go")."""
    lab = env.lab
    cmd = [sys.executable, BIGAPPS, "serve", str(port), str(nbytes)]
    with Protected(env, port, cmd, extra=["--restore", restore]) as srv:
        cl = lab.popen(
            "client",
            [sys.executable, BIGAPPS, "client", lab.ip("server"), str(port), str(nbytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert cl.stdout is not None and cl.stdin is not None
            assert "loaded" in cl.stdout.readline(), srv.err()
            time.sleep(0.3)  # the last read results reach the logger
            yield srv, cl
        finally:
            if cl.poll() is None:
                cl.kill()
            cl.wait()


def _answered(srv: Protected, cl: subprocess.Popen[str]) -> None:
    """The client asks; the recovered server's answer proves it re-read every byte."""
    assert cl.stdin is not None and cl.stdout is not None
    cl.stdin.write("go\n")
    cl.stdin.flush()
    line = cl.stdout.readline()
    assert json.loads(line)["ok"], f"{line!r} {srv.err()[-3000:]}"
    wait_until(lambda: recovered_count(srv) >= 1, 30, f"recovery\n{srv.err()}")
