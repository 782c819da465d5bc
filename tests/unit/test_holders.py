"""`nsw.agent.holders_of`: which processes hold which sockets, in one /proc pass."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from ftcp.nsw.agent import holders_of


def test_one_pass_finds_each_sockets_holders() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    kids = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
            pass_fds=fds,
        )
        for fds in ([a.fileno()], [a.fileno(), c.fileno()])
    ]
    try:
        ino = {s: os.fstat(s.fileno()).st_ino for s in (a, b, c, d)}
        got = holders_of(set(ino.values()), set())
        assert got.get(ino[a]) == {kids[0].pid, kids[1].pid}
        assert got.get(ino[c]) == {kids[1].pid}
        assert ino[b] not in got and ino[d] not in got  # only this process holds them
        assert holders_of({ino[a]}, {kids[0].pid}) == {ino[a]: {kids[1].pid}}
        assert holders_of(set(), set()) == {}
    finally:
        for k in kids:
            assert k.stdin is not None
            k.stdin.close()
            k.wait(10)
        for s in (a, b, c, d):
            s.close()
