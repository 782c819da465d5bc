"""Two namespaces joined by a veth pair, a queue worker thread, and a transfer driver.

Everything made here is tracked by exact name / Popen object and removed by
`NsPair.close()`, even after a failure; nothing is matched by pattern.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftcp.ssw.nfqueue import Queue, QueuedPacket

PEER = str(Path(__file__).with_name("peer.py"))


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True)


class NsPair:
    """Client namespace `a` (10.99.0.1) and server namespace `b` (10.99.0.2)."""

    a_addr = "10.99.0.1"
    b_addr = "10.99.0.2"

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.a = f"ftcp-t{tag}-a"
        self.b = f"ftcp-t{tag}-b"
        self.a_if = f"ft{tag}a"
        self.b_if = f"ft{tag}b"
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[str]] = []

    def up(self) -> NsPair:
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            self._created.append(ns)
        sh("ip", "-n", self.a, "link", "add", self.a_if, "type", "veth",
           "peer", "name", self.b_if, "netns", self.b)  # fmt: skip
        for ns, ifn, addr in ((self.a, self.a_if, self.a_addr), (self.b, self.b_if, self.b_addr)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifn)
            sh("ip", "-n", ns, "link", "set", ifn, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, *argv: str) -> str:
        return sh(*self.exec_argv(ns, list(argv))).stdout

    def popen(self, ns: str, argv: list[str]) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            self.exec_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(p)
        return p

    def peer(self, ns: str, *args: object) -> subprocess.Popen[str]:
        return self.popen(ns, [sys.executable, PEER, *map(str, args)])

    def iptables_rules(self, ns: str) -> list[str]:
        return self.run(ns, "iptables", "-w", "-S").splitlines()

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.communicate(timeout=10)
        self._procs.clear()
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self._created.clear()


@dataclass
class WorkerStats:
    packets: int = 0
    bytes: int = 0
    gso: int = 0  # packets larger than a 1500-byte MTU
    csum_partial: int = 0
    gso_flag: int = 0
    max_len: int = 0
    per_queue: dict[int, int] = field(default_factory=dict)


Handler = Callable[[Queue, QueuedPacket], None]


def accept_all(q: Queue, p: QueuedPacket) -> None:
    q.accept(p.id)


class QueueWorker(threading.Thread):
    """Serve one or more queues from one thread until `stop()`."""

    def __init__(self, queues: list[Queue], handler: Handler = accept_all) -> None:
        super().__init__(name="nfqueue-worker", daemon=True)
        self.queues = queues
        self.handler = handler
        self.stats = WorkerStats()
        self.error: BaseException | None = None
        self._stop_r, self._stop_w = os.pipe()

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            for q in self.queues:
                sel.register(q.fileno(), selectors.EVENT_READ, q)
            sel.register(self._stop_r, selectors.EVENT_READ, None)
            st = self.stats
            while True:
                for key, _ in sel.select():
                    q = key.data
                    if q is None:
                        return
                    for p in q.receive():
                        n = len(p.payload)
                        st.packets += 1
                        st.bytes += n
                        st.per_queue[q.num] = st.per_queue.get(q.num, 0) + 1
                        if n > 1500:
                            st.gso += 1
                        if n > st.max_len:
                            st.max_len = n
                        if p.csum_partial:
                            st.csum_partial += 1
                        if p.gso:
                            st.gso_flag += 1
                        self.handler(q, p)
                    q.flush()
        except BaseException as e:
            self.error = e
        finally:
            sel.close()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self.join(timeout=10)
        os.close(self._stop_r)
        os.close(self._stop_w)
        if self.error is not None:
            raise self.error


def wait_ready(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "READY":
        _, err = p.communicate(timeout=10)
        raise AssertionError(f"server did not start: {line!r} {err}")


def finish(p: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"peer failed ({p.returncode}): {err}")
    return json.loads(out.strip().splitlines()[-1])


def exchange(pair: NsPair, port: int, nbytes: int, timeout: float = 120) -> None:
    """Both directions at once, `nbytes` each; assert byte-exact delivery (sha256)."""
    srv = pair.peer(pair.b, "server", port, nbytes, 11)
    wait_ready(srv)
    cli = pair.peer(pair.a, "client", pair.b_addr, port, nbytes, 22)
    c = finish(cli, timeout)
    s = finish(srv, timeout)
    assert c["recv_len"] == s["sent_len"] == nbytes
    assert s["recv_len"] == c["sent_len"] == nbytes
    assert c["recv_sha"] == s["sent_sha"], "server→client stream corrupted"
    assert s["recv_sha"] == c["sent_sha"], "client→server stream corrupted"


def bulk_gbps(pair: NsPair, port: int, nbytes: int, timeout: float = 120) -> float:
    """Server→client bulk transfer; Gbit/s measured at the client."""
    src = pair.peer(pair.b, "source", port, nbytes)
    wait_ready(src)
    sink = pair.peer(pair.a, "sink", pair.b_addr, port)
    r = finish(sink, timeout)
    src.communicate(timeout=timeout)
    assert r["bytes"] == nbytes
    return nbytes * 8 / float(r["seconds"]) / 1e9  # type: ignore[arg-type]
