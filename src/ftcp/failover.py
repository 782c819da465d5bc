"""Host failover on the supervisor's side: the service address and the lease.

`ServiceAddress` adds the service address (`--vip`) to the client-facing
interface and announces it with gratuitous ARP, and removes it.

`LeaseKeeper` is a thread that holds the application's lease on a lease link of
its own (`ftcp.logger.leaselink`); the rules are `ftcp.core.lease`'s. A
standby's keeper asks until the lease is lent to it; a holder's renews it every
heartbeat, as long as the supervisor's event loop is alive. When the lease is
about to run out (renewals unanswered, a stalled loop) or the logger says the
epoch is over, the keeper gives up *from its own thread*: it removes the address
before the lease ends, so a stuck loop cannot keep it, and then tells the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ftcp.core import wire
from ftcp.core.lease import LeaseHolder, LeaseTerms
from ftcp.errors import UserError
from ftcp.logger.leaselink import LeaseLink, LeaseLinkError

log = logging.getLogger("ftcp.failover")

ETH_P_ARP = 0x0806
GARP_COUNT = 3  # announcements per takeover (some switches miss the first)
ASK_EVERY = 0.010  # a standby asks for the lease this often (detection adds at most this)


# ------------------------------------------------------------------ the address


def parse_vip(text: str) -> ipaddress.IPv4Interface:
    try:
        vip = ipaddress.IPv4Interface(text)
    except ValueError:
        raise UserError(f"--vip {text!r}: not an IPv4 ADDR/PREFIX") from None
    if "/" not in text:
        raise UserError(f"--vip {text!r}: give the prefix too (e.g. {text}/24)")
    return vip


def garp_frames(mac: bytes, ip: bytes) -> list[bytes]:
    """Gratuitous ARP for `ip` at `mac`: an unsolicited request and an unsolicited reply
    (hosts and switches differ in which they take), both broadcast."""
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    head = struct.pack("!HHBB", 1, 0x0800, 6, 4)
    request = head + struct.pack("!H", 1) + mac + ip + b"\x00" * 6 + ip
    reply = head + struct.pack("!H", 2) + mac + ip + b"\xff" * 6 + ip
    return [eth + request, eth + reply]


class ServiceAddress:
    """The service address on the client-facing interface (added by `take`, removed by
    `drop`; only what `take` added is removed)."""

    def __init__(self, vip: ipaddress.IPv4Interface, iface: str) -> None:
        self.vip = vip
        self.iface = iface
        self.added = False
        self._lock = threading.Lock()

    def _ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)

    def present(self) -> bool:
        r = self._ip("-4", "-o", "addr", "show", "dev", self.iface)
        return f" {self.vip.with_prefixlen} " in f" {r.stdout} "

    def take(self) -> None:
        """Add the address (unless present) and announce it."""
        with self._lock:
            if not self.present():
                r = self._ip("addr", "add", self.vip.with_prefixlen, "dev", self.iface)
                if r.returncode != 0:
                    raise UserError(
                        f"cannot add {self.vip} to {self.iface}: {r.stderr.strip()}"
                    )
                self.added = True
        self.announce()

    def announce(self) -> None:
        try:
            mac = bytes.fromhex(
                Path(f"/sys/class/net/{self.iface}/address").read_text().strip().replace(":", "")
            )
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((self.iface, ETH_P_ARP))
                for _ in range(GARP_COUNT):
                    for fr in garp_frames(mac, self.vip.ip.packed):
                        s.send(fr)
        except OSError as e:
            log.warning("gratuitous ARP for %s on %s failed: %s", self.vip.ip, self.iface, e)

    def drop(self) -> None:
        """Remove the address if this run added it (idempotent, any thread)."""
        with self._lock:
            if not self.added:
                return
            r = self._ip("addr", "del", self.vip.with_prefixlen, "dev", self.iface)
            if r.returncode == 0 or not self.present():
                self.added = False
            else:
                log.error("cannot remove %s from %s: %s", self.vip, self.iface, r.stderr.strip())


class Fence:
    """What a host that loses its lease must stop at once, from any thread: each step
    added runs once, in order (remove the address, silence the injector)."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.tripped = False

    def add(self, step: Callable[[], None]) -> None:
        with self._lock:
            self._steps.append(step)
            tripped = self.tripped
        if tripped:
            step()

    def trip(self) -> None:
        with self._lock:
            self.tripped = True
            steps = list(self._steps)
        for step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - the others must still run
                log.exception("fencing step failed")


# ------------------------------------------------------------------ the lease


def _raise_priority() -> None:
    """The keeper's heartbeats must not wait for a busy CPU: real-time scheduling for
    its thread (root), else the highest nice value."""
    with contextlib.suppress(OSError, AttributeError):
        # what it runs (`ip addr del`) must not inherit real-time scheduling
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -20)


class LeaseKeeper:
    """The lease-keeping thread (module docstring). Callbacks run in the event loop:
    `on_granted(epoch)` once the lease is lent, `on_lost(why)` once it is given up
    (`give_up`, run in the keeper's thread first, must be quick and idempotent)."""

    def __init__(
        self,
        link: Callable[[], LeaseLink],
        terms: LeaseTerms,
        loop: asyncio.AbstractEventLoop,
        *,
        on_granted: Callable[[int], None],
        on_lost: Callable[[str], None],
        give_up: Callable[[], None],
    ) -> None:
        terms.check()
        self.terms = terms
        self.loop = loop
        self._link = link
        self.on_granted, self.on_lost, self.give_up = on_granted, on_lost, give_up
        self.holder = LeaseHolder(terms)
        self.epoch = 0
        self.granted_at = 0.0  # loop time the lease was lent (`on_granted`)
        self.lost: str | None = None
        self.waiting_since: float | None = None  # asking while another holds it
        self.last_renewed: float | None = None
        self._tick = time.monotonic()  # the event loop's last sign of life
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftcp-lease", daemon=True)
        self._req = 0
        self._asked = float("-inf")
        self._release = True

    # -- driven from the loop --

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        """The loop's sign of life, every heartbeat."""
        self._tick = time.monotonic()
        if not self._stop.is_set():
            self.loop.call_later(self.terms.heartbeat / 2, self._beat)

    def stop(self, release: bool = True) -> None:
        """End the thread (it does not wait for it); a holder that stops cleanly gives
        the lease up at once (`release`)."""
        self._release = release
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "epoch": self.epoch,
            "held": self.holder.held,
            "lease_left_s": round(self.holder.until - now, 3) if self.holder.held else None,
            "last_renewed_s_ago": None
            if self.last_renewed is None
            else round(now - self.last_renewed, 3),
            "lost": self.lost,
        }

    # -- the thread --

    def _alive(self, now: float) -> bool:
        return now - self._tick < self.terms.duration / 2

    def _run(self) -> None:
        _raise_priority()
        link: LeaseLink | None = None
        while not self._stop.is_set() and self.lost is None:
            now = time.monotonic()
            if self.holder.lost(now):
                self._lose(self._why_late(now))
                break
            if link is None:
                try:
                    link = self._link()
                    if self.holder.held:  # the give-up must not wait behind a connect
                        link.timeout = max(0.001, min(link.timeout, self.holder.give_up_at() - now))
                    link.connect()
                except LeaseLinkError as e:
                    log.debug("lease link: %s", e)
                    if link is not None:
                        link.close()
                    link = None
                    self._stop.wait(ASK_EVERY)
                    continue
            try:
                self._step(link, now)
            except LeaseLinkError as e:
                log.warning("lease link lost: %s", e)
                link.close()
                link = None
        if link is not None:
            if self._release and self.holder.held:
                with contextlib.suppress(LeaseLinkError):
                    link.send(0, self.holder.epoch, wire.LEASE_RELEASE)
            link.close()

    def _step(self, link: LeaseLink, now: float) -> None:
        h = self.holder
        if not h.held:
            if now - self._asked >= ASK_EVERY:
                self._asked = now
                self._req += 1
                h.sent(self._req, now)
                link.send(self._req, 0)
            wait = max(0.0, self._asked + ASK_EVERY - now)
        else:
            if h.renew_due(now) and self._alive(now):
                self._req += 1
                h.sent(self._req, now)
                link.send(self._req, h.epoch)
            wait = max(0.0, min(self.terms.heartbeat, h.give_up_at() - now))
        for a in link.answers(wait):
            if a.kind is wire.LeaseKind.GRANTED:
                first = not h.held
                h.granted(a.req, a.epoch)
                self.last_renewed = time.monotonic()
                if first and h.held:
                    self.epoch = a.epoch
                    self.waiting_since = None
                    self.loop.call_soon_threadsafe(self._granted, a.epoch)
            elif a.kind is wire.LeaseKind.WAIT:
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
            elif h.held:
                self._lose(f"the logger fenced epoch {h.epoch} (now {a.epoch})")
                return

    def _granted(self, epoch: int) -> None:
        self.granted_at = self.loop.time()
        self.on_granted(epoch)

    def _why_late(self, now: float) -> str:
        answered = (
            f"last renewal answered {1000 * (now - self.last_renewed):.0f} ms ago"
            if self.last_renewed is not None
            else "no renewal answered"
        )
        return (
            f"the lease was not renewed in time ({answered}; the event loop last seen "
            f"{1000 * (now - self._tick):.0f} ms ago)"
        )

    def _lose(self, why: str) -> None:
        self.lost = why
        try:
            self.give_up()
        finally:
            self.holder.drop()
            self.loop.call_soon_threadsafe(self.on_lost, why)
