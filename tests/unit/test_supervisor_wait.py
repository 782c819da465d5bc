"""The supervisor sees the application's death at once, not at its next status tick."""

from __future__ import annotations

import asyncio
import time

from ftcp.supervisor import _next_event, _status_after


def test_death_is_seen_before_the_tick() -> None:
    async def go() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        stopper: asyncio.Future[bool] = loop.create_future()  # never set: no stop request
        loop.call_later(0.01, waiter.set_result, -9)  # SIGKILL
        t0 = time.monotonic()
        done = await _next_event(waiter, stopper, 2.0)
        took = time.monotonic() - t0
        stopper.cancel()
        return done == {waiter}, took

    seen, took = asyncio.run(go())
    assert seen and took < 0.5  # the exit alone, not held until the 2 s tick


def test_stop_request_and_tick() -> None:
    async def go() -> tuple[bool, bool, bool]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        stopper: asyncio.Future[bool] = loop.create_future()
        idle = await _next_event(waiter, stopper, 0.02)  # nothing happened: the tick
        stopper.set_result(True)
        stopped = await _next_event(waiter, stopper, 2.0)
        waiter.cancel()
        return not idle, stopper in stopped, waiter not in stopped

    assert all(asyncio.run(go()))


def test_status_waits_for_a_log_transfer_under_way() -> None:
    async def go() -> list[str]:
        loop = asyncio.get_running_loop()
        written: list[str] = []
        waits: set[asyncio.Future[None]] = set()
        _status_after(None, lambda: written.append("idle"), waits)  # no transfer: at once
        transfer: asyncio.Future[None] = loop.create_future()
        for _ in range(3):  # three loop turns during one transfer: one write after it
            _status_after(transfer, lambda: written.append("after"), waits)
        await asyncio.sleep(0)
        assert written == ["idle"]  # not while the log comes in
        transfer.set_result(None)
        await asyncio.sleep(0)
        assert not waits
        ended: asyncio.Future[None] = loop.create_future()
        _status_after(ended, lambda: written.append("cancelled"), waits)
        ended.cancel()  # the run is ending: no status file after its removal
        await asyncio.sleep(0)
        return written

    assert asyncio.run(go()) == ["idle", "after"]
