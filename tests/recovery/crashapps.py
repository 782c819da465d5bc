"""Workloads for the crash suite (stdlib only; run inside lab hosts).

    crashapps.py duplex HOST PORT NBYTES CHUNK PACE   stream NBYTES to an echo server
        (CHUNK bytes, PACE seconds apart), read the echo back concurrently,
        half-close, wait for the server's FIN
    crashapps.py reqresp HOST PORT COUNT SIZE PACE    COUNT request/responses
    crashapps.py asyncio-server PORT                  asyncio request/response server:
        reads a 4-byte length + body, answers sha256(body) + body reversed
    crashapps.py clock-server PORT                    writes the clock after every read

Clients print one JSON line (byte counts, sha256 of both streams, "ok").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import struct
import sys
import threading
import time


def _connect(host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 20
    while True:
        try:
            return socket.create_connection((host, port), timeout=90)
        except (ConnectionRefusedError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def duplex(
    host: str, port: int, nbytes: int, chunk: int, pace: float, seed: int | None = None
) -> dict[str, object]:
    s = _connect(host, port)
    data = _data(nbytes, port if seed is None else seed)
    got = bytearray()
    err: list[BaseException] = []

    def reader() -> None:
        try:
            while True:
                d = s.recv(1 << 16)
                if not d:
                    return
                got.extend(d)
        except BaseException as e:  # reported below
            err.append(e)

    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    for i in range(0, nbytes, chunk):
        s.sendall(data[i : i + chunk])
        if pace:
            time.sleep(pace)
    s.shutdown(socket.SHUT_WR)
    t.join(120)
    s.close()
    sent = hashlib.sha256(data).hexdigest()
    recv = hashlib.sha256(bytes(got)).hexdigest()
    return {
        "sent": nbytes,
        "recv": len(got),
        "sent_sha": sent,
        "recv_sha": recv,
        "ok": not err and sent == recv,
        "error": repr(err[0]) if err else None,
        "elapsed": time.monotonic() - t0,
    }


def _answer(body: bytes) -> bytes:
    return hashlib.sha256(body).digest() + body[::-1]


def reqresp(host: str, port: int, count: int, size: int, pace: float) -> dict[str, object]:
    s = _connect(host, port)
    rng = random.Random(port)
    ok = 0
    sent_h, recv_h = hashlib.sha256(), hashlib.sha256()
    for _ in range(count):
        body = rng.randbytes(rng.randint(1, size))
        req = struct.pack(">I", len(body)) + body
        s.sendall(req)
        sent_h.update(req)
        want = _answer(body)
        got = bytearray()
        while len(got) < len(want):
            d = s.recv(len(want) - len(got))
            if not d:
                raise EOFError("server closed early")
            got.extend(d)
        recv_h.update(got)
        ok += bytes(got) == want
        if pace:
            time.sleep(pace)
    s.shutdown(socket.SHUT_WR)
    tail = s.recv(1)
    s.close()
    return {
        "count": count,
        "ok_count": ok,
        "sent_sha": sent_h.hexdigest(),
        "recv_sha": recv_h.hexdigest(),
        "ok": ok == count and tail == b"",
    }


def drip(host: str, port: int, count: int, pace: float) -> dict[str, object]:
    """COUNT small messages, PACE apart, each answer read; any content is accepted."""
    s = _connect(host, port)
    got = 0
    err = None
    try:
        for i in range(count):
            s.sendall(f"msg {i}\n".encode())
            d = s.recv(1 << 16)
            if not d:
                err = "eof"
                break
            got += len(d)
            time.sleep(pace)
    except OSError as e:
        err = repr(e)
    s.close()
    return {"received": got, "error": err, "ok": True}


def asyncio_server(port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    hdr = await r.readexactly(4)
                except asyncio.IncompleteReadError:
                    break
                body = await r.readexactly(struct.unpack(">I", hdr)[0])
                w.write(_answer(body))
                await w.drain()
        finally:
            w.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "0.0.0.0", port, reuse_address=True)
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())


def clock_server(port: int) -> None:
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", port))
    lst.listen(16)
    while True:
        c, _ = lst.accept()
        threading.Thread(target=_clock_conn, args=(c,), daemon=True).start()


def _clock_conn(c: socket.socket) -> None:
    with c:
        while True:
            d = c.recv(1 << 16)
            if not d:
                return
            c.sendall(f"{time.time_ns()}\n".encode() + d)


def main() -> None:
    cmd, *a = sys.argv[1:]
    if cmd == "duplex":
        seed = int(a[5]) if len(a) > 5 else None  # default: the port
        r = duplex(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]), seed)
    elif cmd == "reqresp":
        r = reqresp(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]))
    elif cmd == "drip":
        r = drip(a[0], int(a[1]), int(a[2]), float(a[3]))
    elif cmd == "asyncio-server":
        asyncio_server(int(a[0]))
        return
    elif cmd == "clock-server":
        clock_server(int(a[0]))
        return
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(r), flush=True)
    sys.exit(0 if r["ok"] else 1)


if __name__ == "__main__":
    main()
