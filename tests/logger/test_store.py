"""The durable store: restart, torn tails, rotation, deletion, write errors."""

from __future__ import annotations

import asyncio
import errno
import logging
import random

import pytest
from logger_helpers import SECRET, handshake, logger_server, segments

from ftcp.core import seq, wire
from ftcp.core.records import Close, CloseHow, Finished, ReadKind, ReadResult, WriteMark
from ftcp.logger import store as store_mod
from ftcp.logger.client import LoggerClient


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 60))


async def log_some(srv, app="app", n_conns=3, size=20000, paced=False, **kw):  # noqa: ANN001, ANN201
    """Log handshakes, data, reads, write marks and closes; return (client, recovery).

    `paced` waits for durability every few segments (many commit groups, so rotation).
    """
    rnd = random.Random(n_conns * size)
    c = await LoggerClient.connect(*srv.address, app_id=app, secret=SECRET, **kw)
    order = 0
    for cid in range(1, n_conns + 1):
        c.send([handshake(cid, c_isn=cid * 1000, order=cid)])
        for s in segments(cid, cid * 1000, rnd.randbytes(size), mss=1448):
            c.send([s, ReadResult(cid, order, ReadKind.DATA, len(s.payload))])
            order += 1
            if paced and order % 3 == 0:
                await c.wait_batch()
        c.send([WriteMark(cid, 77, 0xABC), Close(cid, CloseHow.SHUT_WR)])
    await c.wait_batch()
    return c, await c.recover()


async def recover(srv, app: str = "app"):  # noqa: ANN001, ANN201
    c = await LoggerClient.connect(*srv.address, app_id=app, secret=SECRET, role=wire.Role.ADMIN)
    try:
        return await c.recover()
    finally:
        await c.close()


@pytest.mark.parametrize("sync", ["always", "batch", "none"])
def test_restart_recovers_everything(tmp_path, sync) -> None:
    d = tmp_path / "d"

    async def go() -> None:
        async with logger_server(d, sync=sync) as srv:
            c, before = await log_some(srv)
            await c.close()
        assert len(before) == 3 and before[0].write_mark == WriteMark(1, 77, 0xABC)
        async with logger_server(d, sync=sync) as srv:
            assert await recover(srv) == before
            # the read watermark survives too
            n = sum(len(lg.reads) for lg in before)
            assert srv.store.apps["app"].state.next_order == n

    run(go())


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00\x00\x00\x40\x12\x34",  # torn entry header
        b"\x00\x00\x10\x00\xde\xad\xbe\xef" + b"\x02partial",  # length beyond EOF
        store_mod.encode_entry(2, b"\x02bogus")[:-3] + b"XYZ",  # CRC mismatch
        b"\xff" * 100,  # insane length
    ],
)
def test_torn_tail_is_truncated(tmp_path, caplog, tail) -> None:
    d = tmp_path / "d"
    caplog.set_level(logging.INFO, "ftcp.logger")

    async def go() -> None:
        async with logger_server(d) as srv:
            c, before = await log_some(srv, n_conns=2, size=5000)
            await c.close()
        (seg,) = sorted(d.rglob("*.seg"))
        good = seg.stat().st_size
        with open(seg, "ab") as f:
            f.write(tail)
        async with logger_server(d) as srv:
            assert seg.stat().st_size == good
            assert await recover(srv) == before

    run(go())
    assert "truncated" in caplog.text and "bytes dropped" in caplog.text


def test_corruption_in_an_older_segment_stops_replay_there(tmp_path, caplog) -> None:
    d = tmp_path / "d"

    async def go() -> None:
        async with logger_server(d, segment_size=4096) as srv:
            c, _ = await log_some(srv, n_conns=1, size=30000, paced=True)
            await c.close()
        segs = sorted(d.rglob("*.seg"))
        assert len(segs) > 3
        victim = segs[1]
        raw = bytearray(victim.read_bytes())
        raw[-5] ^= 0xFF
        victim.write_bytes(bytes(raw))
        async with logger_server(d) as srv:
            (lg,) = await recover(srv)
            assert 0 < len(lg.instream) < 30000  # a prefix, never garbage
        assert sorted(d.rglob("*.orphan"))

    run(go())
    assert "CRC mismatch" in caplog.text


def test_rotation_and_deletion_of_finished_connections(tmp_path) -> None:
    d = tmp_path / "d"

    async def go() -> None:
        async with logger_server(d, segment_size=8192) as srv:
            c, before = await log_some(srv, n_conns=3, size=20000, paced=True)
            n_before = len(list(d.rglob("*.seg")))
            assert n_before > 5
            c.send([Finished(1), Finished(2)])
            await c.wait_batch()
            assert c.finished == {1, 2}
            logs = await c.recover()
            assert [lg.handshake.conn_id for lg in logs] == [3]
            assert logs[0] == before[2]
            # conn 3's segments and the newest stay; the rest is gone
            n_after = len(list(d.rglob("*.seg")))
            assert n_after < n_before
            await c.close()
        async with logger_server(d) as srv:
            assert await recover(srv) == [before[2]]
            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            await c.delete([3])
            assert await c.recover() == []
            await c.close()
        async with logger_server(d) as srv:
            assert await recover(srv) == []

    run(go())


def test_delete_whole_app_removes_its_files(tmp_path) -> None:
    d = tmp_path / "d"

    async def go() -> None:
        async with logger_server(d, segment_size=8192) as srv:
            c, _ = await log_some(srv, n_conns=2, size=20000, paced=True)
            await c.delete(all=True)
            assert await c.recover() == []
            assert list(d.rglob("*.seg")) == []
            # the app can start over (read order from 0 again)
            c.send([handshake(9), ReadResult(9, 0, ReadKind.EAGAIN)])
            await c.wait_batch()
            assert c.next_order >= 1
            await c.close()
        async with logger_server(d) as srv:
            (lg,) = await recover(srv)
            assert lg.handshake.conn_id == 9

    run(go())


def test_whole_history_keeps_finished_connections(tmp_path) -> None:
    d = tmp_path / "d"

    async def go() -> None:
        async with logger_server(d) as srv:
            c, before = await log_some(srv, n_conns=2, size=3000, whole_history=True)
            c.send([Finished(1)])
            await c.wait_batch()
            assert len(await c.recover()) == 2
            await c.close()
            with pytest.raises(Exception, match="whole-history"):
                await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
        async with logger_server(d) as srv:
            assert [lg.handshake.conn_id for lg in await recover(srv)] == [1, 2]

    run(go())


def test_write_error_stops_acks_then_resumes(tmp_path, monkeypatch, caplog) -> None:
    """EIO injected at the write seam: nothing is acked while it lasts; then all is."""
    caplog.set_level(logging.INFO, "ftcp.logger")
    d = tmp_path / "d"
    failing = {"on": False}
    real = store_mod._write_all

    def flaky(fd: int, data: bytes) -> None:
        if failing["on"]:
            real(fd, data[: len(data) // 2])  # a partial write first, then the error
            raise OSError(errno.EIO, "Input/output error")
        real(fd, data)

    monkeypatch.setattr(store_mod, "_write_all", flaky)

    async def go() -> None:
        async with logger_server(d, retry_interval=0.1) as srv:
            c = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            c.send([handshake(1, c_isn=0)])
            await c.wait_batch()
            failing["on"] = True
            data = random.Random(1).randbytes(50000)
            for s in segments(1, 0, data):
                c.send([s])
            await asyncio.sleep(0.5)
            assert c.batch_acked == 1 and c.stable.get(1, (1, 1)) == (1, 1)
            assert "Input/output error" in caplog.text and srv.store.failing
            assert await c.ping() < 1  # the link is kept
            failing["on"] = False
            await c.wait_batch()
            assert c.stable[1] == (seq.add(0, 1 + len(data)),) * 2
            await c.close()
        async with logger_server(d) as srv:
            (lg,) = await recover(srv)
            assert lg.instream == data

    run(go())
    assert "not acknowledging" in caplog.text and "acknowledging resumes" in caplog.text


def test_new_supervisor_run_starts_afresh_and_survives_restart(tmp_path) -> None:
    """A fresh (not resuming) supervisor of an application with records begins a new run.

    Its connection ids and read orders start again from the beginning (an earlier
    run's connection 1 was deleted; its orders reached n): they are accepted, and
    after a restart of the logger only the new run's connections come back.
    """
    d = tmp_path / "d"

    async def go() -> None:
        async with logger_server(d) as srv:
            c, before = await log_some(srv, n_conns=2)
            c.send([Finished(1)])
            await c.wait_batch()
            await c.close()
            assert srv.store.apps["app"].state.next_order > 0
            c2 = await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            c2.send([handshake(1, c_isn=5000, order=1)])
            c2.send([ReadResult(1, 0, ReadKind.DATA, 0), ReadResult(1, 1, ReadKind.EAGAIN, 11)])
            await c2.wait_batch()
            assert c2.next_order == 2  # not blocked behind the previous run's orders
            assert 1 in c2.handshakes
            await c2.close()
        async with logger_server(d) as srv:
            after = await recover(srv)
            assert [lg.handshake.conn_id for lg in after] == [1]
            assert after[0].handshake.c_isn == 5000
            assert len(after[0].reads) == 2
            assert srv.store.apps["app"].state.next_order == 2

    run(go())


def test_second_concurrent_supervisor_is_refused(tmp_path, caplog) -> None:
    """Two `ftcp run` with one application id: the second is refused, the first's
    records are untouched."""

    async def go() -> None:
        async with logger_server(tmp_path / "d") as srv:
            c, before = await log_some(srv, n_conns=2)
            with pytest.raises(Exception, match="already has a supervisor connected"):
                await LoggerClient.connect(*srv.address, app_id="app", secret=SECRET)
            assert await recover(srv) == before
            c.send([ReadResult(1, sum(len(lg.reads) for lg in before), ReadKind.EOF)])
            await c.wait_batch()
            await c.close()

    run(go())
