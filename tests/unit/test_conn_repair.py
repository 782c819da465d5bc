"""`--restore repair` in the core: handshake only to wake accept, then no translation."""

from __future__ import annotations

import dataclasses

import pytest
from test_conn import S_OPTS, _log, crashed, cseg, eff, of, sseg

from ftcp.core import seq
from ftcp.core.conn import State
from ftcp.core.events import (
    ACK,
    FIN,
    SYN,
    Deliver,
    Direction,
    Drop,
    Fabricate,
    ProcessDied,
    Rebuild,
    Repaired,
    ReplayDone,
    Timer,
)
from ftcp.core.records import ReadKind, ReadResult, SynOptions
from ftcp.core.replay import plan_recovery
from ftcp.errors import LocalProtocolError

NEW_OPTS = SynOptions(mss=100, wscale=4, sack_ok=True, ts_val=77, ts_ecr=1000)


def _awaiting(c_isn: int = 1000, s_isn: int = 9000):  # type: ignore[no-untyped-def]
    c = crashed(c_isn=c_isn, s_isn=s_isn)
    base = seq.add(c_isn, 1)
    plan = plan_recovery(
        _log(c, b"hello world", [ReadResult(7, 0, ReadKind.DATA, 11)]), **c.recovery_hints(2.0)
    )
    c.handle(Rebuild(2.0, plan, repair=True))
    assert c.state is State.REPLAY_SYN_SENT and not c.awaiting_repair
    sa = sseg(123456, base, SYN | ACK, window=8, syn_opts=NEW_OPTS, ts_val=77, now=2.1)
    acts = c.handle(sa)
    assert of(acts, Drop)[0].ident == sa.ident
    (third,) = [a.segment for a in of(acts, Fabricate)]  # no refill into this socket
    assert (third.seq, third.ack, third.flags) == (base, 123457, ACK)
    assert c.state is State.REPLAY_SYN_SENT and c.awaiting_repair
    return c, plan


@pytest.mark.parametrize(("c_isn", "s_isn"), [(1000, 9000), (seq.MASK - 3, seq.MASK - 2)])
def test_repair_spec_and_no_translation(c_isn: int, s_isn: int) -> None:
    c, plan = _awaiting(c_isn, s_isn)
    base = seq.add(c_isn, 1)
    timer = of(c.handle(Timer(2.0 + c.syn_rto)), Fabricate)  # no SYN sent again
    assert all(f.direction is Direction.TO_CLIENT for f in timer)
    spec = c.repair_spec(2.2)
    assert spec.rcv_seq == base and spec.instream == b"hello world"
    assert spec.snd_seq == seq.add(s_isn, 7)  # s_isn + 1 + discard (6 acked bytes)
    assert (spec.mss, spec.snd_wscale, spec.rcv_wscale) == (1460, 7, 2)  # as negotiated
    assert spec.sack_ok and spec.ts_ok and seq.gt(spec.ts_val, 5400)  # past what the client saw
    acts = c.handle(Repaired(2.3, rcv_nxt=seq.add(base, 11), rcv_wnd=5000))
    assert not of(acts, Fabricate)  # everything was queued: nothing to refill
    assert c.state is State.REPLAYING and c.delta_seq == 0 and c.ts_off == 0
    # outbound: nothing rewritten (same seq, same scale, TSval from the repaired clock)
    k = sseg(spec.snd_seq, seq.add(base, 11), plen=5, window=100, now=2.4, ts_val=spec.ts_val)
    (d,) = of(c.handle(k), Deliver)
    assert d.rewrite is None
    # inbound: the client's ack and SACK pass unchanged
    s = cseg(seq.add(base, 11), seq.add(s_isn, 9), ts_val=1200, ts_ecr=spec.ts_val)
    (d2,) = of(c.handle(s), Deliver)
    assert eff(d2, s, "ack") == seq.add(s_isn, 9) and d2.rewrite is None
    c.handle(ReplayDone(2.5))
    assert c.state is State.ESTABLISHED


def test_repair_partial_fill_is_refilled_and_fin_injected() -> None:
    c, plan = _awaiting()
    plan2 = plan_recovery(
        _log(c, b"hello world", [ReadResult(7, 0, ReadKind.DATA, 11)]), **c.recovery_hints(2.0)
    )
    assert plan2.instream == plan.instream
    acts = c.handle(Repaired(2.3, rcv_nxt=1001 + 4, rcv_wnd=100))
    segs = [a.segment for a in of(acts, Fabricate)]
    assert [(s.seq, s.payload) for s in segs] == [(1005, b"o world")]
    assert segs[0].ack == 9007  # the repaired kernel's snd_una: no translation


def test_repair_failure_falls_back_to_translation() -> None:
    c, plan = _awaiting()
    acts = c.handle(Repaired(2.3, ok=False))
    segs = [a.segment for a in of(acts, Fabricate)]
    assert [s.payload for s in segs] == [b"hello wo"]  # refill into the handshake socket
    assert not any(a.flags & SYN for a in segs)
    assert not of(acts, Drop)
    assert c.state is State.REPLAYING
    assert c.delta_seq == (9000 + 6 - 123456) & seq.MASK and c.k_wscale == NEW_OPTS.wscale


def test_repair_synack_again_gets_the_third_ack_again() -> None:
    c, _ = _awaiting()
    acts = c.handle(sseg(123456, 1001, SYN | ACK, window=8, syn_opts=NEW_OPTS, now=2.2))
    assert [a.segment.flags for a in of(acts, Fabricate)] == [ACK]
    assert c.state is State.REPLAY_SYN_SENT


def test_repair_spec_needs_a_pending_repair() -> None:
    c = crashed()
    with pytest.raises(LocalProtocolError, match="no repair pending"):
        c.repair_spec(2.0)


def test_death_while_awaiting_repair_and_again() -> None:
    c, plan = _awaiting()
    c.handle(ProcessDied(3.0))
    assert c.state is State.CRASHED and not c.awaiting_repair
    c.handle(Rebuild(4.0, plan, repair=True))
    c.handle(sseg(900, 1001, SYN | ACK, window=8, syn_opts=S_OPTS, now=4.1))
    assert c.awaiting_repair
    c.handle(Repaired(4.2, rcv_nxt=1012, rcv_wnd=100))
    assert c.state is State.REPLAYING and c.delta_seq == 0


def test_logged_client_fin_is_injected_after_repair() -> None:
    c = crashed()
    c.handle(cseg(1012, 9007, FIN | ACK, now=1.1))
    log = _log(c, b"hello world")
    log = dataclasses.replace(log, client_fin=True)
    plan = plan_recovery(log)
    c.handle(Rebuild(2.0, plan, repair=True))
    c.handle(sseg(500, 1001, SYN | ACK, window=8, syn_opts=S_OPTS, now=2.1))
    acts = c.handle(Repaired(2.3, rcv_nxt=1012, rcv_wnd=100))
    (fin,) = [a.segment for a in of(acts, Fabricate)]
    assert fin.flags & FIN and fin.seq == 1012 and not fin.payload
