"""The FT connection core: transitions, invariants 1-4, recovery translation."""

from __future__ import annotations

import inspect
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftcp.core import conn as conn_mod
from ftcp.core import seq
from ftcp.core.ackpolicy import Basic, Lazy
from ftcp.core.conn import TRANSITIONS, Connection, State, clamp_ack_window
from ftcp.core.events import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    ClientSegment,
    CloseReported,
    Deliver,
    Direction,
    Drop,
    Fabricate,
    Finish,
    Hold,
    Log,
    LoggerAck,
    ProcessDied,
    ReadReported,
    Rebuild,
    ReplayDone,
    ResetClient,
    ServerSegment,
    StartRecovery,
    Timer,
)
from ftcp.core.records import (
    Close,
    CloseHow,
    ConnectionLog,
    Finished,
    Handshake,
    InSegment,
    ReadKind,
    ReadResult,
    SynOptions,
)
from ftcp.core.replay import plan_recovery
from ftcp.errors import LocalProtocolError, RemoteProtocolError

_ids = itertools.count(1)

C_OPTS = SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1000, ts_ecr=0)
S_OPTS = SynOptions(mss=1400, wscale=2, sack_ok=True, ts_val=5000, ts_ecr=1000)


def cseg(sq: int, ack: int, flags: int = ACK, payload: bytes = b"", now: float = 0.0, **kw):
    return ClientSegment(
        next(_ids), now, sq, ack, flags, kw.pop("window", 500), payload=payload, **kw
    )


def sseg(
    sq: int, ack: int, flags: int = ACK, plen: int = 0, window: int = 100, now: float = 0.0, **kw
):
    return ServerSegment(next(_ids), now, sq, ack, flags, window, payload_len=plen, **kw)


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def eff(d: Deliver, s, name: str):
    """The value a field has after delivery (rewritten or unchanged)."""
    v = getattr(d.rewrite, name) if d.rewrite is not None else None
    return getattr(s, name) if v is None else v


def established(
    c_isn: int = 1000,
    s_isn: int = 9000,
    policy=None,
    c_opts: SynOptions = C_OPTS,
    s_opts: SynOptions = S_OPTS,
) -> Connection:
    """A connection right after the handshake (SYN-ACK released, client acked it)."""
    c = Connection(7, client=("10.0.0.1", 5555), server=("10.0.0.2", 80), policy=policy)
    c.handle(cseg(c_isn, 0, SYN, syn_opts=c_opts, ts_val=c_opts.ts_val))
    c.handle(sseg(s_isn, seq.add(c_isn, 1), SYN | ACK, window=65535, syn_opts=s_opts))
    c.handle(LoggerAck(0.0, seq.add(c_isn, 1), handshake=True))
    c.handle(cseg(seq.add(c_isn, 1), seq.add(s_isn, 1), ts_val=1001, ts_ecr=5000))
    assert c.state is State.ESTABLISHED
    return c


# --------------------------------------------------------------------------- the table


def test_every_state_has_a_row_and_targets_are_states() -> None:
    assert set(TRANSITIONS) == set(State)
    for row in TRANSITIONS.values():
        assert all(isinstance(s, State) for s in row.values())


def test_state_changes_only_in_set_state() -> None:
    src = inspect.getsource(conn_mod)
    assignments = [ln.strip() for ln in src.splitlines() if "self.state = " in ln]
    assert assignments == ["self.state = State.LISTEN", "self.state = new"]


def test_handshake_trace() -> None:
    c = established()
    assert c.trace == [
        "LISTEN => SYN_RECEIVED",
        "SYN_RECEIVED => SYN_RCVD_UNLOGGED",
        "SYN_RCVD_UNLOGGED => ESTABLISHED",
    ]


def test_input_without_transition_names_state_and_input() -> None:
    c = Connection(1)
    with pytest.raises(LocalProtocolError, match=r"LISTEN on SERVER_SEGMENT \(ServerSegment\)"):
        c.handle(sseg(1, 2))
    e = established()
    with pytest.raises(LocalProtocolError, match="ESTABLISHED on REBUILD"):
        e.handle(Rebuild(0.0, object()))
    with pytest.raises(LocalProtocolError, match="ESTABLISHED on REPLAY_DONE"):
        e.handle(ReplayDone(0.0))


# ----------------------------------------------------------------- invariant 2: handshake


def test_synack_held_until_handshake_logged() -> None:
    c = Connection(3, client=("1.1.1.1", 1), server=("2.2.2.2", 80), accept_order=4)
    acts = c.handle(cseg(500, 0, SYN, syn_opts=C_OPTS))
    assert of(acts, Deliver) and c.state is State.SYN_RECEIVED
    sa = sseg(77, 501, SYN | ACK, syn_opts=S_OPTS)
    acts = c.handle(sa)
    assert of(acts, Hold) == [Hold(sa.ident, "handshake not logged yet")]
    (rec,) = [a.record for a in of(acts, Log)]
    assert rec == Handshake(3, 4, "1.1.1.1", 1, "2.2.2.2", 80, 500, 77, C_OPTS, S_OPTS)
    # a watermark alone does not release it; a retransmitted SYN-ACK replaces it
    assert not of(c.handle(LoggerAck(0.0, 501)), Deliver)
    sa2 = sseg(77, 501, SYN | ACK, syn_opts=S_OPTS)
    acts = c.handle(sa2)
    assert of(acts, Drop)[0].ident == sa.ident and of(acts, Hold)[0].ident == sa2.ident
    acts = c.handle(LoggerAck(0.0, 501, handshake=True))
    assert acts == [Deliver(sa2.ident)]
    assert c.state is State.ESTABLISHED


def test_crash_before_handshake_logged_abandons() -> None:
    c = Connection(3)
    c.handle(cseg(500, 0, SYN))
    sa = sseg(77, 501, SYN | ACK)
    c.handle(sa)
    acts = c.handle(ProcessDied(1.0))
    assert Drop(sa.ident, "process died before the handshake completed") in acts
    assert Log(Finished(3)) in acts
    assert c.state is State.CLOSED


def test_server_reset_during_handshake_is_dropped() -> None:
    c = Connection(3)
    c.handle(cseg(500, 0, SYN))
    rst = sseg(0, 501, RST | ACK)
    acts = c.handle(rst)
    assert of(acts, Drop)[-1].ident == rst.ident and not of(acts, Deliver)
    assert c.state is State.CLOSED


# ------------------------------------------------------------------ logging of the instream


def test_every_client_segment_is_logged() -> None:
    c = established()
    s = cseg(1001, 9001, ACK | PSH | FIN, b"abc", ts_val=1010, ts_ecr=5001, window=321)
    acts = c.handle(s)
    assert Log(InSegment(7, 1001, 9001, 321, True, 1010, 5001, b"abc")) in acts
    assert acts[-1] == Deliver(s.ident)
    pure = cseg(1005, 9001)
    assert of(c.handle(pure), Log)


def test_client_payload_required() -> None:
    c = established()
    s = ClientSegment(1, 0.0, 1001, 9001, ACK, 100, payload_len=5)
    with pytest.raises(LocalProtocolError, match="without its payload"):
        c.handle(s)


def test_logger_ack_beyond_client_data_is_remote_error() -> None:
    c = established()
    c.handle(cseg(1001, 9001, payload=b"abcd"))
    with pytest.raises(RemoteProtocolError):
        c.handle(LoggerAck(0.0, 1010))


# ------------------------------------------------------------------- invariant 1: clamping


def test_ack_clamped_window_widened() -> None:
    c = established()
    c.handle(cseg(1001, 9001, payload=b"x" * 100))
    # kernel acks all 100 bytes, window 50 units of 4 (its scale is 2): edge 1101 + 200
    s = sseg(9001, 1101, window=50)
    (d,) = of(c.handle(s), Deliver)
    assert d.rewrite is not None
    assert d.rewrite.ack == 1001 and d.rewrite.window == 75  # (1301 - 1001) >> 2
    assert d.rewrite.seq is None and d.rewrite.ts_val is None
    c.handle(LoggerAck(0.0, 1101))
    (d,) = of(c.handle(sseg(9001, 1101, window=50)), Deliver)
    assert d.rewrite is None  # nothing to change: the I/O layer accepts without touching bytes


def test_fin_logged_raises_ack_limit_by_one() -> None:
    c = established()
    c.handle(cseg(1001, 9001, ACK | FIN, b"ab"))
    c.handle(LoggerAck(0.0, 1003, fin=False))
    (d,) = of(c.handle(sseg(9001, 1004)), Deliver)
    assert d.rewrite is not None and d.rewrite.ack == 1003
    c.handle(LoggerAck(0.0, 1003, fin=True))
    assert c.ack_limit == 1004
    (d,) = of(c.handle(sseg(9001, 1004)), Deliver)
    assert d.rewrite is None


@pytest.mark.parametrize("policy", [Basic, Lazy])
def test_logged_client_fin_is_acked_once_even_if_the_kernel_ack_went_out_clamped(
    policy: type,
) -> None:
    """Server closed first: the kernel's ack of the client's FIN was its last segment."""
    c = established(policy=policy())
    c.handle(CloseReported(0.0, CloseHow.CLOSE))
    c.handle(sseg(9001, 1001, ACK | FIN))
    c.handle(cseg(1001, 9002, ACK | FIN))
    c.handle(sseg(9002, 1002))  # clamped (Basic) or held (Lazy)
    acts = c.handle(LoggerAck(0.0, 1001, fin=True))
    acked = [a.segment.ack for a in of(acts, Fabricate) if a.direction is Direction.TO_CLIENT]
    acked += [eff(d, sseg(9002, 1002), "ack") for d in of(acts, Deliver)]
    assert acked == [1002]
    assert not of(c.handle(LoggerAck(0.0, 1001, fin=True)), Fabricate)


u32 = st.integers(0, seq.MASK)
scales = st.integers(0, 14)


@given(u32, st.integers(0, 0xFFFF), scales, st.integers(0, 1 << 20), scales)
def test_clamp_ack_window_guarantees(k: int, w: int, ks: int, lag: int, cs: int) -> None:
    limit = seq.add(k, -lag)
    ack, win = clamp_ack_window(k, w, ks, limit, cs)
    edge_k = seq.add(k, w << ks)
    edge = seq.add(ack, win << cs)
    assert seq.le(ack, limit) and seq.le(ack, k)
    assert 0 <= win <= 0xFFFF
    assert seq.le(edge, edge_k)  # never beyond the kernel's right edge
    if win < 0xFFFF:  # the largest expressible edge: less than one unit short
        assert seq.sub(edge_k, edge) < (1 << cs)
    if lag == 0 and ks == cs:
        assert (ack, win) == (k, w)


@given(
    u32,
    st.lists(
        st.tuples(st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 800)),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from([(0, 0), (2, 2), (3, 1), (0, 4), (7, 7)]),
)
def test_clamping_through_a_connection(c_isn: int, steps, scales) -> None:
    """Kernel acks race ahead of the logger: never ack unlogged bytes, never advertise
    beyond the kernel's edge, and (kernel edge not retreating) never retreat by a unit."""
    ks, cs = scales
    c = established(
        c_isn=c_isn,
        c_opts=SynOptions(wscale=5),
        s_opts=SynOptions(wscale=cs),
    )
    c.k_wscale = ks  # as after a rebuild with a different server scale
    base = seq.add(c_isn, 1)
    c.handle(cseg(base, 9001, payload=bytes(6000)))
    kack = logged = 0
    kedge_prev = None
    edge_prev = None
    for dk, dl, w in steps:
        kack = min(6000, kack + dk)
        logged = min(kack, logged + dl)
        c.handle(LoggerAck(0.0, seq.add(base, logged)))
        kedge = kack + (w << ks)
        if kedge_prev is not None and kedge < kedge_prev:
            w = (kedge_prev - kack + (1 << ks) - 1) >> ks  # a kernel never shrinks its edge
            kedge = kack + (w << ks)
        if w > 0xFFFF:
            break
        s = sseg(9001, seq.add(base, kack), window=w)
        (d,) = of(c.handle(s), Deliver)
        ack = d.rewrite.ack if d.rewrite and d.rewrite.ack is not None else s.ack
        win = d.rewrite.window if d.rewrite and d.rewrite.window is not None else s.window
        assert seq.le(ack, c.ack_limit)
        assert seq.sub(ack, base) <= logged
        edge = seq.sub(ack, base) + (win << cs)
        assert edge <= kedge
        if edge_prev is not None and win < 0xFFFF:
            assert edge > edge_prev - (1 << cs)
        edge_prev, kedge_prev = edge, kedge


# ------------------------------------------- read results (their order: test_commit.py)


def test_read_results_are_logged() -> None:
    c = established()
    r = ReadResult(7, 0, ReadKind.DATA, 5)
    assert c.handle(ReadReported(0.0, r)) == [Log(r)]
    with pytest.raises(LocalProtocolError, match="read result of conn 8"):
        c.handle(ReadReported(0.0, ReadResult(8, 1, ReadKind.EOF)))


# ------------------------------------------------------------------- invariant 4: close


def test_fin_after_shutdown_passes_rst_needs_close() -> None:
    c = established()
    assert c.handle(CloseReported(0.0, CloseHow.SHUT_WR)) == [Log(Close(7, CloseHow.SHUT_WR))]
    fin = sseg(9001, 1001, ACK | FIN)
    assert of(c.handle(fin), Deliver) and c.state is State.ESTABLISHED
    rst = sseg(9002, 1001, RST | ACK)
    acts = c.handle(rst)
    assert of(acts, Drop) and of(acts, StartRecovery) and c.state is State.CRASHED


def test_rst_after_close_passes() -> None:
    c = established()
    c.handle(CloseReported(0.0, CloseHow.CLOSE))
    rst = sseg(9001, 1001, RST | ACK)
    acts = c.handle(rst)
    assert of(acts, Deliver)[0].ident == rst.ident
    assert Log(Finished(7)) in acts and c.state is State.CLOSED


@pytest.mark.parametrize("flags", [ACK | FIN, ACK | RST, RST])
def test_unexplained_close_starts_recovery(flags: int) -> None:
    c = established()
    s = sseg(9001, 1001, flags)
    acts = c.handle(s)
    assert acts[0] == Drop(s.ident, "FIN/RST without an application close")
    assert of(acts, StartRecovery) and c.state is State.CRASHED
    assert c.trace[-1] == "ESTABLISHED => CRASHED"


def test_process_death_after_close_needs_no_recovery() -> None:
    c = established()
    c.handle(CloseReported(0.0, CloseHow.CLOSE))
    assert c.handle(ProcessDied(1.0)) == []
    assert c.state is State.ESTABLISHED


# --------------------------------------------------------------------------- recovery


def crashed(now: float = 1.0, **kw) -> Connection:
    c = established(**kw)
    base = seq.add(c.c_isn, 1)
    c.handle(cseg(base, seq.add(c.s_isn, 1), payload=b"hello world"))
    c.handle(LoggerAck(0.0, seq.add(base, 11)))
    c.handle(sseg(seq.add(c.s_isn, 1), seq.add(base, 11), plen=6, now=0.5, ts_val=5400))
    c.handle(cseg(seq.add(base, 11), seq.add(c.s_isn, 7), ts_val=1100))  # client acks 6 bytes
    c.handle(ProcessDied(now))
    assert c.state is State.CRASHED
    return c


def test_reset_client_gives_the_client_a_reset_and_ends_the_connection() -> None:
    c = crashed()
    acts = c.handle(ResetClient(2.0))
    (f,) = of(acts, Fabricate)
    assert f.direction is Direction.TO_CLIENT and f.segment.flags == RST | ACK
    assert f.segment.seq == c.snd_nxt and f.segment.ack == c.ack_limit
    assert Log(Finished(7)) in acts and c.state is State.CLOSED
    assert c.handle(ResetClient(2.1)) == []  # over already: nothing more


def test_closed_window_acks_while_crashed() -> None:
    c = crashed()
    assert c.restarting
    s = cseg(1012, 9007, payload=b"more", now=1.1)
    acts = c.handle(s)
    assert of(acts, Log) and of(acts, Drop)[0].ident == s.ident
    (f,) = of(acts, Fabricate)
    assert f.direction is Direction.TO_CLIENT
    assert f.segment.window == 0 and f.segment.ack == 1012  # frozen at the crash
    c.handle(LoggerAck(1.2, 1016))  # logged now, but not acked while no kernel holds it
    t = c.get_timer()
    assert t is not None
    (f,) = of(c.handle(Timer(t)), Fabricate)
    assert f.segment.ack == 1012 and f.segment.window == 0
    assert seq.ge(f.segment.ts_val, 5400)  # never backwards


def _log(c: Connection, instream: bytes, reads=(), server_seq=None) -> ConnectionLog:
    hs = Handshake(c.conn_id, 0, "a", 1, "b", 2, c.c_isn, c.s_isn, c.client_opts, c.server_opts)
    base = seq.add(c.c_isn, 1)
    return ConnectionLog(
        handshake=hs,
        stable_seq=seq.add(base, len(instream)),
        server_seq=server_seq if server_seq is not None else c.server_seq,
        instream=instream,
        client_fin=False,
        reads=list(reads),
        client_window=500,
        client_ts_val=1100,
    )


@pytest.mark.parametrize(
    ("c_isn", "s_isn", "n_isn"),
    [
        (1000, 9000, 123456),
        (seq.MASK, seq.MASK - 3, 2),
        (seq.MASK - 5, 0, seq.MASK),
        (seq.HALF - 1, seq.HALF - 4, seq.HALF + 1),
        (0, seq.MASK - 6, seq.MASK - 2),
    ],
)
def test_rebuild_and_translate(c_isn: int, s_isn: int, n_isn: int) -> None:
    c = crashed(c_isn=c_isn, s_isn=s_isn)
    base = seq.add(c_isn, 1)
    plan = plan_recovery(
        _log(c, b"hello world", [ReadResult(7, 0, ReadKind.DATA, 11)]), **c.recovery_hints(2.0)
    )
    assert plan.discard == 6
    acts = c.handle(Rebuild(2.0, plan))
    (syn,) = of(acts, Fabricate)
    assert syn.direction is Direction.TO_SERVER and syn.segment.flags == SYN
    assert syn.segment.seq == c_isn and syn.segment.syn_opts.wscale == 7
    assert c.state is State.REPLAY_SYN_SENT
    new_opts = SynOptions(mss=100, wscale=4, sack_ok=True, ts_val=77, ts_ecr=1000)
    sa = sseg(n_isn, base, SYN | ACK, window=8, syn_opts=new_opts, ts_val=77, now=2.1)
    acts = c.handle(sa)
    assert acts[0] == Drop(sa.ident, "rebuilt SYN-ACK: answered by SSW")
    third, *refill = [a.segment for a in of(acts, Fabricate)]
    assert (third.seq, third.ack, third.flags) == (base, seq.add(n_isn, 1), ACK)
    # refill paced by the SYN-ACK's (unscaled) window of 8 bytes
    assert [(s.seq, s.payload) for s in refill] == [(base, b"hello wo")]
    assert c.state is State.REPLAYING and c.delta_seq == (s_isn + 6 - n_isn) & seq.MASK
    # the kernel acks 8 and opens its window (scale 4): the rest is injected
    k = sseg(seq.add(n_isn, 1), seq.add(base, 8), window=10, now=2.2, ts_val=80)
    acts = c.handle(k)
    assert [a.segment.payload for a in of(acts, Fabricate)] == [b"rld"]
    # its ack is behind the client's (11 bytes acked before the crash): nothing new for it
    assert of(acts, Drop) and not of(acts, Deliver)
    k = sseg(seq.add(n_isn, 1), seq.add(base, 11), window=10, now=2.25, ts_val=80)
    (d,) = of(c.handle(k), Deliver)
    # outbound: seq + delta (client view is s_isn + 1 + 6), TSval moved past what the client saw
    assert eff(d, k, "seq") == seq.add(s_isn, 7)
    assert seq.gt(d.rewrite.ts_val, 5400)
    # window from scale 4 to the client's view (scale 2): edge kept, expressed in units of 4
    assert d.rewrite.window == (10 << 4) >> 2
    # inbound: ack and SACK by -delta, TSecr by -ts_off
    n1 = seq.add(n_isn, 1)
    c.handle(sseg(n1, seq.add(base, 11), plen=5, now=2.3, ts_val=81))
    s = cseg(
        seq.add(base, 11),
        seq.add(s_isn, 9),
        ts_val=1200,
        ts_ecr=d.rewrite.ts_val,
        sack=((seq.add(s_isn, 10), seq.add(s_isn, 12)),),
    )
    (d2,) = of(c.handle(s), Deliver)
    assert eff(d2, s, "ack") == seq.add(n_isn, 3)
    assert eff(d2, s, "sack") == ((seq.add(n_isn, 4), seq.add(n_isn, 6)),)
    assert eff(d2, s, "ts_ecr") == 80
    c.handle(ReplayDone(2.5))
    assert c.state is State.ESTABLISHED and not c.restarting


def test_client_data_after_the_plan_is_refilled_with_its_fin() -> None:
    """Bytes (and a FIN) the client sent while dark, not in the plan, follow its instream."""
    c = crashed()  # logged "hello world": 1001..1012
    c.handle(cseg(1012, 9007, payload=b"more", now=1.1))
    plan = plan_recovery(_log(c, b"hello world"), **c.recovery_hints(1.2))  # before "more"
    c.handle(cseg(1016, 9007, ACK | FIN, payload=b"!", now=1.3))  # after the plan was made
    c.handle(cseg(1012, 9007, payload=b"more", now=1.35))  # a retransmission: kept once
    c.handle(Rebuild(1.4, plan))
    sa = sseg(500, 1001, SYN | ACK, window=6, syn_opts=S_OPTS, ts_val=77, now=1.5)
    refill = [a.segment for a in of(c.handle(sa), Fabricate)][1:]
    assert [(s.seq, s.payload) for s in refill] == [(1001, b"hello ")]
    acts = c.handle(sseg(501, 1007, window=100, now=1.6, ts_val=78))
    got = [(s.segment.seq, s.segment.payload, bool(s.segment.flags & FIN)) for s in of(
        acts, Fabricate
    ) if s.direction is Direction.TO_SERVER]
    assert got == [(1007, b"world", False), (1012, b"more", False), (1016, b"!", False),
                   (1017, b"", True)]  # fmt: skip
    assert c.refilling
    c.handle(sseg(501, 1018, window=100, now=1.7, ts_val=79))
    assert not c.refilling


def test_rebuild_syn_offers_only_negotiated_options() -> None:
    c = crashed(
        c_opts=SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1000),
        s_opts=SynOptions(mss=1400, sack_ok=False),
    )
    plan = plan_recovery(_log(c, b"hello world"))
    (f,) = of(c.handle(Rebuild(2.0, plan)), Fabricate)
    o = f.segment.syn_opts
    assert o == SynOptions(mss=1460, wscale=None, sack_ok=False, ts_val=None, ts_ecr=None)
    assert f.segment.ts_val is None


def test_inbound_ack_kept_within_the_rebuilt_kernel() -> None:
    c = crashed()
    plan = plan_recovery(_log(c, b"hello world"))
    c.handle(Rebuild(2.0, plan))
    c.handle(sseg(50, 1001, SYN | ACK, window=100, syn_opts=S_OPTS))
    # the client acks bytes the old kernel sent but the new one has not regenerated yet
    (d,) = of(c.handle(cseg(1012, 9050)), Deliver)
    assert d.rewrite.ack == 51  # clamped to the new kernel's snd_nxt


def test_client_segments_past_the_rebuilt_window_still_carry_their_acks() -> None:
    """The rebuilt kernel's window is shut at 1007 (its first 6 bytes refilled); the
    client, ahead, sends from 1012 on. Linux would drop those segments, acks unread:
    a pure ack is moved to the window's edge, a data segment is dropped (the refill
    brings its bytes) and its ack goes on alone in a pure ack at the edge."""
    c = crashed()
    plan = plan_recovery(_log(c, b"hello world"))
    c.handle(Rebuild(2.0, plan))
    c.handle(sseg(50, 1001, SYN | ACK, window=6, syn_opts=S_OPTS, now=2.1))  # 1001..1007
    c.handle(sseg(51, 1007, window=0, plen=3, now=2.2))  # window shut, output 51..54
    pure = cseg(1012, 9010, now=2.3)
    (d,) = of(c.handle(pure), Deliver)
    assert eff(d, pure, "seq") == 1007 and eff(d, pure, "ack") == 54
    data = cseg(1012, 9010, payload=b"more", now=2.4)
    acts = c.handle(data)
    assert of(acts, Drop)[0].ident == data.ident and not of(acts, Deliver)
    (f,) = of(acts, Fabricate)
    assert f.direction is Direction.TO_SERVER
    assert (f.segment.seq, f.segment.ack, f.segment.payload) == (1007, 54, b"")
    assert of(acts, Log)  # logged all the same: the refill brings it
    # inside the window: untouched
    inside = cseg(1007, 9010, now=2.5)
    (d,) = of(c.handle(inside), Deliver)
    assert eff(d, inside, "seq") == 1007


def test_refilled_kernel_acks_never_run_backwards_for_the_client() -> None:
    """The client was acked 1012 before the crash; the rebuilt kernel, still refilled,
    acks 1007. Its data goes out with the client's ack (1012), not 1007: an ack further
    back than the largest window makes Linux drop the whole segment (RFC 5961 5.2)."""
    c = crashed()
    plan = plan_recovery(_log(c, b"hello world"))
    c.handle(Rebuild(2.0, plan))
    c.handle(sseg(50, 1001, SYN | ACK, window=6, syn_opts=S_OPTS, now=2.1))
    assert c.k_wscale == 2
    k = sseg(51, 1007, window=20, plen=3, now=2.2)  # the kernel's edge: 1007 + 80
    (d,) = of(c.handle(k), Deliver)
    assert eff(d, k, "ack") == 1012
    assert eff(d, k, "window") == (1087 - 1012) >> c.s_wscale
    # a pure ack still behind 1012 says nothing new (at most, a shrunk window): dropped
    pure = sseg(54, 1008, window=1, now=2.3)
    acts = c.handle(pure)
    assert of(acts, Drop) and not of(acts, Deliver)
    # data whose kernel edge is behind the client's ack: that ack, a shut window
    shut = sseg(54, 1008, window=0, plen=2, now=2.4)
    (d,) = of(c.handle(shut), Deliver)
    assert (eff(d, shut, "ack"), eff(d, shut, "window")) == (1012, 0)


def test_rebuild_refuses_a_log_behind_the_acks() -> None:
    c = crashed()
    plan = plan_recovery(_log(c, b"hello"))  # lost bytes the client was acked for
    with pytest.raises(LocalProtocolError, match="invariant 6"):
        c.handle(Rebuild(2.0, plan))


def test_crash_during_replay_and_rebuild_again() -> None:
    c = crashed()
    plan = plan_recovery(_log(c, b"hello world"))
    c.handle(Rebuild(2.0, plan))
    c.handle(sseg(50, 1001, SYN | ACK, window=100, syn_opts=S_OPTS, now=2.1))
    c.handle(ProcessDied(3.0))
    assert c.state is State.CRASHED
    c.handle(Rebuild(4.0, plan))
    acts = c.handle(sseg(900, 1001, SYN | ACK, window=100, syn_opts=S_OPTS, now=4.1))
    assert c.delta_seq == (9000 + 6 - 900) & seq.MASK and of(acts, Fabricate)
    assert c.trace[-2:] == ["CRASHED => REPLAY_SYN_SENT", "REPLAY_SYN_SENT => REPLAYING"]


def test_rebuild_syn_retransmitted_on_timer() -> None:
    c = crashed()
    plan = plan_recovery(_log(c, b"hello world"))
    c.handle(Rebuild(2.0, plan))
    acts = c.handle(Timer(2.0 + c.syn_rto))
    assert any(a.reason == "rebuild SYN again" for a in of(acts, Fabricate))


def test_restored_connection_starts_crashed() -> None:
    c = crashed()
    plan = plan_recovery(_log(c, b"hello world"))
    r = Connection.restored(plan, 5.0, policy=Lazy())
    assert r.state is State.CRASHED and r.trace == ["LISTEN => CRASHED"]
    (f,) = of(r.handle(cseg(1012, 9007, payload=b"z", now=5.1)), Fabricate)
    assert f.segment.ack == 1012 and f.segment.window == 0
    r.handle(Rebuild(5.2, plan))
    assert r.state is State.REPLAY_SYN_SENT


def test_finish_logs_and_closes() -> None:
    c = established(policy=Basic())
    acts = c.handle(Finish(9.0))
    assert acts == [Log(Finished(7))] and c.state is State.CLOSED
