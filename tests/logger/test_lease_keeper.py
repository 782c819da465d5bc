"""The supervisor's lease keeper against a real (in-process) logger: takeover timing,
giving up on its own when its loop stalls or the logger fences it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from logger_helpers import SECRET, logger_server

from ftcp.core.lease import LeaseTerms
from ftcp.failover import LeaseKeeper, garp_frames, parse_vip
from ftcp.logger.leaselink import LeaseLink

TERMS = LeaseTerms()


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.contextmanager
def logger_thread(data_dir: Path, port: int = 0) -> Iterator[tuple[str, int]]:
    """A logger with a loop of its own (a stalled supervisor loop must not stall it)."""
    loop = asyncio.new_event_loop()
    ready: list[tuple[str, int]] = []
    stop = threading.Event()

    async def serve() -> None:
        async with logger_server(data_dir, lease=TERMS, port=port) as srv:
            ready.append(srv.address)
            while not stop.is_set():
                await asyncio.sleep(0.01)

    t = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    t.start()
    for _ in range(500):
        if ready:
            break
        time.sleep(0.01)
    try:
        yield ready[0]
    finally:
        stop.set()
        t.join(10)
        loop.close()


class Events:
    def __init__(self) -> None:
        self.granted: list[tuple[float, int]] = []
        self.lost: list[tuple[float, str]] = []
        self.gave_up: list[float] = []


def keeper(addr: tuple[str, int], ev: Events) -> LeaseKeeper:
    return LeaseKeeper(
        lambda: LeaseLink(addr[0], addr[1], "app", SECRET),
        TERMS,
        asyncio.get_running_loop(),
        on_granted=lambda e: ev.granted.append((time.monotonic(), e)),
        on_lost=lambda why: ev.lost.append((time.monotonic(), why)),
        give_up=lambda: ev.gave_up.append(time.monotonic()),
    )


async def until(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_the_standby_takes_over_within_the_detection_time(tmp_path: Path) -> None:
    async def go() -> None:
        with logger_thread(tmp_path / "d") as addr:
            ea, eb = Events(), Events()
            a, b = keeper(addr, ea), keeper(addr, eb)
            a.start()
            await until(lambda: ea.granted)
            b.start()
            await asyncio.sleep(0.5)  # a renews: b waits
            assert not eb.granted and b.waiting_since is not None and not ea.lost
            t_dead = time.monotonic()
            a.stop(release=False)  # a's host dies: no more heartbeats, no release
            await until(lambda: eb.granted)
            t_b, epoch = eb.granted[0]
            assert epoch == ea.granted[0][1] + 1
            assert t_b - t_dead <= TERMS.detection + 0.1  # scheduling slack
            b.stop()

    run(go())


def test_a_holder_whose_loop_stalls_gives_up_before_its_lease_ends(tmp_path: Path) -> None:
    async def go() -> None:
        with logger_thread(tmp_path / "d") as addr:
            ea, eb = Events(), Events()
            a, b = keeper(addr, ea), keeper(addr, eb)
            a.start()
            await until(lambda: ea.granted)
            b.start()
            await asyncio.sleep(0.1)
            time.sleep(0.3)  # the supervisor's loop is stuck: a's keeper stops renewing
            assert ea.gave_up, "the keeper did not give up from its own thread"
            await until(lambda: ea.lost and eb.granted)
            # a gave up before b was lent the lease
            assert ea.gave_up[0] < eb.granted[0][0]
            a.stop()
            b.stop()

    run(go())


def test_a_clean_stop_lends_the_lease_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        with logger_thread(tmp_path / "d") as addr:
            ea, eb = Events(), Events()
            a, b = keeper(addr, ea), keeper(addr, eb)
            a.start()
            await until(lambda: ea.granted)
            b.start()
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            a.stop()  # releases
            await until(lambda: eb.granted)
            assert eb.granted[0][0] - t0 < TERMS.duration
            b.stop()

    run(go())


def test_a_keeper_waits_for_a_logger_that_is_away(tmp_path: Path) -> None:
    """Nothing listens where the logger was: the keeper keeps asking (its thread must
    not die of a refused connection) and is lent the lease once the logger is back."""

    async def go() -> None:
        with logger_thread(tmp_path / "d") as addr:
            pass
        ev = Events()
        k = keeper(addr, ev)
        k.start()
        await asyncio.sleep(0.3)
        assert not ev.granted and k.lost is None
        with logger_thread(tmp_path / "d", port=addr[1]):
            await until(lambda: ev.granted, 10)
            k.stop()

    run(go())


def test_a_holder_cut_off_from_a_silent_logger_gives_up_before_its_lease_ends(
    tmp_path: Path,
) -> None:
    """The logger goes, and what answers in its place accepts connections but never
    speaks: the holder's reconnection must not outlast its lease."""

    async def go() -> None:
        with logger_thread(tmp_path / "d") as addr:
            ev = Events()
            k = keeper(addr, ev)
            k.start()
            await until(lambda: ev.granted)
            await asyncio.sleep(0.1)  # renewing
            t_closed = time.monotonic()  # no renewal is sent to this logger after it
        silent = socket.socket()
        try:
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            silent.bind(addr)
            silent.listen()
            await until(lambda: ev.lost)
            assert ev.gave_up[0] < t_closed + TERMS.duration, ev.lost
            k.stop()
        finally:
            silent.close()

    run(go())


def test_garp_and_vip_parsing() -> None:
    mac, ip = bytes.fromhex("020000000001"), bytes([198, 18, 0, 9])
    req, rep = garp_frames(mac, ip)
    assert req[:6] == b"\xff" * 6 and req[6:12] == mac and req[12:14] == b"\x08\x06"
    assert req[20:22] == b"\x00\x01" and req[28:32] == ip and req[38:42] == ip  # who-has
    assert rep[20:22] == b"\x00\x02" and rep[22:28] == mac and rep[28:32] == ip  # is-at
    assert str(parse_vip("198.18.0.9/24")) == "198.18.0.9/24"
    import pytest

    from ftcp.errors import UserError

    for bad in ("198.18.0.9", "nope/24", "::1/64"):
        with pytest.raises(UserError):
            parse_vip(bad)
