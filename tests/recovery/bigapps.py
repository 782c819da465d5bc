"""A large upload, checked end to end after a crash (stdlib only; run inside lab hosts).

    bigapps.py serve PORT NBYTES        read the upload; after NBYTES answer b"K"; to the
        next byte answer sha256 of the first NBYTES bytes read (32 bytes); read to EOF
    bigapps.py client HOST PORT NBYTES  upload NBYTES seeded bytes, wait for b"K", print
        {"kind": "loaded"}, wait for a line on stdin (the test kills the server), send
        one byte, check the digest against its own, print {"kind": "done", "ok": ...}

Killed after the whole upload was read, the restarted server's digest comes from the
replayed reads alone: it matches only if the replay gave back every byte, in order.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import time


def serve(port: int, nbytes: int) -> None:
    lst = socket.create_server(("0.0.0.0", port))
    c, _ = lst.accept()
    lst.close()
    h = hashlib.sha256()
    total = 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        before = total
        total += len(d)
        if before < nbytes:
            h.update(d[: nbytes - before])
        if before < nbytes <= total:
            c.sendall(b"K")
        if before <= nbytes < total:  # the byte after the upload: the client asks
            c.sendall(h.digest())
    c.close()


def client(host: str, port: int, nbytes: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            s = socket.create_connection((host, port), timeout=120)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    rnd = random.Random(port)
    h = hashlib.sha256()
    sent = 0
    while sent < nbytes:
        block = rnd.randbytes(min(1 << 20, nbytes - sent))
        h.update(block)
        s.sendall(block)
        sent += len(block)
    if s.recv(1) != b"K":
        raise SystemExit("no K")
    print(json.dumps({"kind": "loaded"}), flush=True)
    sys.stdin.readline()
    s.sendall(b"p")
    got = b""
    while len(got) < 32:
        d = s.recv(32 - len(got))
        if not d:
            break
        got += d
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    print(json.dumps({"kind": "done", "ok": got == h.digest()}), flush=True)


if __name__ == "__main__":
    cmd, *a = sys.argv[1:]
    if cmd == "serve":
        serve(int(a[0]), int(a[1]))
    else:
        client(a[0], int(a[1]), int(a[2]))
