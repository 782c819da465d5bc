"""`appproc`: the application started from a worker thread, reaped through a pidfd."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from ftcp.appproc import Spawner, children


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_exit_status_and_signals() -> None:
    async def go() -> tuple[int, int, int]:
        sp = Spawner()
        try:
            a = await sp.start([sys.executable, "-c", "import sys; sys.exit(3)"], os.environ)
            b = await sp.start([sys.executable, "-c", "import time; time.sleep(60)"], os.environ)
            c = await sp.start([sys.executable, "-c", "import time; time.sleep(60)"], os.environ)
            assert b.returncode is None and b.pid > 0
            b.kill()
            c.terminate()
            return await a.wait(), await b.wait(), await c.wait()
        finally:
            sp.close()

    assert _run(go()) == (3, -signal.SIGKILL, -signal.SIGTERM)


def test_the_loop_runs_while_the_child_starts() -> None:
    """The fork and exec happen off the loop: a ticker keeps going meanwhile."""

    async def go() -> int:
        sp = Spawner()
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.ensure_future(ticker())
        try:
            p = await sp.start([sys.executable, "-c", "pass"], os.environ)
            stop = True
            await t
            assert await p.wait() == 0
            return ticks
        finally:
            sp.close()

    assert _run(go()) > 0


def test_a_missing_program_is_an_oserror() -> None:
    async def go() -> None:
        sp = Spawner()
        try:
            await sp.start(["/nonexistent/ftcp-test-program"], os.environ)
        finally:
            sp.close()

    with pytest.raises(FileNotFoundError):
        _run(go())


def test_signals_after_the_end_are_ignored() -> None:
    async def go() -> int:
        sp = Spawner()
        try:
            p = await sp.start([sys.executable, "-c", "pass"], os.environ)
            rc = await p.wait()
            p.kill()  # no pid to hit: the pidfd is gone with the process
            p.terminate()
            return rc
        finally:
            sp.close()

    assert _run(go()) == 0


def test_cancelled_while_starting_leaves_no_process() -> None:
    async def go() -> int:
        sp = Spawner()
        marker = f"ftcp-appproc-test-{os.getpid()}-{time.monotonic_ns()}"
        task = asyncio.ensure_future(
            sp.start([sys.executable, "-c", "import time; time.sleep(60)", marker], os.environ)
        )
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sp.close()
        alive = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if marker.encode() in cmd and b"<defunct>" not in cmd:
                alive += 1
        return alive

    assert _run(go()) == 0


def test_stop_terminates_then_kills_after_the_grace() -> None:
    """`stop(grace)`: SIGTERM; a process that ignores it is killed after `grace`;
    `stop(None)` kills at once; stopping an ended process does nothing."""
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    ignores += "time.sleep(60)"

    async def go() -> tuple[int, int, int, int]:
        sp = Spawner()
        try:
            sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
            polite = await sp.start(sleeper, os.environ)
            deaf = await sp.start([sys.executable, "-c", ignores], os.environ)
            await asyncio.sleep(0.5)  # the handler is in place
            await polite.stop(5.0)
            await deaf.stop(0.2)
            brute = await sp.start(sleeper, os.environ)
            await brute.stop(None)
            await brute.stop(None)  # already reaped: nothing
            return polite.returncode, deaf.returncode, brute.returncode, await brute.wait()
        finally:
            sp.close()

    assert _run(go()) == (-signal.SIGTERM, -signal.SIGKILL, -signal.SIGKILL, -signal.SIGKILL)


def test_children_counts_those_of_every_thread() -> None:
    """The application is a child of the spawn thread, not of the main one."""

    async def go() -> tuple[bool, bool]:
        sp = Spawner()
        try:
            p = await sp.start([sys.executable, "-c", "import time; time.sleep(60)"], os.environ)
            main_only = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()
            found = p.pid in children(os.getpid())
            await p.stop(None)
            return found, str(p.pid) in main_only.split()
        finally:
            sp.close()

    assert _run(go()) == (True, False)
    assert children(2**22 + 12345) == []  # no such process
