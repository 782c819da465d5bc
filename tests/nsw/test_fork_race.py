"""The fork race (socat-like servers): the parent closes its copy of a connection
right after fork(), and the process group is killed before the child's own
agent session exists.  The parent's close must not be taken for the
application's last close: the connection is an orphan (a crash), the agent
keeps its duplicate, and no FIN reaches the client.

Deterministic: the shim's test knob stalls the child before its session opens,
the agent's loop is stalled while the parent's close waits for its ack, and
the group is killed in that window; then the agent runs.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import struct
import threading
from pathlib import Path

import pytest
from nswhelpers import Recorder, Servers, free_port, python_app, wait_until

from ftcp.nsw.agent import AgentThread, process_alive
from ftcp.nsw.proto import How

pytestmark = pytest.mark.root  # kill -9 of real processes, /proc of other processes

SYS_RECVMSG = {"x86_64": 47, "aarch64": 212, "riscv64": 212}[platform.machine()]
TCP_ESTABLISHED = 1


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def waiting_for_agent(pid: int) -> bool:
    """Is `pid` blocked in recvmsg on its agent socket (the shim keeps it at fd >= 900)?"""
    try:
        f = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(f) > 1 and f[0] == str(SYS_RECVMSG) and int(f[1], 16) >= 900


def tcp_state(s: socket.socket) -> int:
    return struct.unpack("B", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


def stall(at: AgentThread) -> threading.Event:
    """Stop the agent's loop until the returned event is set."""
    stalled, gate = threading.Event(), threading.Event()

    def block() -> None:
        stalled.set()
        gate.wait(60)

    at.loop.call_soon_threadsafe(block)
    assert stalled.wait(10)
    return gate


def test_group_killed_before_child_session(
    make_agent, recorder: Recorder, servers: Servers, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    at = make_agent(auto_log=True)
    port = free_port()
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "hold").touch()
    (ctl / "delay").write_text("60000")
    proc = servers.start(python_app("fork_server.py", port, ctl), port, at)
    cli = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        cli.sendall(b"hello")
        wait_until(lambda: (ctl / "accepted").exists(), what="the accept")
        (cid,) = at.agent.conns
        gate = stall(at)
        try:
            (ctl / "go").touch()
            # fork: the child is stalled before its session; the parent's close waits
            child = wait_until(lambda: children(proc.pid), what="the fork")[0]
            wait_until(lambda: waiting_for_agent(proc.pid), what="the parent's close report")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            wait_until(lambda: not process_alive(child), what="the child's death")
        finally:
            gate.set()
        wait_until(
            lambda: any(e[1].pid == proc.pid for e in recorder.of("end")),
            what="the parent's session end",
        )
        at.call(lambda: None)  # everything queued before has run
        closes = [e for e in recorder.of("close") if e[1] == cid]
        assert not closes, f"a dying process's close was taken for the application's: {closes}"
        orphans = [cid for e in recorder.of("end") for cid in e[2]]
        assert orphans == [cid], recorder.of("end")
        assert at.agent.fd(cid) is not None  # still held: nothing reached the client
        assert tcp_state(cli) == TCP_ESTABLISHED
    finally:
        cli.close()


def test_fork_server_closes_normally(
    make_agent, recorder: Recorder, servers: Servers, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """No crash: the child's close is the last close (FIN), the parent's is not."""
    at = make_agent(auto_log=True)
    port = free_port()
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    servers.start(python_app("fork_server.py", port, ctl), port, at)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as cli:
            cli.sendall(b"x" * 1000)
            cli.shutdown(socket.SHUT_WR)
            got = b""
            while d := cli.recv(4096):
                got += d
            assert got == b"x" * 1000
    wait_until(lambda: len([e for e in recorder.of("close") if e[2] == How.CLOSE]) == 3)
    at.call(lambda: None)
    assert not [cid for e in recorder.of("end") for cid in e[2]], recorder.of("end")
    assert not at.agent.conns
