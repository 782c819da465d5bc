"""Replay mode: a fresh server process reproduces logged read results exactly
and its first `discard` output bytes are swallowed (paper IV-E, DESIGN step 6).

The client stream is fed again by the test client (in ftcp proper SSW injects
the logged instream).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from nswhelpers import Recorder, Servers, free_port, python_app, wait_until

from ftcp.core.records import ReadLog
from ftcp.nsw.agent import AcceptInfo, AgentThread, Replay
from ftcp.nsw.proto import How, Kind, MarkReason, MismatchCode, crc32c


def recv_exactly(c: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        d = c.recv(n - len(got))
        assert d, f"EOF after {got!r}"
        got += d
    return got


@pytest.mark.parametrize("form", ["pairs", "readlog"])
def test_replay_reproduces_reads_and_discards_output(
    tmp_path: Path,
    make_agent: Callable[..., AgentThread],
    servers: Servers,
    recorder: Recorder,
    form: str,
) -> None:
    at = make_agent(auto_log=True)
    pairs = [(Kind.DATA, 3), (Kind.EAGAIN, 0), (Kind.DATA, 5)]
    # recovery hands the agent the logger's packed reads; tests and tools, pairs
    script: list[tuple[Kind, int]] | ReadLog = (
        pairs
        if form == "pairs"
        else ReadLog.from_tuples(77, [(10 + i, int(k), v) for i, (k, v) in enumerate(pairs)])
    )
    recorder.decide = lambda info: Replay(script, discard=4, conn_id=77)
    port = free_port()
    results = tmp_path / "results"
    servers.start(python_app("replay_probe.py", port, results), port, at)

    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"abcdefgh")  # the logged instream, all at once
    # Output "abc" + "defgh": the first 4 bytes are swallowed, a straddling
    # write passes its tail only.
    assert recv_exactly(c, 4) == b"efgh"
    wait_until(lambda: [m for m in recorder.of("mark") if m[4] == MarkReason.REPLAY_DONE])
    # Live from here on.
    c.sendall(b"XYZ")
    assert recv_exactly(c, 3) == b"XYZ"
    c.shutdown(socket.SHUT_WR)
    assert c.recv(10) == b""
    c.close()

    wait_until(lambda: results.read_text().endswith("EOF\n"))
    observed = results.read_text().split()
    assert observed[:3] == ["3", "EAGAIN", "5"]  # exactly the script
    assert [x for x in observed[3:] if x != "EAGAIN"] == ["3", "EOF"]  # then live

    replayed = recorder.of("replay_read")
    # Output progress at a replayed read: what a divergence check compares. A read is
    # reported only when the output moved since the last report (read 2 follows read 1
    # with no write between them: nothing new to compare).
    assert [(e[1], e[2], e[3], e[4]) for e in replayed] == [
        (77, 0, Kind.DATA, 3),
        (77, 1, Kind.EAGAIN, 0),
    ]
    assert [e[5] for e in replayed] == [0, 3]
    assert replayed[1][6] == crc32c(b"abc")
    marks = {m[4]: m for m in recorder.of("mark")}
    assert marks[MarkReason.DISCARD_END][1:4] == (77, 4, crc32c(b"abcd"))
    assert marks[MarkReason.REPLAY_DONE][1:4] == (77, 8, crc32c(b"abcdefgh"))
    # Live reads after replay are reported as the server saw them (EAGAINs
    # included), numbered from 1 in their process.
    live = recorder.of("read")
    as_seen = {Kind.EAGAIN: "EAGAIN", Kind.EOF: "EOF"}
    assert [as_seen.get(e[3], str(e[4])) for e in live] == observed[3:]
    assert [e[2] for e in live] == list(range(1, len(live) + 1))
    assert {e[1] for e in live} == {77}
    close = wait_until(lambda: [e for e in recorder.of("close") if e[2] == How.CLOSE])[0]
    assert close[1] == 77 and close[3:] == (11, crc32c(b"abcdefghXYZ"))
    assert not recorder.of("mismatch")


def test_replay_reports_a_diverging_stream(
    tmp_path: Path, make_agent: Callable[..., AgentThread], servers: Servers, recorder: Recorder
) -> None:
    at = make_agent(auto_log=True)
    seen: list[AcceptInfo] = []

    def decide(info: AcceptInfo) -> Replay:
        seen.append(info)
        return Replay([(Kind.DATA, 10)], discard=0)

    recorder.decide = decide
    port = free_port()
    results = tmp_path / "results"
    servers.start(python_app("replay_probe.py", port, results), port, at)
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"abcdefgh")
    c.shutdown(socket.SHUT_WR)  # 8 bytes then EOF: the log said 10
    assert recv_exactly(c, 8) == b"abcdefgh"
    mm = wait_until(lambda: recorder.of("mismatch"))
    assert mm[0][2:] == (0, MismatchCode.EARLY_EOF, 8)
    assert c.recv(10) == b""
    assert seen[0].remote == c.getsockname()
    c.close()
