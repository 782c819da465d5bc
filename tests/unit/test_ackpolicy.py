"""Ack strategies (paper IV-F) on scripted exchanges: each one's decisions, and that
no two strategies behave alike."""

from __future__ import annotations

import pytest
from test_conn import cseg, established, of, sseg

from ftcp.core import seq
from ftcp.core.ackpolicy import POLICIES, Conditional, Eager, make_policy
from ftcp.core.events import ACK, PSH, Deliver, Fabricate, Hold, LoggerAck

NAMES = ("basic", "lazy", "eager", "conditional")


def acks_to_client(actions) -> list[tuple[str, int]]:
    """(kind, ack number) of everything that reaches the client, in order."""
    out = []
    for a in actions:
        if isinstance(a, Deliver):
            out.append(("deliver", a.rewrite.ack if a.rewrite and a.rewrite.ack else None))
        elif isinstance(a, Fabricate):
            out.append(("fabricate", a.segment.ack))
    return out


def script_kernel_acks_first(name: str) -> tuple[list, list]:
    """S arrives, the kernel acks it (pure ack) before the logger has it, then the logger
    acknowledges S. Returns (actions at the kernel ack, actions at the logger ack)."""
    c = established(policy=make_policy(name))
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    at_kernel = c.handle(sseg(9001, 1011))
    at_logger = c.handle(LoggerAck(0.0, 1011))
    return at_kernel, at_logger


def script_logger_first(name: str) -> list:
    """The logger acknowledges S before the kernel tried to ack it."""
    c = established(policy=make_policy(name))
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    return c.handle(LoggerAck(0.0, 1011))


def script_packet_in_between(name: str) -> list:
    """The kernel tried to ack S, but another client packet arrived before S was logged."""
    c = established(policy=make_policy(name))
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    c.handle(sseg(9001, 1011))
    c.handle(cseg(1011, 9001))  # a pure ack from the client (e.g. a window update)
    return c.handle(LoggerAck(0.0, 1011))


def script_data_segment(name: str) -> list:
    """The server sends data carrying an ack of unlogged bytes."""
    c = established(policy=make_policy(name))
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    return c.handle(sseg(9001, 1011, ACK | PSH, plen=20))


def test_basic_clamps_only() -> None:
    k, lg = script_kernel_acks_first("basic")
    assert acks_to_client(k) == [("deliver", 1001)]  # clamped, immediately
    assert acks_to_client(lg) == []  # the client learns nothing until the next segment
    assert acks_to_client(script_logger_first("basic")) == []


def test_lazy_holds_pure_acks_until_logged() -> None:
    k, lg = script_kernel_acks_first("lazy")
    assert of(k, Hold) and acks_to_client(k) == []
    assert acks_to_client(lg) == [("deliver", None)]  # released unclamped
    # data-carrying segments are clamped and delivered at once
    assert acks_to_client(script_data_segment("lazy")) == [("deliver", 1001)]
    assert acks_to_client(script_logger_first("lazy")) == []


def test_eager_acks_every_logger_acknowledgement() -> None:
    k, lg = script_kernel_acks_first("eager")
    assert acks_to_client(k) == [("deliver", 1001)]
    assert acks_to_client(lg) == [("fabricate", 1011)]
    assert acks_to_client(script_logger_first("eager")) == [("fabricate", 1011)]
    assert acks_to_client(script_packet_in_between("eager")) == [("fabricate", 1011)]


def test_conditional_only_when_tcp_tried_and_nothing_arrived() -> None:
    k, lg = script_kernel_acks_first("conditional")
    assert acks_to_client(k) == [("deliver", 1001)]
    assert acks_to_client(lg) == [("fabricate", 1011)]
    assert acks_to_client(script_logger_first("conditional")) == []  # TCP had not tried
    assert acks_to_client(script_packet_in_between("conditional")) == []  # a packet arrived


def signature(name: str) -> tuple[int, ...]:
    k, lg = script_kernel_acks_first(name)
    return (
        len(acks_to_client(k)),
        len(acks_to_client(lg)),
        len(of(k, Hold)),
        len(acks_to_client(script_logger_first(name))),
        len(acks_to_client(script_packet_in_between(name))),
        len(acks_to_client(script_data_segment(name))),
    )


def test_no_two_strategies_behave_alike() -> None:
    sigs = {name: signature(name) for name in NAMES}
    assert len(set(sigs.values())) == len(NAMES), sigs


def test_fabricated_window_keeps_the_kernel_edge() -> None:
    c = established(policy=Eager())
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    c.handle(sseg(9001, 1011, window=25))  # edge 1011 + 25 * 4 (scale 2) = 1111
    (f,) = of(c.handle(LoggerAck(0.0, 1011)), Fabricate)
    assert f.segment.ack == 1011 and f.segment.window == 25
    assert f.segment.seq == 9001 and f.segment.ts_val is not None


def test_eager_never_acks_beyond_what_the_kernel_holds() -> None:
    c = established(policy=Eager())
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    c.handle(cseg(1021, 9001, ACK | PSH, b"y" * 10))  # out of order: the kernel may drop it
    c.handle(LoggerAck(0.0, 1011))
    acts = c.handle(cseg(1011, 9001, ACK | PSH, b"z" * 10))  # fills the hole
    assert not of(acts, Fabricate)
    (f,) = of(c.handle(LoggerAck(0.0, 1031)), Fabricate)
    assert f.segment.ack == 1021  # 1021..1031 arrived early and may be gone


def test_conditional_uses_the_last_covered_packet() -> None:
    p = Conditional()
    from ftcp.core.ackpolicy import AckView

    p.note_client_packet(1, 1010)
    p.note_client_packet(2, 1020)
    view = AckView(
        kernel_ack=1020, delivered_ack=1000, kernel_has=1020, right_edge=2000, ip_packets=2
    )
    assert p.on_stable(view, 1000, 1020) == 1020
    p.note_client_packet(3, 1030)
    view = AckView(
        kernel_ack=1030, delivered_ack=1020, kernel_has=1030, right_edge=2000, ip_packets=3
    )
    assert p.on_stable(view, 1020, 1025) is None  # S (ends 1030) is not covered yet


def test_conditional_acks_a_hole_filled_by_a_retransmission() -> None:
    # 1001..1011 is lost on the way; 1011..1031 arrives, then the client's retransmission
    # fills the hole and the kernel acks all of it (clamped: nothing is logged yet). The
    # logger's acknowledgement covers the three packets; the one that arrived last is the
    # retransmission, TCP tried to ack it and nothing came after it: Conditional acks.
    # (It used to pick the covered packet with the highest sequence number, which arrived
    # before the retransmission, and stay silent: on 10-shared the client then waited for
    # its RTO and resent bytes the server had, D-SACKed, for 0.3-1.6 s at a time.)
    c = established(policy=Conditional())
    c.handle(cseg(1011, 9001, ACK | PSH, b"y" * 10))
    c.handle(cseg(1021, 9001, ACK | PSH, b"z" * 10))
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    assert acks_to_client(c.handle(sseg(9001, 1031))) == [("deliver", 1001)]
    (f,) = of(c.handle(LoggerAck(0.0, 1031)), Fabricate)
    assert f.segment.ack == 1031


def test_conditional_acks_when_tcp_answered_the_packets_past_a_hole() -> None:
    # S is logged; the client's next packet lies past a hole (1011..1021 lost) and the
    # kernel answered it (a duplicate ack, clamped). No logger acknowledgement covers
    # it until the hole is filled, and the kernel will not ack again: Conditional
    # acks S. (It used to wait: the client, its window spent, waited for its RTO.)
    c = established(policy=Conditional())
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    c.handle(sseg(9001, 1011))
    c.handle(cseg(1021, 9001, ACK | PSH, b"z" * 10))
    c.handle(sseg(9001, 1011))  # the kernel's duplicate ack (its SACK names 1021..1031)
    (f,) = of(c.handle(LoggerAck(0.0, 1011)), Fabricate)
    assert f.segment.ack == 1011


def test_conditional_leaves_an_in_order_later_packet_to_its_own_logging() -> None:
    # no loss: S is logged while the next packet, in order and already acked (clamped)
    # by the kernel, is not yet; that packet's own logging will trigger, as the paper's
    # rule has it, so S's does not (else Conditional acks as often as Eager)
    c = established(policy=Conditional())
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    c.handle(sseg(9001, 1011))
    c.handle(cseg(1011, 9001, ACK | PSH, b"y" * 10))
    c.handle(sseg(9001, 1021))
    assert not of(c.handle(LoggerAck(0.0, 1011)), Fabricate)
    (f,) = of(c.handle(LoggerAck(0.0, 1021)), Fabricate)
    assert f.segment.ack == 1021


def test_conditional_waits_while_a_later_arrival_is_unlogged() -> None:
    # the same, but the retransmission is not yet covered: a later arrival is pending,
    # so the covered packets' acknowledgement fabricates nothing
    c = established(policy=Conditional())
    c.handle(cseg(1011, 9001, ACK | PSH, b"y" * 10))
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 10))
    c.handle(sseg(9001, 1021))
    c.handle(cseg(1021, 9001, ACK | PSH, b"z" * 10))  # arrives after the kernel's ack
    assert not of(c.handle(LoggerAck(0.0, 1021)), Fabricate)


@pytest.mark.parametrize("name", NAMES)
def test_strategies_across_the_wrap(name: str) -> None:
    c = established(c_isn=seq.MASK - 4, s_isn=seq.MASK, policy=make_policy(name))
    base = seq.add(seq.MASK - 4, 1)
    c.handle(cseg(base, 0, ACK | PSH, b"x" * 10))
    c.handle(sseg(0, seq.add(base, 10)))
    acts = c.handle(LoggerAck(0.0, seq.add(base, 10)))
    for _kind, ack in acks_to_client(acts):
        assert ack is None or seq.le(ack, c.ack_limit)
    assert seq.le(c.delivered_ack, c.ack_limit)


def test_make_policy() -> None:
    assert set(POLICIES) == set(NAMES)
    assert make_policy("lazy").name == "lazy"
    with pytest.raises(ValueError, match="unknown ack strategy"):
        make_policy("sloppy")


def test_kernel_acks_behind_a_fabricated_one_go_on_unchanged() -> None:
    """Eager acked the logged bytes itself; the kernel's own (older) acks of them still
    reach the client as they are (only a rebuilt kernel's refill changes old acks)."""
    c = established(policy=make_policy("eager"))
    c.handle(cseg(1001, 9001, ACK | PSH, b"x" * 20))
    assert of(c.handle(LoggerAck(0.0, 1021)), Fabricate)  # the client is acked 1021
    k = sseg(9001, 1011, window=100)  # the kernel acks the first half only
    (d,) = of(c.handle(k), Deliver)
    assert d.rewrite is None or d.rewrite.ack is None  # its own ack, not 1021
