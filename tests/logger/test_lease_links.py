"""Host failover at the logger: lease links, epochs that survive a restart, fencing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from logger_helpers import SECRET, handshake, logger_server

from ftcp.core import wire
from ftcp.core.lease import LeaseTerms
from ftcp.core.records import ReadKind, ReadResult
from ftcp.logger.client import LoggerClient, LoggerError
from ftcp.logger.leaselink import LeaseLink, LeaseLinkError

TERMS = LeaseTerms(duration=0.2, margin=0.05)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 60))


async def ask(link: LeaseLink, req: int, epoch: int = 0, flags: int = 0) -> wire.LeaseAnswer:
    def go() -> wire.LeaseAnswer:
        link.send(req, epoch, flags)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for a in link.answers(0.05):
                if a.req == req:
                    return a
        raise AssertionError(f"no answer to lease request {req}")

    return await asyncio.to_thread(go)


async def lease_link(host: str, port: int, app: str = "app", secret: bytes = SECRET) -> LeaseLink:
    link = LeaseLink(host, port, app, secret)
    await asyncio.to_thread(link.connect)
    return link


def test_one_holder_at_a_time_and_the_old_epoch_is_fenced(tmp_path: Path) -> None:
    async def go() -> None:
        async with logger_server(tmp_path / "d", lease=TERMS) as srv:
            host, port = srv.address
            primary = await LoggerClient.connect(host, port, app_id="app", secret=SECRET)
            a, b = await lease_link(host, port), await lease_link(host, port)
            got = await ask(a, 1)
            assert (got.kind, got.epoch, got.ms) == (wire.LeaseKind.GRANTED, 1, 200)
            assert (await primary.bind(1)).kind is wire.LeaseKind.GRANTED
            primary.send([handshake(7), ReadResult(7, 0, ReadKind.EAGAIN)])
            primary.send([ReadResult(7, 1, ReadKind.DATA, 5), ReadResult(7, 3, ReadKind.EOF)])
            await primary.wait_batch(primary.batch)
            # a standby connects beside the holder (no new run: the history stays)
            standby = await LoggerClient.connect(
                host, port, app_id="app", secret=SECRET, standby=True
            )
            wait = await ask(b, 1)
            assert wait.kind is wire.LeaseKind.WAIT and 0 < wait.ms <= 250
            assert (await ask(a, 2, 1)).kind is wire.LeaseKind.GRANTED  # a renews
            # a stops renewing (its host died): b gets epoch 2 once a's lease and the
            # margin are over, not before
            t0 = time.monotonic()
            while (ans := await ask(b, 3)).kind is wire.LeaseKind.WAIT:
                await asyncio.sleep(ans.ms / 1000)
            assert ans.kind is wire.LeaseKind.GRANTED and ans.epoch == 2
            assert time.monotonic() - t0 >= TERMS.duration - 0.05
            # the old holder: its heartbeats and its record link are refused
            assert (await ask(a, 3, 1)).kind is wire.LeaseKind.FENCED
            for _ in range(100):
                if primary.closed is not None:
                    break
                await asyncio.sleep(0.01)
            assert primary.closed is not None and "epoch 1 is over" in str(primary.closed)
            # the standby's own record link binds the new epoch and keeps the history
            logs = await standby.recover()
            assert [lg.handshake.conn_id for lg in logs] == [7]
            bound = await standby.bind(2)
            assert bound.kind is wire.LeaseKind.GRANTED
            assert bound.next_order == 4  # the new holder's reads come after every logged one
            with pytest.raises(LoggerError, match="epoch 1 is over"):
                await standby.bind(1)
            for x in (a, b):
                x.close()
            await standby.close()

    run(go())


def test_epochs_survive_a_logger_restart_and_release_lends_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        async with logger_server(tmp_path / "d", lease=TERMS) as srv:
            a = await lease_link(*srv.address)
            assert (await ask(a, 1)).epoch == 1
            a.close()
        async with logger_server(tmp_path / "d", lease=TERMS) as srv:
            a, b = await lease_link(*srv.address), await lease_link(*srv.address)
            # epoch 1's holder (unknown now) may still hold it: a full lease first
            first = await ask(a, 1)
            assert first.kind is wire.LeaseKind.WAIT and first.epoch == 1
            await asyncio.sleep(first.ms / 1000)
            assert (await ask(a, 1)).epoch == 2  # never 1 again
            assert (await ask(b, 1)).kind is wire.LeaseKind.WAIT
            await ask(a, 2, 2, wire.LEASE_RELEASE)
            got = await ask(b, 2)
            assert (got.kind, got.epoch) == (wire.LeaseKind.GRANTED, 3)
            a.close()
            b.close()

    run(go())


def test_lease_links_are_authenticated_and_kept_to_their_role(tmp_path: Path) -> None:
    async def go() -> None:
        async with logger_server(tmp_path / "d", lease=TERMS) as srv:
            host, port = srv.address
            with pytest.raises(LeaseLinkError, match="authentication failed"):
                await lease_link(host, port, secret=b"wrong")
            c = await LoggerClient.connect(host, port, app_id="app", secret=SECRET)
            with pytest.raises(LoggerError, match="lease is asked for on a lease link"):
                await c.lease_request(wire.Lease(1, 0))
            a = await lease_link(host, port)
            with pytest.raises(LeaseLinkError, match="only a supervisor's record link binds"):
                await ask(a, 1, 9, wire.LEASE_BIND)

    run(go())
