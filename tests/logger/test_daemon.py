"""The daemon in-process: authentication, hostile peers, reassembly, acks vs durability."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
import threading
from pathlib import Path

import pytest
from logger_helpers import SECRET, handshake, logger_server, segments

from ftcp.core import seq, wire
from ftcp.core.records import Finished, InSegment, ReadKind, ReadResult
from ftcp.logger import store as store_mod
from ftcp.logger.client import LoggerClient, LoggerError
from ftcp.logger.state import AppState
from ftcp.logger.store import read_entries


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 60))


def stored_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "apps").rglob("*.seg"))


def replay_dir(data_dir: Path, app_id: str) -> AppState:
    """What a restarted logger would know, from the bytes on disk right now."""
    st = AppState(app_id)
    d = data_dir / "apps" / app_id.encode().hex()
    for p in sorted(d.glob("*.seg")):
        for kind, data in read_entries(p.read_bytes())[0]:
            if kind == store_mod.KIND_RECORDS:
                st.apply(wire.decode_records(data))
    return st


# -- authentication ------------------------------------------------------------------


def test_auth_success_is_mutual_and_wrong_secret_is_refused(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "ftcp.logger")

    async def go() -> None:
        async with logger_server(tmp_path / "d") as srv:
            host, port = srv.address
            c = await LoggerClient.connect(host, port, app_id="app", secret=SECRET)
            assert await c.ping() < 1
            await c.close()
            with pytest.raises(LoggerError, match="authentication failed"):
                await LoggerClient.connect(host, port, app_id="app", secret=b"wrong")

    run(go())
    assert "authentication failed (wrong HMAC" in caplog.text
    assert "authenticated as supervisor of 'app'" in caplog.text


def test_client_refuses_logger_that_does_not_know_the_secret(tmp_path) -> None:
    """A fake logger that cannot compute the server MAC is refused by the client."""

    async def go() -> None:
        async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(wire.HEADER_LEN + 34 + 3)
            writer.write(wire.encode(wire.Challenge(os.urandom(32))))
            await reader.readexactly(wire.HEADER_LEN + 32)
            writer.write(wire.encode(wire.AuthOk(os.urandom(32))))
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        srv = await asyncio.start_server(fake, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(LoggerError, match="prove"):
            await LoggerClient.connect("127.0.0.1", port, app_id="app", secret=SECRET)
        srv.close()

    run(go())


# -- hostile peers --------------------------------------------------------------------


def _hello(nonce: bytes = b"\0" * 32, app: str = "app") -> bytes:
    return wire.encode(wire.Hello(wire.Role.SUPERVISOR, app, nonce))


RECORDS = wire.encode_records([handshake(1), *segments(1, 1000, b"x" * 300)])
BIG_RECORDS = wire.encode_records([handshake(1), *segments(1, 1000, b"x" * 3000)])


async def _hostile(host: str, port: int, chunks: list[bytes], pause: float = 0.0) -> bytes:
    """Send chunks (slowly if asked), return everything the logger sent before closing."""
    r, w = await asyncio.open_connection(host, port)
    got = b""
    try:
        for ch in chunks:
            w.write(ch)
            await w.drain()
            if pause:
                await asyncio.sleep(pause)
        got = await asyncio.wait_for(r.read(), 10)
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()
    return got


def _wrong_mac_session() -> list[bytes]:
    return [_hello(), wire.encode(wire.Auth(os.urandom(32))), RECORDS]


HOSTILE = {
    "garbage": ([os.urandom(64)], "bad frame magic"),
    "records before auth": ([RECORDS], "Records frame before authentication"),
    "records after hello": ([_hello(), RECORDS], "Records frame before authentication"),
    "big records before auth": ([BIG_RECORDS], "oversized RECORDS frame: 3173 bytes > max 1024"),
    "wrong hmac": (_wrong_mac_session(), "authentication failed"),
    "oversized length prefix": (
        [struct.pack("!2sBBI", b"FT", 1, wire.FrameType.HELLO, 1 << 31)],
        "oversized HELLO frame",
    ),
    "bad version": ([b"FT\x09\x01" + b"\0" * 4], "unsupported protocol version 9"),
    "malformed hello": ([wire.frame(wire.FrameType.HELLO, b"\x07" * 40)], "unknown role 7"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_peer_is_disconnected_and_nothing_is_stored(tmp_path, caplog, case) -> None:
    chunks, why = HOSTILE[case]
    caplog.set_level(logging.INFO, "ftcp.logger")

    async def go() -> None:
        async with logger_server(tmp_path / "d") as srv:
            host, port = srv.address
            got = await _hostile(host, port, chunks)
            frames = [f for f in wire.Decoder().feed(got) if isinstance(f, wire.Error)]
            assert frames and frames[-1].fatal
            # a legit admin sees nothing stored for the app
            c = await LoggerClient.connect(
                host, port, app_id="app", secret=SECRET, role=wire.Role.ADMIN
            )
            assert await c.recover() == []
            await c.close()

    run(go())
    assert why in caplog.text and "disconnected" in caplog.text
    assert stored_files(tmp_path / "d") == []


def test_slowloris_partial_frame_times_out(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "ftcp.logger")

    async def go() -> None:
        async with logger_server(tmp_path / "d", frame_timeout=0.5, auth_timeout=30) as srv:
            hello = _hello()
            t0 = asyncio.get_running_loop().time()
            await _hostile(*srv.address, [hello[i : i + 1] for i in range(30)], pause=0.1)
            assert asyncio.get_running_loop().time() - t0 < 2.5  # cut off, not 3 s of dribble

    run(go())
    assert "partial frame did not complete in time; disconnected" in caplog.text


def test_silent_peer_must_authenticate_in_time(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "ftcp.logger")

    async def go() -> None:
        async with logger_server(tmp_path / "d", auth_timeout=0.3) as srv:
            got = await _hostile(*srv.address, [])
            assert b"did not authenticate" in got

    run(go())
    assert "did not authenticate in time" in caplog.text


def test_admin_may_not_send_records(tmp_path, caplog) -> None:
    async def go() -> None:
        async with logger_server(tmp_path / "d") as srv:
            c = await LoggerClient.connect(
                *srv.address, app_id="app", secret=SECRET, role=wire.Role.ADMIN
            )
            c.send([handshake(1)])
            with pytest.raises(LoggerError, match="only a supervisor"):
                await c.wait_batch()

    run(go())
    assert stored_files(tmp_path / "d") == []


# -- reassembly and acks ---------------------------------------------------------------


def test_shuffled_duplicated_segments_rebuild_the_stream(tmp_path) -> None:
    rnd = random.Random(7)
    streams = {cid: rnd.randbytes(rnd.randrange(1, 40000)) for cid in range(1, 6)}
    isns = {cid: rnd.randrange(1 << 32) for cid in streams}  # some wrap

    async def go() -> None:
        async with logger_server(tmp_path / "d") as srv:
            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            c.send([handshake(cid, c_isn=isns[cid], order=cid) for cid in streams])
            segs: list[InSegment] = []
            for cid, data in streams.items():
                for _ in range(3):  # three differently cut copies: overlaps and duplicates
                    segs += segments(cid, isns[cid], data, mss=rnd.randrange(100, 3000))
            rnd.shuffle(segs)
            for i in range(0, len(segs), 17):
                c.send(segs[i : i + 17])
            await c.wait_batch()
            for cid, data in streams.items():
                want = seq.add(isns[cid], 1 + len(data))
                assert c.stable[cid] == (want, want)
            logs = await c.recover()
            assert [lg.handshake.conn_id for lg in logs] == list(streams)
            for lg in logs:
                assert lg.instream == streams[lg.handshake.conn_id]
            assert not c.errors
            await c.close()

    run(go())


def test_large_recovery_while_the_instream_keeps_growing(tmp_path) -> None:
    """A multi-frame recovery answer is sent from the live instream buffers (no copy):
    segments of the same connection logged while it is under way neither break the
    ingest nor change the answer (the prefix it announced), and show up in the next."""
    rnd = random.Random(11)
    first, more = rnd.randbytes(5 * 1048576 + 12345), rnd.randbytes(3 * 1048576 + 7)
    other = rnd.randbytes(2 * 1048576 + 3)

    async def go() -> None:
        async with logger_server(tmp_path / "d") as srv:
            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            c.send([handshake(1, c_isn=100, order=0), handshake(2, c_isn=7, order=1)])
            for cid, isn, data in ((1, 100, first), (2, 7, other)):
                segs = segments(cid, isn, data, mss=60000)
                for i in range(0, len(segs), 8):
                    c.send(segs[i : i + 8])
            await c.wait_batch()
            task = asyncio.ensure_future(c.recover())
            late = segments(1, 100, more, mss=60000, start=len(first))
            for i in range(0, len(late), 4):
                c.send(late[i : i + 4])
                await asyncio.sleep(0)
            logs = await task
            assert [lg.handshake.conn_id for lg in logs] == [1, 2]
            got = logs[0].instream
            assert len(got) >= len(first) and got == (first + more)[: len(got)]
            assert logs[0].stable_seq == seq.add(100, 1 + len(got))
            assert logs[1].instream == other
            await c.wait_batch()
            logs = await c.recover()
            assert logs[0].instream == first + more and logs[1].instream == other
            assert not c.errors
            await c.close()

    run(go())


def check_acks_against(disk: AppState, acks: list[wire.Ack], checked: list[int]) -> None:
    """Every ack is backed by `disk` (the state rebuilt from what is on disk)."""
    for a in acks:
        if isinstance(a, wire.StreamAck):
            assert seq.le(a.stable_seq, disk.conns[a.conn_id].reasm.stable_seq)
            checked.append(a.stable_seq)
        elif isinstance(a, wire.ReadsAck):
            assert a.next_order <= disk.next_order
        elif isinstance(a, wire.HandshakeAck):
            assert a.conn_id in disk.conns


def test_acks_never_exceed_what_is_on_disk(tmp_path) -> None:
    """Every ack, when it arrives, is backed by bytes already in the segment files."""
    d = tmp_path / "d"
    data = random.Random(3).randbytes(300_000)
    checked = []

    async def go() -> None:
        async with logger_server(d) as srv:

            def on_ack(acks: list[wire.Ack]) -> None:
                check_acks_against(replay_dir(d, "app"), acks, checked)

            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET, on_ack=on_ack)
            c.send([handshake(1)])
            for i, s in enumerate(segments(1, 1000, data, mss=1448)):
                c.send([s, ReadResult(1, i, ReadKind.DATA, len(s.payload))])
                if i % 10 == 0:
                    await asyncio.sleep(0.002)  # paced: many commit groups
            await c.wait_batch()
            await c.close()

    run(go())
    assert len(checked) > 5
    assert checked[-1] == seq.add(1000, 1 + len(data))


def test_no_ack_until_fdatasync_returns(tmp_path, monkeypatch) -> None:
    gate = threading.Event()
    real = os.fdatasync

    def slow_sync(fd: int) -> None:
        gate.wait(10)
        real(fd)

    monkeypatch.setattr(store_mod.os, "fdatasync", slow_sync)

    async def go() -> None:
        async with logger_server(tmp_path / "d", sync="always") as srv:
            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            b = c.send([handshake(1), *segments(1, 1000, b"abc")])
            await asyncio.sleep(0.3)
            assert c.batch_acked == 0 and not c.stable and not c.handshakes
            gate.set()
            await c.wait_batch(b)
            assert c.stable[1] == (1004, 1004) and 1 in c.handshakes
            await c.close()

    try:
        run(go())
    finally:
        gate.set()


def _synced_state(synced: dict[str, int], app_id: str, data_dir: Path) -> AppState:
    """What a restart would know from only the bytes an fdatasync has covered."""
    st = AppState(app_id)
    d = data_dir / "apps" / app_id.encode().hex()
    for p in sorted(d.glob("*.seg")):
        n = synced.get(str(p), 0)
        for kind, data in read_entries(p.read_bytes()[:n])[0]:
            if kind == store_mod.KIND_RECORDS:
                st.apply(wire.decode_records(data))
    return st


def test_pipelined_group_commit_acks_only_what_fdatasync_covered(tmp_path, monkeypatch) -> None:
    """Group commit (`batch`) with the next group written while the loop receives: every
    ack, when it arrives, is covered by an fdatasync that had *returned* (the file size
    at the start of a completed fdatasync bounds what it made durable)."""
    d = tmp_path / "d"
    data = random.Random(5).randbytes(400_000)
    synced: dict[str, int] = {}
    lock = threading.Lock()
    real = os.fdatasync
    checked: list[int] = []

    def tracking_sync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        size = os.fstat(fd).st_size  # everything written before the call
        real(fd)
        with lock:
            synced[path] = max(synced.get(path, 0), size)

    monkeypatch.setattr(store_mod.os, "fdatasync", tracking_sync)

    async def go() -> None:
        async with logger_server(d, sync="batch") as srv:

            def on_ack(acks: list[wire.Ack]) -> None:
                with lock:
                    disk = _synced_state(dict(synced), "app", d)
                check_acks_against(disk, acks, checked)

            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET, on_ack=on_ack)
            c.send([handshake(1)])
            for i, s in enumerate(segments(1, 1000, data, mss=4000)):
                c.send([s, ReadResult(1, i, ReadKind.DATA, len(s.payload))])
                if i % 7 == 0:
                    await asyncio.sleep(0.002)  # paced: many commit groups
            await c.wait_batch()
            assert srv.store.stats["syncs"] > 2
            await c.close()

    run(go())
    assert len(checked) > 2
    assert checked[-1] == seq.add(1000, 1 + len(data))


def test_group_waiting_behind_a_slow_fdatasync_is_not_acked(tmp_path, monkeypatch) -> None:
    """`batch`: records that arrive while a group's fdatasync is stuck are written as the
    next group only after it, and nothing of either is acknowledged before its sync."""
    gate = threading.Event()
    real = os.fdatasync
    calls = [0]

    def gated_sync(fd: int) -> None:
        calls[0] += 1
        if calls[0] >= 3:  # segment creation syncs first; then the first records group
            gate.wait(10)
        real(fd)

    monkeypatch.setattr(store_mod.os, "fdatasync", gated_sync)

    async def go() -> None:
        async with logger_server(tmp_path / "d", sync="batch") as srv:
            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            c.send([handshake(1)])
            await c.wait_batch()
            first = c.send(segments(1, 1000, b"a" * 3000))
            await asyncio.sleep(0.1)
            later = c.send(segments(1, 1000, b"b" * 3000, start=3000))
            await asyncio.sleep(0.2)
            assert c.batch_acked == 1 and c.stable.get(1, (1001, 1001)) == (1001, 1001)
            gate.set()
            await c.wait_batch(later)
            assert first < later and c.stable[1] == (7001, 7001)
            await c.close()

    try:
        run(go())
    finally:
        gate.set()


def test_write_all_survives_short_writev(tmp_path, monkeypatch) -> None:
    real = os.writev

    def short(fd: int, bufs: list) -> int:  # at most 5 bytes per call
        first = bytes(bufs[0])[:5]
        return real(fd, [first])

    monkeypatch.setattr(store_mod.os, "writev", short)
    parts = [b"header", memoryview(b"xyz"), b"", bytearray(b"0123456789abcdef")]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        store_mod._write_all(fd, parts)
        store_mod._write_all(fd, b"tail")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"headerxyz0123456789abcdeftail"


def test_refused_record_is_reported_and_link_kept(tmp_path) -> None:
    async def go() -> None:
        async with logger_server(tmp_path / "d") as srv:
            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            c.send([InSegment(99, 1, 1, 1, payload=b"x")])
            c.send([handshake(1), Finished(1)])
            await c.wait_batch()
            assert c.errors and "unknown connection 99" in c.errors[0].reason
            assert not c.errors[0].fatal
            assert 1 in c.finished
            assert await c.recover() == []
            await c.close()

    run(go())
