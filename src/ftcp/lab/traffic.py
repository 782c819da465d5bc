"""Tiny traffic tools run inside lab hosts: `python -m ftcp.lab.traffic ...`.

* `recv --bind IP --port P`: accept one TCP connection, read to EOF, print
  `{"bytes", "sha256", "seconds", "bps", "t_first", "t_last"}` (seconds from
  first byte to EOF; the times are CLOCK_MONOTONIC, comparable across hosts).
  Prints `ready` first, once listening.
* `send --to IP --port P (--bytes N | --seconds S) [--seed K]`: connect (retrying
  while refused), send seeded pseudo-random bytes, close, print
  `{"bytes", "sha256"}`.
* `probe --timeout T IP:PORT ...`: TCP-connect to each target and print
  `{target: ["reachable" | "unreachable: <why>", seconds]}`; a refused
  connection counts as reachable (the host answered with a RST).

Both ends hash what actually crossed the wire, so a transfer test compares
the two hashes byte for byte.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftcp.lab.net import Lab

CHUNK = 64 * 1024


def pattern(seed: int, size: int = 1 << 20) -> bytes:
    return random.Random(seed).randbytes(size)


def recv(bind: str, port: int, timeout: float) -> dict:
    with socket.create_server((bind, port), backlog=1) as srv:
        print("ready", flush=True)
        srv.settimeout(timeout)
        conn, _ = srv.accept()
    h = hashlib.sha256()
    n = 0
    first = last = None
    with conn:
        conn.settimeout(timeout)
        buf = bytearray(1 << 18)
        while True:
            k = conn.recv_into(buf)
            if not k:
                break
            now = time.monotonic()
            if first is None:
                first = now
            last = now
            n += k
            h.update(memoryview(buf)[:k])
    secs = (last - first) if first is not None and last is not None else 0.0
    # CLOCK_MONOTONIC is system-wide: t_first/t_last of two receivers are comparable
    return {
        "bytes": n,
        "sha256": h.hexdigest(),
        "seconds": secs,
        "bps": 8 * n / secs if secs else 0,
        "t_first": first,
        "t_last": last,
    }


def _connect(to: str, port: int, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((to, port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def send(
    to: str, port: int, nbytes: int | None, seconds: float | None, seed: int, timeout: float
) -> dict:
    block = pattern(seed)
    h = hashlib.sha256()
    sent = 0
    with _connect(to, port, timeout) as s:
        s.settimeout(timeout)
        end = None if seconds is None else time.monotonic() + seconds
        off = 0
        while True:
            if nbytes is not None:
                want = min(CHUNK, nbytes - sent)
                if want <= 0:
                    break
            else:
                assert end is not None
                if time.monotonic() >= end:
                    break
                want = CHUNK
            piece = (
                block[off : off + want]
                if off + want <= len(block)
                else (block + block)[off : off + want]
            )
            s.sendall(piece)
            h.update(piece)
            sent += want
            off = (off + want) % len(block)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait for the receiver to close: everything was read
    return {"bytes": sent, "sha256": h.hexdigest()}


def probe(targets: Sequence[str], timeout: float) -> dict[str, tuple[str, float]]:
    """{target: (outcome, seconds the attempt took)}."""
    out = {}
    for t in targets:
        host, _, port = t.rpartition(":")
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                res = "reachable"
        except ConnectionRefusedError:
            res = "reachable"
        except TimeoutError:
            res = "unreachable: timeout"
        except OSError as e:
            res = f"unreachable: {errno.errorcode.get(e.errno or 0, str(e))}"
        out[t] = (res, time.monotonic() - t0)
    return out


# --- driving the tools from outside the lab ------------------------------------------------


def transfer(
    lab: Lab,
    src: str,
    dst: str,
    nbytes: int,
    *,
    segment: str | None = None,
    port: int = 5400,
    seed: int = 0,
    timeout: float = 60.0,
) -> tuple[dict, dict]:
    """Send `nbytes` from `src` to `dst`'s address on `segment`: (sender, receiver) reports."""
    rx, tx = start_transfer(
        lab, src, dst, nbytes, segment=segment, port=port, seed=seed, timeout=timeout
    )
    return finish_transfer(rx, tx, timeout)


def start_transfer(
    lab: Lab,
    src: str,
    dst: str,
    nbytes: int,
    *,
    segment: str | None = None,
    port: int = 5400,
    seed: int = 0,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Start a receiver in `dst` and a sender in `src`; `finish_transfer` collects them."""
    rx = start_receiver(lab, dst, segment=segment, port=port, timeout=timeout)
    tx = start_sender(lab, src, lab.ip(dst, segment), nbytes, port=port, seed=seed, timeout=timeout)
    return rx, tx


def start_receiver(
    lab: Lab, dst: str, *, segment: str | None = None, port: int = 5400, timeout: float = 60.0
) -> subprocess.Popen:
    """A listening receiver in `dst` (returns once it listens)."""
    rx = lab.python(
        dst, "ftcp.lab.traffic", "recv", "--bind", lab.ip(dst, segment), "--port", str(port),
        "--timeout", str(timeout), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert rx.stdout is not None
    line = rx.stdout.readline().strip()
    if line != "ready":
        rx.kill()
        raise RuntimeError(f"receiver in {dst} did not start: {line!r}")
    return rx


def start_sender(
    lab: Lab, src: str, ip: str, nbytes: int, *, port: int = 5400, seed: int = 0,
    timeout: float = 60.0,
) -> subprocess.Popen:  # fmt: skip
    return lab.python(
        src, "ftcp.lab.traffic", "send", "--to", ip, "--port", str(port),
        "--bytes", str(nbytes), "--seed", str(seed), "--timeout", str(timeout),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish_transfer(
    rx: subprocess.Popen, tx: subprocess.Popen, timeout: float = 60.0
) -> tuple[dict, dict]:
    tx_out, _ = tx.communicate(timeout=timeout)
    rx_out, _ = rx.communicate(timeout=timeout)
    if tx.returncode or rx.returncode:
        raise RuntimeError(f"transfer failed: sender {tx.returncode}, receiver {rx.returncode}")
    return json.loads(tx_out), json.loads(rx_out)


def probe_from(
    lab: Lab, src: str, targets: Sequence[str], timeout: float = 1.0, *, timed: bool = False
) -> dict[str, Any]:
    """Run `probe` in `src`: {"IP:PORT": "reachable" | "unreachable: ..."}.

    With `timed`, each value is `(outcome, seconds)` (a refused connect takes one RTT).
    """
    p = lab.python(
        src, "ftcp.lab.traffic", "probe", "--timeout", str(timeout), *targets,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, _ = p.communicate(timeout=timeout * len(targets) + 30)
    res = json.loads(out)
    return {t: tuple(v) for t, v in res.items()} if timed else {t: v[0] for t, v in res.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftcp.lab.traffic")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--timeout", type=float, default=60.0)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--bytes", type=int)
    g.add_argument("--seconds", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--timeout", type=float, default=60.0)
    q = sub.add_parser("probe")
    q.add_argument("--timeout", type=float, default=1.0)
    q.add_argument("targets", nargs="+", metavar="IP:PORT")
    a = p.parse_args(argv)
    if a.cmd == "recv":
        res = recv(a.bind, a.port, a.timeout)
    elif a.cmd == "send":
        res = send(a.to, a.port, a.bytes, a.seconds, a.seed, a.timeout)
    else:
        res = probe(a.targets, a.timeout)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
