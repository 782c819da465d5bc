"""Both ends of the demo's workload: `python -m ftcp.demo_peer server|client ...`.

One TCP connection carries an upload (client -> server) and a download
(server -> client) at the same time. Each end hashes what it sent and what it
received, prints a progress line (JSON) every 0.2 s and a final `done` line,
so the demo can show the transfer live and compare full-stream hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time

CHUNK = 64 * 1024


def _stream(seed: int, nbytes: int):
    block = random.Random(seed).randbytes(1 << 20)
    sent = 0
    while sent < nbytes:
        n = min(CHUNK, nbytes - sent)
        off = sent % len(block)
        chunk = block[off : off + n]
        if len(chunk) < n:
            chunk += block[: n - len(chunk)]
        yield chunk
        sent += n


class Duplex:
    """Send `nbytes` seeded bytes while reading until EOF; hash both ways."""

    def __init__(self, sock: socket.socket, nbytes: int, seed: int) -> None:
        self.sock = sock
        self.nbytes = nbytes
        self.seed = seed
        self.sent = self.received = 0
        self.h_sent = hashlib.sha256()
        self.h_recv = hashlib.sha256()
        self.error: str | None = None

    def _send(self) -> None:
        try:
            for chunk in _stream(self.seed, self.nbytes):
                self.sock.sendall(chunk)
                self.h_sent.update(chunk)
                self.sent += len(chunk)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = f"send: {e}"

    def run(self) -> dict:
        t = threading.Thread(target=self._send, daemon=True)
        t.start()
        start = time.monotonic()
        last = 0.0
        try:
            while True:
                data = self.sock.recv(CHUNK)
                if not data:
                    break
                self.h_recv.update(data)
                self.received += len(data)
                now = time.monotonic()
                if now - last >= 0.2:
                    last = now
                    self.report("progress", now - start)
        except OSError as e:
            self.error = f"recv: {e}"
        t.join()
        return self.report("done", time.monotonic() - start)

    def report(self, kind: str, elapsed: float) -> dict:
        d = {"kind": kind, "t": round(elapsed, 3), "sent": self.sent, "received": self.received}
        if kind == "done":
            d |= {
                "sha256_sent": self.h_sent.hexdigest(),
                "sha256_received": self.h_recv.hexdigest(),
                "error": self.error,
            }
        print(json.dumps(d), flush=True)
        return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ftcp.demo_peer")
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--addr", required=True, help="server address (bind or connect)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--bytes", type=int, required=True, help="bytes this end sends")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args(argv)
    if a.role == "server":
        with socket.create_server((a.addr, a.port), backlog=1, reuse_port=False) as srv:
            print(json.dumps({"kind": "ready"}), flush=True)
            srv.settimeout(a.timeout)
            sock, _ = srv.accept()
    else:
        deadline = time.monotonic() + a.timeout
        while True:
            try:
                sock = socket.create_connection((a.addr, a.port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    sock.settimeout(a.timeout)
    with sock:
        res = Duplex(sock, a.bytes, a.seed).run()
    return 1 if res["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
