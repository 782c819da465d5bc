"""Ack strategies of paper section IV-F: Basic, Lazy, Eager, Conditional.

Every strategy clamps (invariant 1 is enforced by `Connection`, not here);
they differ in two decisions the connection asks them about:

* `should_hold`: may a segment from the server's TCP whose ack the clamp would
  lower be delivered clamped now, or is it held until the logger catches up?
  (Lazy holds pure acks; the others never hold.)
* `on_stable`: the logger acknowledgement moved the ack limit from `old` to
  `new`; should SSW fabricate an ack toward the client, and with which ack
  number? (Eager: on every such acknowledgement; Conditional: only when the
  server's TCP already tried to ack the newly logged packet S and no packet
  arrived from IP since S; Basic and Lazy: never.)

A strategy sees the connection through `AckView` (read-only numbers) and
returns decisions; it never builds segments.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from ftcp.core import seq


@dataclass(frozen=True, slots=True)
class AckView:
    """What a strategy may look at when the ack limit advances.

    `kernel_ack`: highest ack the server's TCP has put on a segment (None: none yet).
    `delivered_ack`: highest ack the client has been sent.
    `kernel_has`: end of the instream prefix SSW handed to the server's TCP in order,
    or that TCP acknowledged (an ack beyond it would acknowledge bytes the server's
    TCP may not hold).
    `right_edge`: the server TCP's latest right window edge (None: unknown).
    `ip_packets`: client packets seen from IP so far (a counter).
    `kernel_ack_packets`: `ip_packets` when the server's TCP last put an ack on a
    segment (equal to `ip_packets`: it has answered every packet that came).
    """

    kernel_ack: int | None
    delivered_ack: int
    kernel_has: int
    right_edge: int | None
    ip_packets: int
    kernel_ack_packets: int = 0


class AckPolicy:
    """Basic: clamp only. Base class of the others."""

    name: ClassVar[str] = "basic"

    def note_client_packet(self, count: int, data_end: int | None) -> None:
        """A client packet arrived from IP; `count` is `AckView.ip_packets` after it;
        `data_end` is the end of its data (payload + FIN), None if it carries none."""

    def should_hold(self, kernel_ack: int, ack_limit: int, pure_ack: bool) -> bool:
        """Hold this server segment instead of delivering it clamped?"""
        return False

    def may_release(self, kernel_ack: int, ack_limit: int) -> bool:
        """May a held segment go now? (It then needs no clamp.)"""
        return seq.le(kernel_ack, ack_limit)

    def on_stable(self, view: AckView, old: int, new: int) -> int | None:
        """The ack limit advanced `old -> new`: the ack to fabricate, or None."""
        return None

    def reset(self) -> None:
        """Forget per-kernel state (the server's TCP was replaced)."""


class Basic(AckPolicy):
    name: ClassVar[str] = "basic"


class Lazy(AckPolicy):
    """Data segments are clamped and delivered; pure acks wait for the logger."""

    name: ClassVar[str] = "lazy"

    def should_hold(self, kernel_ack: int, ack_limit: int, pure_ack: bool) -> bool:
        return pure_ack and seq.gt(kernel_ack, ack_limit)


def _fabricable(view: AckView, ack: int) -> int | None:
    """Cap `ack` to what the server's TCP holds and can hold; None if not news.

    A fabricated ack beyond bytes the server's TCP actually took would make the
    client drop them for good (they are logged, but no one would re-send them
    to the server): so never past the in-order prefix SSW handed over, nor past
    the server TCP's right window edge.
    """
    ack = seq.min_(ack, view.kernel_has)
    if view.right_edge is not None:
        ack = seq.min_(ack, view.right_edge)
    return ack if seq.gt(ack, view.delivered_ack) else None


class Eager(AckPolicy):
    """Fabricate an ack on every logger acknowledgement that advances the limit."""

    name: ClassVar[str] = "eager"

    def on_stable(self, view: AckView, old: int, new: int) -> int | None:
        return _fabricable(view, new)


class Conditional(AckPolicy):
    """Fabricate only if TCP already tried to ack S and no packet arrived since S.

    S is the data-carrying client packet that arrived last among those the
    acknowledgement covers (the paper: only the last acknowledgement of a batch can
    trigger). After a loss that is the retransmission that filled the hole, not
    the packet with the highest sequence number (which arrived before it).

    "No packet arrived since S" is there because TCP's next ack, or the logger's
    acknowledgement of the later packet, will carry the news. Neither comes for data
    past a hole that TCP has already answered (its acks went out clamped, and no
    logger acknowledgement covers that data until the hole is filled): when TCP has
    answered every packet that came and holds nothing in order past the logged
    prefix, Conditional acks (otherwise the client, its window spent, waits for its
    RTO and resends bytes the server has).
    """

    name: ClassVar[str] = "conditional"

    def __init__(self) -> None:
        self._pending: deque[tuple[int, int]] = deque()  # (data_end, count at arrival)

    def note_client_packet(self, count: int, data_end: int | None) -> None:
        if data_end is not None:
            self._pending.append((data_end, count))

    def on_stable(self, view: AckView, old: int, new: int) -> int | None:
        last: tuple[int, int] | None = None
        keep: deque[tuple[int, int]] = deque()
        for end, count in self._pending:  # in arrival order
            if seq.le(end, new):
                last = (end, count)
            else:
                keep.append((end, count))
        self._pending = keep
        if last is None:
            return None
        end, count = last
        if view.kernel_ack is None or seq.lt(view.kernel_ack, end):  # TCP has not tried
            return None
        if view.ip_packets != count and (  # something arrived from IP since S
            view.kernel_ack_packets != view.ip_packets  # TCP has yet to answer it
            or seq.gt(view.kernel_ack, new)  # in order: the logger covers it next
        ):
            return None
        if seq.ge(view.delivered_ack, end):  # the client already has this ack
            return None
        return _fabricable(view, seq.min_(new, view.kernel_ack))

    def reset(self) -> None:
        self._pending.clear()


POLICIES: dict[str, type[AckPolicy]] = {p.name: p for p in (Basic, Lazy, Eager, Conditional)}


def make_policy(name: str) -> AckPolicy:
    """A fresh strategy by its `--ack-strategy` name."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown ack strategy {name!r} (choose from {', '.join(POLICIES)})"
        ) from None
