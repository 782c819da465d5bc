"""Plain clients and an unmodified echo server for the integration tests (stdlib only).

    apps.py echo-server PORT                       socketserver echo, threaded
    apps.py bulk HOST PORT NBYTES                  send NBYTES, read the echo back at once
    apps.py small HOST PORT COUNT SIZE             COUNT request/responses of SIZE bytes
    apps.py concurrent HOST PORT CONNS COUNT SIZE  `small` on CONNS connections at once

Clients print one JSON line: byte counts and sha256 digests of both streams.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import sys
import threading
import time


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            d = self.request.recv(1 << 16)
            if not d:
                break
            self.request.sendall(d)


def echo_server(port: int) -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer.request_queue_size = 128  # 24 clients connect at once
    with socketserver.ThreadingTCPServer(("0.0.0.0", port), _Echo) as srv:
        srv.serve_forever()


def _connect(host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 15
    while True:
        try:
            return socket.create_connection((host, port), timeout=60)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def bulk(host: str, port: int, nbytes: int) -> dict[str, object]:
    s = _connect(host, port)
    data = os.urandom(1 << 20)
    sent = hashlib.sha256()
    t0 = time.monotonic()

    def sender() -> None:
        left = nbytes
        while left:
            chunk = data[: min(left, len(data))]
            s.sendall(chunk)
            sent.update(chunk)
            left -= len(chunk)
        s.shutdown(socket.SHUT_WR)

    th = threading.Thread(target=sender)
    th.start()
    got = hashlib.sha256()
    n = 0
    while True:
        d = s.recv(1 << 18)
        if not d:
            break
        got.update(d)
        n += len(d)
    th.join()
    s.close()
    return {
        "sent": nbytes,
        "sent_sha": sent.hexdigest(),
        "recv": n,
        "recv_sha": got.hexdigest(),
        "seconds": time.monotonic() - t0,
    }


def _exchanges(host: str, port: int, count: int, size: int, seed: int) -> tuple[int, bool]:
    s = _connect(host, port)
    ok = 0
    for i in range(count):
        msg = (f"{seed}:{i}:".encode() * size)[:size]
        s.sendall(msg)
        buf = b""
        while len(buf) < size:
            d = s.recv(size - len(buf))
            if not d:
                break
            buf += d
        if buf == msg:
            ok += 1
    s.close()
    return ok, True


def small(host: str, port: int, count: int, size: int) -> dict[str, object]:
    t0 = time.monotonic()
    ok, _ = _exchanges(host, port, count, size, 0)
    return {"ok": ok, "count": count, "seconds": time.monotonic() - t0}


def concurrent(host: str, port: int, conns: int, count: int, size: int) -> dict[str, object]:
    results: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        try:
            ok, _ = _exchanges(host, port, count, size, k)
        except OSError as e:
            with lock:
                errors.append(repr(e))
            return
        with lock:
            results.append(ok)

    t0 = time.monotonic()
    ths = [threading.Thread(target=one, args=(k,)) for k in range(conns)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return {
        "ok": sum(results),
        "count": conns * count,
        "errors": errors,
        "seconds": time.monotonic() - t0,
    }


def main(argv: list[str]) -> int:
    mode, *args = argv
    if mode == "echo-server":
        echo_server(int(args[0]))
        return 0
    if mode == "bulk":
        r = bulk(args[0], int(args[1]), int(args[2]))
    elif mode == "small":
        r = small(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif mode == "concurrent":
        r = concurrent(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
