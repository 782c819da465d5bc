"""Leases and epochs for host failover (docs/DESIGN.md "Host failover"), sans-IO.

The logger lends each application's lease to one supervisor at a time. Every
grant to a new holder carries the next *epoch* (it only grows, and survives a
logger restart); the holder renews it with heartbeats. The logger grants the
next epoch to another supervisor (the standby) only once the lease has expired
plus a `margin`, and from then on refuses the old epoch: its records and its
heartbeats (*fencing*).

Both sides count time on their own clocks, so the rule that keeps two hosts
from ever answering for one address is a rule about those clocks:

* the logger's lease runs from when it *received* a request or a renewal to
  `+ duration`; it lends it again after `+ duration + margin`;
* the holder's lease runs from when it *sent* the request that was granted
  (never later than the logger received it) to `+ duration`; it starts giving
  up (stops acknowledging client data, removes the address) `guard` before
  that, and must be done by then.

With clock rates within `drift` of real time, the holder is done (in real
time) by `sent + duration / (1 - drift)` and the logger lends again no earlier
than `received + (duration + margin) / (1 + drift)`, so `margin >=
2 * drift * duration / (1 - drift)` is enough (`LeaseTerms.check`); the
default margin is far above it, for the holder's own scheduling delays.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftcp.errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """The timing of one application's lease, in seconds (see the module docstring)."""

    duration: float = 0.100  # a grant or renewal lasts this long
    margin: float = 0.020  # the logger waits this much more before lending it again
    guard: float = 0.030  # the holder starts giving up this long before its lease ends
    heartbeat: float = 0.020  # the holder renews this often
    drift: float = 0.001  # clock rates differ from real time by at most this (1000 ppm)

    def check(self) -> None:
        """Refuse terms under which two holders could overlap, or a holder that renews
        on time could lose its lease."""
        need = 2 * self.drift * self.duration / (1 - self.drift)
        if not (self.duration > 0 and 0 <= self.drift < 0.1):
            raise LocalProtocolError(f"lease terms out of range: {self}")
        if self.margin < need:
            raise LocalProtocolError(
                f"lease margin {self.margin:g} s is below {need:g} s: with clocks "
                f"{self.drift:g} apart, two holders could overlap"
            )
        if not 0 < self.guard < self.duration:
            raise LocalProtocolError(f"lease guard {self.guard:g} s must lie inside the lease")
        if not 0 < self.heartbeat < self.duration - self.guard:
            raise LocalProtocolError(
                f"heartbeat {self.heartbeat:g} s leaves no renewal before the guard"
            )

    @property
    def detection(self) -> float:
        """Longest time from a holder's last renewal to the logger lending the lease
        again: what a failure takes to detect."""
        return self.duration + self.margin


# --------------------------------------------------------------------- the logger


@dataclass(frozen=True, slots=True)
class Granted:
    """`holder` holds the lease in `epoch` until `until` (the logger's clock)."""

    holder: str
    epoch: int
    until: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Someone else holds the lease: ask again at `at` (it may be lent then)."""

    holder: str
    at: float


@dataclass(frozen=True, slots=True)
class Fenced:
    """`epoch` is over (another epoch was lent, or it expired): nothing of it counts."""

    epoch: int
    current: int
    why: str


class LeaseBook:
    """The logger's lease of one application.

    `epoch` is the last one lent (0: never); the caller stores it durably before
    it tells anyone of a grant, and gives it back to a new book after a restart,
    with `now`: the holder of that epoch (unknown now) may still hold it a full
    `duration`, so it is lent to no one else before then; the holder may renew it.
    """

    __slots__ = ("terms", "epoch", "holder", "until")

    def __init__(self, terms: LeaseTerms, epoch: int = 0, now: float | None = None) -> None:
        self.terms = terms
        self.epoch = epoch
        self.holder: str | None = None  # None: nobody, or not known (after a restart)
        self.until = float("-inf")  # the holder's lease ends here (logger clock)
        if epoch and now is not None:
            self.until = now + terms.duration

    def free_at(self) -> float:
        """When the lease may be lent to someone other than its holder."""
        return self.until + self.terms.margin

    def acquire(self, who: str, now: float) -> Granted | Wait:
        """`who` asks for the lease (a new epoch each time it changes hands, and each
        time its holder lost it and asks again)."""
        if self.holder == who and now <= self.until:
            return self.renew_held(now)
        if self.holder != who and now < self.free_at():
            return Wait(self.holder or "", self.free_at())
        self.epoch += 1
        self.holder = who
        self.until = now + self.terms.duration
        return Granted(who, self.epoch, self.until)

    def renew(self, who: str, epoch: int, now: float) -> Granted | Fenced:
        """A heartbeat of `who` in `epoch` (after a restart, the first renewal of the
        current epoch makes its sender the known holder)."""
        if epoch != self.epoch or (self.holder is not None and who != self.holder):
            return Fenced(epoch, self.epoch, "another epoch was lent")
        if now > self.until:
            return Fenced(epoch, self.epoch, "the lease expired before this renewal")
        self.holder = who
        return self.renew_held(now)

    def renew_held(self, now: float) -> Granted:
        assert self.holder is not None
        self.until = max(self.until, now + self.terms.duration)
        return Granted(self.holder, self.epoch, self.until)

    def release(self, who: str, epoch: int) -> None:
        """The holder gives the lease up (a clean stop): it may be lent at once."""
        if who == self.holder and epoch == self.epoch:
            self.holder = None
            self.until = float("-inf")

    def admits(self, epoch: int) -> bool:
        """Records and heartbeats of `epoch` count (the current epoch only)."""
        return epoch == self.epoch


# --------------------------------------------------------------------- the holder


class LeaseHolder:
    """A supervisor's view of its own lease (its own clock)."""

    __slots__ = ("terms", "epoch", "until", "_asked_at", "_last_sent")

    def __init__(self, terms: LeaseTerms) -> None:
        self.terms = terms
        self.epoch = 0  # 0: not held
        self.until = float("-inf")  # the lease ends here, on this host's clock
        self._asked_at: dict[int, float] = {}  # request number -> when it was sent
        self._last_sent = float("-inf")

    @property
    def held(self) -> bool:
        return self.epoch != 0

    def sent(self, req: int, now: float) -> None:
        """Request (or renewal) `req` left at `now`."""
        self._asked_at[req] = now
        self._last_sent = now

    def granted(self, req: int, epoch: int) -> None:
        """The logger answered request `req` with a grant in `epoch`."""
        sent = self._asked_at.pop(req, None)
        for r in [r for r in self._asked_at if r < req]:
            del self._asked_at[r]  # older requests: their answers would say less
        if sent is None:
            return
        if self.held and epoch != self.epoch:
            raise LocalProtocolError(
                f"lease epoch changed under its holder: {self.epoch} -> {epoch}"
            )
        self.epoch = epoch
        self.until = max(self.until, sent + self.terms.duration)

    def give_up_at(self) -> float:
        """When to start giving up (stop acknowledging, remove the address)."""
        return self.until - self.terms.guard

    def renew_due(self, now: float) -> bool:
        return self.held and now - self._last_sent >= self.terms.heartbeat

    def lost(self, now: float) -> bool:
        """Past the point where it must give up: it holds nothing any more."""
        return self.held and now >= self.give_up_at()

    def drop(self) -> None:
        """Given up (or fenced): a new `granted` is needed, in a new epoch."""
        self.epoch = 0
        self.until = float("-inf")
        self._asked_at.clear()
