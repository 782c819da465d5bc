"""A userspace Ethernet hub with ONE token bucket for all its ports.

The kernel here has no netem and no ifb, so a medium that several hosts share
(the paper's 10 Mbit/s hub) cannot be built from qdiscs: a qdisc shapes one
device's egress. This process opens one TAP device per attachment (in the
lab's switch namespace; the lab then moves each into its host's namespace
while this process keeps the fd) and forwards every frame it reads from a port
to every other port of the same segment. Every frame of every port first
waits in one FIFO for one token bucket (rate in bits/s of whole frames, as
`tbf` counts them), so the whole lab shares a single budget, both directions.
After the bucket a frame may be lost (seeded: reproducible) and is delivered
after a fixed delay.

`HubCore` is the sans-IO part (frames and time in, deliveries out) and is
unit-tested; `serve()` is the epoll loop around it. Run as
`python -m ftcp.lab.hub --rate BIT --port SEG:IFNAME ...`; it prints `ready`
once all TAPs exist and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections.abc import Sequence

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
READ_BATCH = 64  # frames read from one port per wake-up before looking at the others


@dataclasses.dataclass(slots=True)
class HubStats:
    received: int = 0
    forwarded: int = 0  # frames that left the bucket and were not lost
    queue_drops: int = 0  # tail drops: the shared queue was full
    lost: int = 0  # random loss
    bytes_through_bucket: int = 0


class HubCore:
    """Sans-IO hub: `receive(port, frame, now)`, then `poll(now)` for deliveries.

    Ports are numbered by their position in `segments` (the segment of each
    port). `rate_bit=None` means no bucket (forward at once).
    """

    def __init__(
        self,
        segments: Sequence[str],
        *,
        rate_bit: int | None,
        burst: int,
        limit: int,
        delay_s: float = 0.0,
        loss: float = 0.0,
        seed: int = 0,
        now: float = 0.0,
    ) -> None:
        if rate_bit is not None and rate_bit <= 0:
            raise ValueError("rate must be positive")
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        self.segments = list(segments)
        self.rate = None if rate_bit is None else rate_bit / 8.0  # bytes per second
        self.burst = burst
        self.limit = limit
        self.delay = delay_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.tokens = float(burst)
        self.last = now
        self.queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self.queued_bytes = 0
        self.delayed: collections.deque[tuple[float, int, bytes]] = collections.deque()
        self.stats = HubStats()
        self._peers = [
            [q for q, sq in enumerate(self.segments) if sq == s and q != p]
            for p, s in enumerate(self.segments)
        ]

    def receive(self, port: int, frame: bytes, now: float) -> None:
        self.stats.received += 1
        self._refill(now)  # account the time before this frame with the queue as it was
        if self.queued_bytes + len(frame) > self.limit and self.queue:
            self.stats.queue_drops += 1
            return
        self.queue.append((port, frame))
        self.queued_bytes += len(frame)

    def _refill(self, now: float) -> None:
        # With a backlog the medium was busy all along, even if this process was scheduled
        # late: credit the whole interval. Only an idle medium (empty queue) caps at `burst`.
        if self.rate is not None and now > self.last:
            self.tokens += (now - self.last) * self.rate
            if not self.queue:
                self.tokens = min(float(self.burst), self.tokens)
        self.last = max(self.last, now)

    def poll(self, now: float) -> list[tuple[int, bytes]]:
        """Frames due now, as (output port, frame): one entry per receiving port."""
        self._refill(now)
        while self.queue:
            port, frame = self.queue[0]
            # a frame larger than the whole bucket may go when the bucket is full (deficit)
            if self.rate is not None and self.tokens < min(len(frame), self.burst):
                break
            self.queue.popleft()
            self.queued_bytes -= len(frame)
            if self.rate is not None:
                self.tokens -= len(frame)
            self.stats.bytes_through_bucket += len(frame)
            if self.loss and self.rng.random() < self.loss:
                self.stats.lost += 1
                continue
            self.delayed.append((now + self.delay, port, frame))
        if not self.queue and self.tokens > self.burst:
            self.tokens = float(self.burst)  # caught up: idle from here on
        out: list[tuple[int, bytes]] = []
        while self.delayed and self.delayed[0][0] <= now:
            _, port, frame = self.delayed.popleft()
            self.stats.forwarded += 1
            out.extend((q, frame) for q in self._peers[port])
        return out

    def next_deadline(self) -> float | None:
        """When `poll` next has something to do (None: only a new frame can change that)."""
        times: list[float] = []
        if self.delayed:
            times.append(self.delayed[0][0])
        if self.queue:
            if self.rate is None:
                times.append(self.last)
            else:
                need = min(len(self.queue[0][1]), self.burst) - self.tokens
                times.append(self.last + max(0.0, need) / self.rate)
        return min(times) if times else None


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def serve(core: HubCore, fds: list[int]) -> None:
    """Forward frames between TAP fds through `core` until SIGTERM/SIGINT."""
    ep = select.epoll()
    port_of = {}
    for port, fd in enumerate(fds):
        ep.register(fd, select.EPOLLIN)
        port_of[fd] = port
    while True:
        deadline = core.next_deadline()
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            events = ep.poll(timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _ in events:
            port = port_of[fd]
            for _ in range(READ_BATCH):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.EBADFD:  # device gone (namespace deleted)
                        ep.unregister(fd)
                        break
                    raise
                core.receive(port, frame, now)
        for port, frame in core.poll(now):
            # a full or vanished TAP drops the frame, as a medium would
            with contextlib.suppress(OSError):
                os.write(fds[port], frame)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def write_stats(core: HubCore, path: str, seq: int) -> None:
    """Atomically write the counters (and a sequence number a reader can wait for)."""
    d = dataclasses.asdict(core.stats)
    d.update(seq=seq, time=time.monotonic(), queued_bytes=core.queued_bytes)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(d, f)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftcp.lab.hub", description=__doc__.split("\n")[0])
    p.add_argument("--port", action="append", required=True, metavar="SEGMENT:IFNAME")
    p.add_argument("--rate", type=int, default=None, help="bits/s of whole frames; omit: no limit")
    p.add_argument("--burst", type=int, default=4 * 1514, help="bucket depth, bytes")
    p.add_argument("--limit", type=int, default=1 << 20, help="shared queue, bytes")
    p.add_argument("--delay", type=float, default=0.0, help="fixed delay, seconds")
    p.add_argument("--loss", type=float, default=0.0, help="loss probability per frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", help="write counters (JSON) here on SIGUSR1")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    segments, fds = [], []
    for spec in a.port:
        seg, _, name = spec.partition(":")
        try:
            fds.append(open_tap(name))
        except OSError as e:
            print(f"error: cannot create TAP {name}: {e.strerror}", flush=True)
            return 1
        segments.append(seg)
    core = HubCore(
        segments, rate_bit=a.rate, burst=a.burst, limit=a.limit,
        delay_s=a.delay, loss=a.loss, seed=a.seed, now=time.monotonic(),
    )  # fmt: skip
    if a.stats:
        seq = [0]

        def _dump(_signum: int, _frame: object) -> None:
            seq[0] += 1
            write_stats(core, a.stats, seq[0])

        write_stats(core, a.stats, 0)
        signal.signal(signal.SIGUSR1, _dump)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the lab stopped reading: never block on stdout
    os.close(devnull)
    with contextlib.suppress(SystemExit):
        serve(core, fds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
