"""Test-only forking echo server (socat-like): the parent closes its copy of each
accepted socket right after fork(); the child echoes until EOF, closes, exits.

    fork_server.py PORT CTLDIR [HOST]

Control files in CTLDIR (made by the test; each one acts once):
    accepted   written by the parent after each accept (the conn count)
    hold       if present at accept, the parent consumes it and waits for `go`
               before forking
    delay      if present at accept, its content (ms) is put in
               FTCP_TEST_SHIM_CHILD_DELAY_MS for that one fork: the shim stalls
               the child before its agent session opens (the fork race window)
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

KNOB = "FTCP_TEST_SHIM_CHILD_DELAY_MS"


def consume(p: Path) -> str | None:
    try:
        text = p.read_text()
        p.unlink()
    except FileNotFoundError:
        return None
    return text


def serve_child(conn: socket.socket) -> None:
    try:
        while True:
            d = conn.recv(1 << 16)
            if not d:
                break
            conn.sendall(d)
        conn.shutdown(socket.SHUT_WR)
    finally:
        conn.close()


def main() -> None:
    port, ctl = int(sys.argv[1]), Path(sys.argv[2])
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((host, port))
    lst.listen(16)
    n = 0
    while True:
        conn, _ = lst.accept()
        n += 1
        (ctl / "accepted").write_text(str(n))
        if consume(ctl / "hold") is not None:
            while not (ctl / "go").exists():
                time.sleep(0.005)
        delay = consume(ctl / "delay")
        if delay is not None:
            os.environ[KNOB] = delay.strip()
        pid = os.fork()
        if pid == 0:
            lst.close()
            try:
                serve_child(conn)
            finally:
                os._exit(0)
        os.environ.pop(KNOB, None)
        conn.close()
        while True:  # reap finished children
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


if __name__ == "__main__":
    main()
