"""The rebuilt kernel connection: fabricated handshake and refill segments (kernel view)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_replay_plan import S_OPTS, make_log, u32

from ftcp.core import seq
from ftcp.core.events import ACK, FIN, PSH, SYN, ServerSegment
from ftcp.core.packet import BlockSums, ones_sum
from ftcp.core.rebuild import KernelRebuild
from ftcp.core.records import SynOptions
from ftcp.core.replay import plan_recovery


def rebuild(**kw) -> KernelRebuild:  # type: ignore[no-untyped-def]
    late = kw.pop("late", {})
    return KernelRebuild(plan_recovery(make_log(**kw)), 0.0, repair=False, late=late, chunk=None)


def test_syn_and_third_ack() -> None:
    rb = rebuild()
    syn = rb.syn()
    assert (syn.seq, syn.flags) == (1000, SYN)
    assert syn.syn_opts == SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1000, ts_ecr=0)
    assert syn.window == min(0xFFFF, 300 << 7)
    rb.synack_seen(ServerSegment(1, 0.1, seq.MASK, 1001, SYN | ACK, 100, syn_opts=S_OPTS))
    third = rb.third_ack(window=77, ts_val=None)  # the logged TSval
    assert (third.seq, third.ack, third.flags, third.window) == (1001, 0, ACK, 77)
    assert (third.ts_val, third.ts_ecr) == (1234, S_OPTS.ts_val)
    assert rb.third_ack(window=77, ts_val=4321).ts_val == 4321  # the client's latest


@pytest.mark.parametrize(
    ("s_opts", "expect"),
    [
        (SynOptions(mss=1400), SynOptions(mss=1460)),
        (SynOptions(mss=1400, wscale=0), SynOptions(mss=1460, wscale=7)),
        (SynOptions(sack_ok=True), SynOptions(mss=1460, sack_ok=True)),
        (SynOptions(ts_val=1), SynOptions(mss=1460, ts_val=1000, ts_ecr=0)),
    ],
)
def test_syn_carries_only_negotiated_options(s_opts: SynOptions, expect: SynOptions) -> None:
    assert rebuild(s_opts=s_opts).syn().syn_opts == expect


@given(u32, st.binary(max_size=300), st.integers(0, 300), st.integers(0, 400), st.integers(1, 64))
def test_refill_covers_the_window(c_isn: int, data: bytes, a: int, b: int, mss: int) -> None:
    """From the kernel's ack to its window's edge, in MSS pieces, nothing else; each
    payload says where it lies in the logged instream."""
    rb = rebuild(c_isn=c_isn, instream=data)
    base = seq.add(c_isn, 1)
    rb.start(seq.add(base, a), mss, 0.0)
    segs = rb.refill(seq.add(base, b), ack=5, window=10, ts_val=None)
    lo, hi = min(a, len(data)), min(b, len(data))
    assert b"".join(bytes(s.payload) for s, _ in segs) == data[lo:hi] if lo < hi else not segs
    pos = seq.add(base, lo)
    sums = BlockSums(rb.plan.instream)
    for s, reason in segs:
        assert s.seq == pos and 0 < len(s.payload) <= mss and reason == "refill: logged instream"
        assert s.flags == ACK | PSH and (s.ack, s.window) == (5, 10)
        at = seq.sub(s.seq, base)
        assert s.payload_at == at and data[at : at + len(s.payload)] == bytes(s.payload)
        summed = sums.summed(at, at + len(s.payload))
        assert summed.ones % 0xFFFF == ones_sum(bytes(s.payload)) % 0xFFFF
        pos = seq.add(pos, len(s.payload))


def test_refill_ends_with_late_data_then_the_fin() -> None:
    """Client data that came while the server was down continues the logged instream;
    its FIN follows the last byte."""
    late = {seq.add(1001, 11): (b"late", True)}
    rb = rebuild(instream=b"hello world", late=late)
    assert rb.target() == seq.add(1001, 16)
    rb.start(1001, 1460, 0.0)
    segs = rb.refill(seq.add(1001, 100), ack=5, window=10, ts_val=None)
    assert [(s.seq, bytes(s.payload), r) for s, r in segs] == [
        (1001, b"hello world", "refill: logged instream"),
        (1012, b"late", "refill: late client data"),
        (1016, b"", "refill: logged client FIN"),
    ]
    assert segs[-1][0].flags == ACK | FIN and segs[-1][0].payload_at == -1
    rb.progress(seq.add(1001, 16), 1.0)
    assert rb.done and not late  # the connection's late data is no longer needed


def test_refill_fin_of_the_log() -> None:
    rb = rebuild(client_fin=True)
    rb.start(1012, 1460, 0.0)
    ((s, reason),) = rb.refill(seq.add(1012, 10), ack=5, window=10, ts_val=None)
    assert s.flags == ACK | FIN and s.seq == 1012 and reason == "refill: logged client FIN"
    assert rb.target() == 1013 and not rb.refill(seq.add(1012, 10), 5, 10, None)


def test_refill_timeout_injects_again_from_the_kernels_ack() -> None:
    rb = rebuild(instream=b"0123456789")
    rb.start(1001, 4, 0.0)
    assert len(rb.refill(seq.add(1001, 10), 5, 10, None)) == 3
    rb.progress(1005, 0.1)
    assert not rb.done and rb.at == 0.1
    rb.timed_out(1005, 0.4)
    assert [bytes(s.payload) for s, _ in rb.refill(seq.add(1001, 10), 5, 10, None)] == [
        b"4567",
        b"89",
    ]
