"""The protected application's process, as `ftcp run` starts and watches it.

`asyncio.create_subprocess_exec` forks and execs in the event loop's thread and
starts a watcher thread per child; on a busy machine (a crash: the log transfer
and the new process both want the two cores) that stopped the supervisor's loop
for 2-5 ms in the middle of a recovery, the log transfer with it. Here the fork
and exec run in a worker thread started in advance (the loop goes on while the
child execs), and the process is reaped through a pidfd the loop watches: no
thread to start, and signals go to the pidfd, never to a reused pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children, whichever of its threads started them (an
    application `ftcp run` started is a child of the spawn thread); [] once it is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


class Spawner:
    """Starts application processes from a worker thread of its own (`close` it)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftcp-spawn")
        self._pool.submit(lambda: None).result()  # the thread exists before a crash needs it

    async def start(self, argv: Sequence[str], env: Mapping[str, str]) -> AppProcess:
        """Start `argv`; raises OSError (as `subprocess.Popen`) when it cannot be."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, lambda: subprocess.Popen(list(argv), env=env))
        try:
            popen = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # the process may be starting right now: it must not outlive its owner
            with contextlib.suppress(Exception):
                p = await fut
                p.kill()
                await loop.run_in_executor(self._pool, p.wait)
            raise
        try:
            return AppProcess(popen, loop)
        except OSError:
            popen.kill()
            popen.wait()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class AppProcess:
    """A started application process: `pid`, `returncode` (negative: killed by that
    signal, as `subprocess`), `wait()`, `terminate()`, `kill()`."""

    def __init__(self, popen: subprocess.Popen, loop: asyncio.AbstractEventLoop) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self._loop = loop
        self._done: asyncio.Future[int] = loop.create_future()
        # not reaped by anyone but us: a pidfd of a process that already ended still works
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        rc = self._popen.poll()
        if rc is None:
            return
        self.returncode = rc
        self._close_pidfd()
        if not self._done.done():
            self._done.set_result(rc)

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def stop(self, grace: float | None) -> None:
        """End it: SIGTERM, then SIGKILL after `grace` seconds (None: SIGKILL at once);
        returns once it is reaped."""
        if self.returncode is not None:
            return
        if grace is not None:
            self.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(), grace)
                return
        self.kill()
        await self.wait()
