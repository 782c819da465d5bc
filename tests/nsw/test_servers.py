"""Real, unmodified servers under the shim, driven by a real agent.

Each server listens on 127.0.0.1 with the shim preloaded; the test's agent
(ftcp.nsw.agent in a thread) records what the shim reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nswhelpers import Recorder, Servers, free_port, listening, python_app, wait_until

from ftcp.nsw.agent import AcceptInfo, AgentThread, Normal
from ftcp.nsw.proto import How, Kind, crc32c


def echo_roundtrip(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send `data` (then FIN) while reading the echo until EOF."""
    c = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send() -> None:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    chunks = []
    while d := c.recv(1 << 16):
        chunks.append(d)
    t.join()
    c.close()
    return b"".join(chunks)


def socat_argv(port: int) -> list[str]:
    exe = shutil.which("socat")
    if exe is None:
        pytest.skip("socat not installed")
    return [exe, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"]


SERVERS: dict[str, Callable[[int, Path], list[str]]] = {
    "socketserver": lambda port, tmp: python_app("echo_socketserver.py", port, tmp / "scratch"),
    "asyncio": lambda port, tmp: python_app("echo_asyncio.py", port),
    "socat": lambda port, tmp: socat_argv(port),
}


@pytest.mark.parametrize("kind", list(SERVERS))
def test_echo_is_byte_exact_and_reported(
    kind: str,
    tmp_path: Path,
    make_agent: Callable[..., AgentThread],
    servers: Servers,
    recorder: Recorder,
) -> None:
    at = make_agent(auto_log=True)
    dup_peers: list[tuple[str, int]] = []

    def decide(info: AcceptInfo) -> Normal:
        # The agent's duplicate is the accepted socket itself (same peer, TCP).
        with socket.socket(fileno=os.dup(info.fd)) as s:
            assert s.type == socket.SOCK_STREAM
            dup_peers.append(s.getpeername())
        return Normal()

    recorder.decide = decide
    port = free_port()
    servers.start(SERVERS[kind](port, tmp_path), port, at)
    sizes = [1, 70_000, 1_000_003]
    for n in sizes:
        data = os.urandom(n)
        got = echo_roundtrip(port, data)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    accepts = wait_until(lambda: len(recorder.of("accept")) == len(sizes) and recorder.of("accept"))
    conn_ids = wait_until(
        lambda: (
            {e[1] for e in recorder.of("close") if e[2] == How.CLOSE}
            if len({e[1] for e in recorder.of("close") if e[2] == How.CLOSE}) == len(sizes)
            else None
        ),
        what="last closes",
    )
    assert all(a[1].local == ("127.0.0.1", port) for a in accepts)
    assert dup_peers == [a[1].remote for a in accepts]
    reads = recorder.of("read")
    # Each process numbers its reads 1, 2, ... in the order it reported them.
    for session in {r[7] for r in reads}:
        seqs = [r[2] for r in reads if r[7] == session]
        assert seqs == list(range(1, len(seqs) + 1))
    # Only protected sockets are reported: the server's scratch file and
    # pipes (socat <-> cat) never show up.
    assert {r[1] for r in reads} == conn_ids
    for cid, n in zip(sorted(conn_ids), sizes, strict=True):
        mine = [r for r in reads if r[1] == cid]
        assert sum(r[4] for r in mine if r[3] == Kind.DATA) == n
        assert [r for r in mine if r[3] == Kind.EOF], "EOF reported"
        assert not [r for r in mine if r[3] == Kind.ERROR]
        last = [e for e in recorder.of("close") if e[1] == cid][-1]
        assert last[3] == n  # every echoed byte counted
    # After the last close the agent released its duplicates.
    assert all(cid not in at.agent.conns for cid in conn_ids)


def test_output_checksum_matches_bytes(
    make_agent: Callable[..., AgentThread], servers: Servers, recorder: Recorder, tmp_path: Path
) -> None:
    at = make_agent(auto_log=True)
    port = free_port()
    servers.start(SERVERS["socketserver"](port, tmp_path), port, at)
    data = os.urandom(123_457)
    assert echo_roundtrip(port, data) == data
    close = wait_until(lambda: [e for e in recorder.of("close") if e[2] == How.CLOSE])[0]
    assert close[3:] == (len(data), crc32c(data))


def test_agent_holds_a_dup_so_kill_9_emits_no_fin(
    make_agent: Callable[..., AgentThread], servers: Servers, recorder: Recorder, tmp_path: Path
) -> None:
    at = make_agent(auto_log=True)
    port = free_port()
    proc = servers.start(SERVERS["socketserver"](port, tmp_path), port, at)
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"hello")
    assert c.recv(100) == b"hello"
    (accept,) = recorder.of("accept")
    conn_id = wait_until(lambda: recorder.of("read"))[0][1]
    assert at.agent.fd(conn_id) is not None
    assert os.fstat(at.agent.fd(conn_id)).st_ino == os.fstat(accept[1].fd).st_ino

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    ends = wait_until(lambda: recorder.of("end"), what="session end")
    assert ends[0][2] == [conn_id], "the connection is reported orphaned"
    # No FIN, no RST: the client just sees silence, and can still send.
    c.settimeout(1.0)
    with pytest.raises(TimeoutError):
        c.recv(100)
    c.sendall(b"still there?")
    with pytest.raises(TimeoutError):
        c.recv(100)
    # Dropping the held duplicate ends it (RST: unread data in the old socket).
    at.call(at.agent.drop, conn_id)
    c.settimeout(5)
    try:
        end = c.recv(100)
    except ConnectionResetError:
        end = b""
    assert end == b""
    c.close()


def test_writes_wait_until_reads_are_logged(
    make_agent: Callable[..., AgentThread], servers: Servers, recorder: Recorder, tmp_path: Path
) -> None:
    at = make_agent(auto_log=False)
    port = free_port()
    servers.start(SERVERS["socketserver"](port, tmp_path), port, at)
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    for i, msg in enumerate([b"ping", b"pong", b"x" * 5000]):
        c.sendall(msg)
        reads = wait_until(lambda i=i: len(recorder.of("read")) > i and recorder.of("read"))
        seq, session = reads[-1][2], reads[-1][7]
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(100)  # the echo is held: its read is not released
        at.call(at.agent.publish, session, seq)
        c.settimeout(5)
        got = b""
        while len(got) < len(msg):
            got += c.recv(65536)
        assert got == msg
    # The FIN is output too: held until the EOF read is logged.
    c.shutdown(socket.SHUT_WR)
    eof = wait_until(lambda: [r for r in recorder.of("read") if r[3] == Kind.EOF])[0]
    c.settimeout(0.5)
    with pytest.raises(TimeoutError):
        c.recv(100)
    at.call(at.agent.publish, eof[7], eof[2])
    c.settimeout(5)
    assert c.recv(100) == b""
    c.close()


def test_close_is_reported_before_the_fin(
    make_agent: Callable[..., AgentThread], servers: Servers, recorder: Recorder, tmp_path: Path
) -> None:
    at = make_agent(auto_log=True)
    gate: dict[str, Any] = {}

    def close_gate() -> Any:
        if "fut" in gate:
            return None
        gate["fut"] = asyncio.get_running_loop().create_future()
        return gate["fut"]

    recorder.close_gate = close_gate
    port = free_port()
    servers.start(SERVERS["socketserver"](port, tmp_path), port, at)
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"bye")
    assert c.recv(100) == b"bye"
    c.shutdown(socket.SHUT_WR)
    first = wait_until(lambda: recorder.of("close"), what="close report")[0]
    assert first[2] in (How.SHUT_WR, How.CLOSE)
    c.settimeout(1.0)
    with pytest.raises(TimeoutError):
        c.recv(100)  # reported, not yet acked: no FIN
    at.loop.call_soon_threadsafe(gate["fut"].set_result, None)
    c.settimeout(5)
    assert c.recv(100) == b""
    c.close()


@pytest.mark.root
def test_silent_drop_after_crash_emits_nothing(
    make_agent: Callable[..., AgentThread], servers: Servers, recorder: Recorder, tmp_path: Path
) -> None:
    """Recovery frees the 4-tuple by closing the held duplicate in repair mode."""
    at = make_agent(auto_log=True)
    port = free_port()
    proc = servers.start(SERVERS["socketserver"](port, tmp_path), port, at)
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"hello")
    assert c.recv(100) == b"hello"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    ((_, _, orphans),) = wait_until(lambda: recorder.of("end"), what="session end")
    at.call(at.agent.drop, orphans[0], silent=True)
    c.settimeout(1.0)
    with pytest.raises(TimeoutError):
        c.recv(100)  # neither FIN nor RST
    c.close()


def test_unreachable_agent_degrades_to_pass_through(
    tmp_path: Path, shim: str, servers: Servers
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LD_PRELOAD": shim,
        "FTCP_NSW_SOCK": str(tmp_path / "nobody-listens.sock"),
        "FTCP_PORT": str(port),
    }
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        proc = subprocess.Popen(
            SERVERS["socketserver"](port, tmp_path), env=env, stderr=f, start_new_session=True
        )
    servers.procs.append(proc)
    wait_until(lambda: listening(port), what="server listen")
    data = os.urandom(10_000)
    assert echo_roundtrip(port, data) == data
    assert "protection is OFF" in err.read_text()
