"""Helpers for the NSW tests: a recording agent handler and servers under the shim.

Servers run as child processes with the shim preloaded; each is killed by its
own process group (it leads one: start_new_session) at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftcp.nsw.agent import AcceptInfo, AgentHandler, AgentThread, Decision, Normal
from ftcp.nsw.proto import How, Kind

APPS = Path(__file__).with_name("apps")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? (Read /proc: a probe connect
    would itself be a protected connection.)"""
    want = f"0100007F:{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[1] == want and f[3] == "0A":
                return True
    return False


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Recorder(AgentHandler):
    """Records every callback; `decide` chooses the mode at accept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []
        self.decide: Callable[[AcceptInfo], Decision] = lambda info: Normal()
        self.close_gate: Any = None  # an awaitable factory, to hold close acks

    def _add(self, *ev: Any) -> None:
        with self.lock:
            self.events.append(ev)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [e for e in self.events if e[0] == kind]

    def on_session(self, session):  # type: ignore[no-untyped-def]
        self._add("session", session)

    def on_accept(self, info):  # type: ignore[no-untyped-def]
        self._add("accept", info)
        return self.decide(info)

    def on_read(self, session, seq, conn_id, kind, value, wtotal, wcrc):  # type: ignore[no-untyped-def]
        self._add("read", conn_id, seq, Kind(kind), value, wtotal, wcrc, session)

    def on_replay_read(self, conn_id, index, kind, value, wtotal, wcrc):  # type: ignore[no-untyped-def]
        self._add("replay_read", conn_id, index, Kind(kind), value, wtotal, wcrc)

    def on_write_mark(self, conn_id, total, crc, reason):  # type: ignore[no-untyped-def]
        self._add("mark", conn_id, total, crc, reason)

    def on_mismatch(self, conn_id, index, code, value):  # type: ignore[no-untyped-def]
        self._add("mismatch", conn_id, index, code, value)

    def on_close(self, conn_id, how, wtotal, wcrc):  # type: ignore[no-untyped-def]
        self._add("close", conn_id, How(how), wtotal, wcrc)
        if self.close_gate is not None:
            return self.close_gate()
        return None

    def on_session_end(self, session, orphans):  # type: ignore[no-untyped-def]
        self._add("end", session, list(orphans))


class Servers:
    """Starts servers under the shim; kills exactly what it started."""

    def __init__(self, shim: str) -> None:
        self.shim = shim
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], port: int, agent: AgentThread, *, debug: bool = False
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(agent.agent.env(port, self.shim))
        if debug:
            env["FTCP_NSW_DEBUG"] = "1"
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        self.procs.append(proc)
        wait_until(lambda: listening(port) or proc.poll() is not None, what="server listen")
        assert proc.poll() is None, f"server {argv} exited with {proc.returncode}"
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            # Each server leads its own process group (start_new_session): this
            # reaches a forking server's children and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def python_app(name: str, *args: object) -> list[str]:
    return [sys.executable, str(APPS / name), *map(str, args)]
