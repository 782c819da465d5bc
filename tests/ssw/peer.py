"""A plain TCP peer for the SSW tests, run inside a namespace via `ip netns exec`.

    peer.py server PORT SEND_BYTES SEED     # accept one connection, exchange, report
    peer.py client HOST PORT SEND_BYTES SEED
    peer.py source PORT BYTES               # accept one connection, send BYTES, close
    peer.py sink HOST PORT                  # connect, read to EOF, report bytes and seconds

`server`/`client` send SEND_BYTES of seeded random data while reading the
other direction to EOF, and print one JSON line with the sha256 of what they
sent and received. The server prints `READY` once it listens.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import threading
import time


def _exchange(conn: socket.socket, nbytes: int, seed: int) -> dict[str, object]:
    data = random.Random(seed).randbytes(nbytes)
    got = hashlib.sha256()
    count = [0]

    def reader() -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                return
            got.update(view[:n])
            count[0] += n

    t = threading.Thread(target=reader)
    t.start()
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    t.join()
    conn.close()
    return {
        "sent_sha": hashlib.sha256(data).hexdigest(),
        "sent_len": nbytes,
        "recv_sha": got.hexdigest(),
        "recv_len": count[0],
    }


def _listen(port: int) -> socket.socket:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(8)
    print("READY", flush=True)
    return ls


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "server":
        port, nbytes, seed = int(argv[1]), int(argv[2]), int(argv[3])
        ls = _listen(port)
        conn, _ = ls.accept()
        print(json.dumps(_exchange(conn, nbytes, seed)), flush=True)
    elif mode == "client":
        host, port, nbytes, seed = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        conn = socket.create_connection((host, port), timeout=120)
        conn.settimeout(None)
        print(json.dumps(_exchange(conn, nbytes, seed)), flush=True)
    elif mode == "source":
        port, nbytes = int(argv[1]), int(argv[2])
        ls = _listen(port)
        conn, _ = ls.accept()
        chunk = memoryview(random.Random(1).randbytes(1 << 20))
        left = nbytes
        while left > 0:
            left -= conn.send(chunk[: min(left, len(chunk))])
        conn.close()
    elif mode == "sink":
        host, port = argv[1], int(argv[2])
        conn = socket.create_connection((host, port), timeout=120)
        conn.settimeout(None)
        buf = bytearray(1 << 20)
        total = 0
        n = conn.recv_into(buf)
        t0 = time.perf_counter()
        while n:
            total += n
            n = conn.recv_into(buf)
        dt = time.perf_counter() - t0
        print(json.dumps({"bytes": total, "seconds": dt}), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
