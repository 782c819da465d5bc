"""The fork race, end to end (`ftcp run`, real client, kill -9).

A socat-like server (tests/nsw/apps/fork_server.py) forks per connection and
the parent closes its copy at once.  The shim's test knob stalls the child
before its agent session opens; `ftcp run` is stopped (SIGSTOP) while the
parent's close waits for the agent's ack; the application (parent and child)
is killed -9 in that window; then `ftcp run` continues.  The parent's close
must not be taken for the application's close: the connection is recovered,
byte-exact both ways, and the client sees no RST and no early FIN.

(Before the fix the agent found no live holder when it handled that close, let
the FIN through and did not recover the connection.)
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
from pathlib import Path

import pytest
from crashlib import children, finish_client, kill_app, recovered_count, run_client, verify
from ithelpers import Capture, Env, Protected, wait_until

from ftcp.nsw.agent import process_alive

pytestmark = pytest.mark.root

FORK_SERVER = str(Path(__file__).parent.parent / "nsw" / "apps" / "fork_server.py")
SYS_RECVMSG = {"x86_64": 47, "aarch64": 212, "riscv64": 212}[platform.machine()]


def waiting_for_agent(pid: int) -> bool:
    """Is `pid` blocked in recvmsg on its agent socket (the shim keeps it at fd >= 900)?"""
    try:
        f = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(f) > 1 and f[0] == str(SYS_RECVMSG) and int(f[1], 16) >= 900


@pytest.mark.parametrize("restore", ["handshake", "repair"])
def test_parent_close_then_group_killed_before_child_session(unshaped: Env, restore: str) -> None:
    env = unshaped
    port = env.next_port()
    ctl = env.tmp / f"fork-ctl-{port}"
    ctl.mkdir()
    (ctl / "hold").touch()  # first connection: fork only when told
    (ctl / "delay").write_text("60000")  # and stall that child before its session
    cmd = [sys.executable, FORK_SERVER, str(port), str(ctl), "0.0.0.0"]
    with Protected(env, port, cmd, extra=["--restore", restore]) as srv:
        cap = Capture(env.lab, srv.dir / "client.pcap", port)
        cl = run_client(env, ["duplex", env.lab.ip("server"), port, 1 << 20, 16384, 0.004])
        wait_until(lambda: (ctl / "accepted").exists(), 20, "the accept")
        app = children(srv.proc.pid)[0]
        os.kill(srv.proc.pid, signal.SIGSTOP)  # the agent handles nothing from here
        try:
            (ctl / "go").touch()
            child = wait_until(lambda: children(app), 20, "the fork")[0]
            wait_until(lambda: waiting_for_agent(app), 20, "the parent's close report")
            kill_app(srv)
            wait_until(lambda: not process_alive(app), 20, "the parent's death")
            wait_until(lambda: not process_alive(child), 20, "the child's death")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(srv.proc.pid, signal.SIGCONT)
        wait_until(lambda: recovered_count(srv) >= 1, 40, f"recovery\n{srv.err()[-3000:]}")
        r = finish_client(cl)
        assert r["ok"] and r["recv"] == r["sent"], r
        assert "giving up" not in srv.err(), srv.err()
    verify(env, srv, cap, port)
    assert "Traceback" not in srv.err(), srv.err()
