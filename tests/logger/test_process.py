"""The logger as a real process: CLI errors, kill -9 under load, ENOSPC on a small tmpfs."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from logger_helpers import SECRET, handshake, segments, spawn_logger

from ftcp.core import seq, wire
from ftcp.core.records import InSegment, ReadKind, ReadResult
from ftcp.logger.client import LoggerClient, recover_blocking


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftcp.logger", *args], capture_output=True, text=True, timeout=30
    )


def test_cli_refuses_bad_setups_with_one_line(tmp_path, secret_file) -> None:
    d = str(tmp_path / "d")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {
            "refusing to start without a secret": ["--data-dir", d],
            "cannot read secret file": ["--data-dir", d, "--secret-file", str(tmp_path / "nope")],
            "is not writable": ["--data-dir", str(blocker / "sub"), "--insecure"],
            "cannot listen on 127.0.0.1": [
                "--data-dir", d, "--secret-file", str(secret_file), "--listen", f"127.0.0.1:{port}"
            ],
            "HOST:PORT": ["--data-dir", d, "--insecure", "--listen", "nonsense"],
        }
        for words, args in cases.items():
            r = run_cli(*args)
            assert r.returncode == 2, (words, r.stderr)
            assert words in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_data_dir_in_use_is_refused(tmp_path, secret_file, logger_proc) -> None:
    d = tmp_path / "d"
    logger_proc.append(spawn_logger(d, secret_file))
    r = run_cli("--data-dir", str(d), "--secret-file", str(secret_file), "--listen", "127.0.0.1:0")
    assert r.returncode == 2 and "in use by another logger" in r.stderr


class Load:
    """Heavy logging from one supervisor link; remembers the highest acks seen."""

    def __init__(self, n_conns: int, seed: int) -> None:
        rnd = random.Random(seed)
        self.rnd = rnd
        self.isn = {c: rnd.randrange(1 << 32) for c in range(1, n_conns + 1)}
        self.data = {c: rnd.randbytes(8 << 20) for c in self.isn}
        self.sent = dict.fromkeys(self.isn, 0)
        self.acked: dict[int, int] = {}  # conn -> stable_seq acked
        self.next_order = 0
        self.reads: list[ReadResult] = []
        self.handshakes: set[int] = set()

    def on_ack(self, acks: list[wire.Ack]) -> None:
        for a in acks:
            if isinstance(a, wire.StreamAck):
                self.acked[a.conn_id] = a.stable_seq
            elif isinstance(a, wire.ReadsAck):
                self.next_order = max(self.next_order, a.next_order)
            elif isinstance(a, wire.HandshakeAck):
                self.handshakes.add(a.conn_id)

    async def pump(self, c: LoggerClient, until: float) -> None:
        c.send([handshake(cid, c_isn=isn, order=cid) for cid, isn in self.isn.items()])
        order = 0
        while time.monotonic() < until:
            batch = []
            for cid, isn in self.isn.items():
                off = self.sent[cid]
                if off >= len(self.data[cid]):
                    continue
                piece = self.data[cid][off : off + 8 * 1448]
                chunk = segments(cid, isn, piece, mss=1448, start=off)
                # reorder and duplicate a little, as a real network would
                self.rnd.shuffle(chunk)
                chunk += chunk[:2]
                batch += chunk
                self.sent[cid] = off + 8 * 1448
                r = ReadResult(cid, order, ReadKind.DATA, 1448)
                self.reads.append(r)
                batch.append(r)
                order += 1
            if not batch:
                break
            c.send(batch)
            await c.drain()
            await asyncio.sleep(0)


def test_kill9_during_heavy_logging_loses_nothing_acked(tmp_path, secret_file, logger_proc) -> None:
    d = tmp_path / "d"
    p = spawn_logger(d, secret_file, "--sync", "batch", "--segment-size", str(2 << 20))
    logger_proc.append(p)
    load = Load(n_conns=6, seed=11)

    async def go() -> None:
        c = await LoggerClient.connect(
            p.host, p.port, app_id="svc", secret=SECRET, on_ack=load.on_ack
        )
        pump = asyncio.ensure_future(load.pump(c, time.monotonic() + 30))
        while sum(seq.sub(s, load.isn[k] + 1) for k, s in load.acked.items()) < 4 << 20:
            await asyncio.sleep(0.05)
            assert not pump.done()
        p.kill9()  # mid-stream: the client is still sending
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pump, 5)
        c.abort()

    asyncio.run(go())
    assert load.handshakes == set(load.isn) and load.next_order > 0
    acked = dict(load.acked)
    next_order = load.next_order
    total_acked = sum(seq.sub(s, load.isn[k] + 1) for k, s in acked.items())
    assert total_acked < sum(map(len, load.data.values()))  # killed mid-stream

    p2 = spawn_logger(d, secret_file)
    logger_proc.append(p2)
    logs = {lg.handshake.conn_id: lg for lg in recover_blocking(p2.host, p2.port, "svc", SECRET)}
    assert set(logs) == set(load.isn)
    for cid, isn in load.isn.items():
        lg = logs[cid]
        n_acked = seq.sub(acked.get(cid, seq.add(isn, 1)), seq.add(isn, 1))
        assert len(lg.instream) >= n_acked  # everything acked is there ...
        assert lg.instream == load.data[cid][: len(lg.instream)]  # ... and exactly right
        assert lg.stable_seq == seq.add(isn, 1 + len(lg.instream))
    got_reads = sorted((r for lg in logs.values() for r in lg.reads), key=lambda r: r.order)
    assert got_reads[:next_order] == load.reads[:next_order]
    p2.stop()
    assert "truncated" in p2.stderr() or "replayed" in p2.stderr()


@pytest.mark.root
def test_enospc_stops_acks_and_resumes(tmp_path, secret_file, logger_proc) -> None:
    if shutil.which("mount") is None:
        pytest.skip("no mount(8)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        _enospc(mnt, tmp_path, secret_file, logger_proc)
    finally:
        for p in logger_proc:
            p.kill9()
        subprocess.run(["umount", str(mnt)], check=False)


def _enospc(mnt: Path, tmp_path: Path, secret_file: Path, logger_proc: list) -> None:
    d = mnt / "d"
    p = spawn_logger(d, secret_file, "--retry-interval", "0.2", log_dir=tmp_path)
    logger_proc.append(p)
    ballast = mnt / "ballast"
    ballast.write_bytes(b"\0" * (3 << 20))  # leave well under 1 MiB free
    rnd = random.Random(5)
    data = rnd.randbytes(2 << 20)
    isn = 77

    async def go() -> None:
        c = await LoggerClient.connect(p.host, p.port, app_id="svc", secret=SECRET)
        c.send([handshake(1, c_isn=isn)])
        await c.wait_batch()
        segs: list[InSegment] = segments(1, isn, data, mss=16 * 1024)
        for i in range(0, len(segs), 4):
            c.send(segs[i : i + 4])
        # acks stop short of the end: the disk is full
        for _ in range(100):
            await asyncio.sleep(0.05)
            if "No space left on device" in p.stderr():
                break
        assert "No space left on device" in p.stderr()
        await asyncio.sleep(0.5)
        stuck = c.stable.get(1, (seq.add(isn, 1),))[0]
        assert seq.lt(stuck, seq.add(isn, 1 + len(data)))
        assert await c.ping() < 1  # link kept, heartbeats answered
        ballast.unlink()  # space comes back: the logger resumes by itself
        await asyncio.wait_for(c.wait_batch(), 20)
        assert c.stable[1][0] == seq.add(isn, 1 + len(data))
        await c.close()

    asyncio.run(go())
    assert "not acknowledging" in p.stderr() and "acknowledging resumes" in p.stderr()
    p.kill9()
    p2 = spawn_logger(d, secret_file, log_dir=tmp_path)
    logger_proc.append(p2)
    (lg,) = recover_blocking(p2.host, p2.port, "svc", SECRET)
    assert lg.instream == data
