"""Recovery streams the logger's answer into the rebuild: a connection is planned as
soon as its head and reads are in, and its instream (allocated at full length)
arrives while the refill runs. What reads it stops at `Arrival.received`;
`InstreamArrived` resumes the refill."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from test_conn import S_OPTS, _log, crashed, of, sseg
from test_wire import roundtrip

from ftcp.core import seq, wire
from ftcp.core.conn import State
from ftcp.core.events import (
    ACK,
    SYN,
    Fabricate,
    InstreamArrived,
    Rebuild,
    Repaired,
    Timer,
)
from ftcp.core.packet import BlockSums, ones_sum
from ftcp.core.rebuild import KernelRebuild
from ftcp.core.records import Arrival, ConnectionLog, Handshake, ReadKind, ReadResult, SynOptions
from ftcp.core.replay import plan_recovery
from ftcp.logger.assembly import RecoveryAssembler

DATA = b"hello world"


def _streaming_plan(c, received: int):  # type: ignore[no-untyped-def]
    buf = bytearray(len(DATA))
    buf[:received] = DATA[:received]
    arrival = Arrival(len(DATA), received)
    log = _log(c, bytes(len(DATA)), [ReadResult(7, 0, ReadKind.DATA, 11)])
    log.instream = buf  # type: ignore[assignment]  # the buffer the answer fills
    return plan_recovery(log, **c.recovery_hints(2.0), arrival=arrival), buf, arrival


def _arrive(buf: bytearray, arrival: Arrival, upto: int) -> None:
    buf[arrival.received : upto] = DATA[arrival.received : upto]
    arrival.received = upto


def test_plan_reads_only_what_arrived() -> None:
    c = crashed()
    plan, buf, arrival = _streaming_plan(c, 4)
    assert plan.instream_ready == 4 and not plan.instream_complete
    base = seq.add(c.c_isn, 1)
    rb = KernelRebuild(plan, 2.0, repair=False, late={}, chunk=None)
    rb.start(base, 3, 2.0)
    edge = seq.add(base, 100)
    assert [bytes(s.payload) for s, _ in rb.refill(edge, 0, 0, None)] == [b"hel", b"l"]
    _arrive(buf, arrival, 11)
    assert plan.instream_complete
    assert b"".join(bytes(s.payload) for s, _ in rb.refill(edge, 0, 0, None)) == DATA[4:]


def test_handshake_refill_waits_for_the_instream_then_goes_on() -> None:
    c = crashed()
    plan, buf, arrival = _streaming_plan(c, 3)
    c.handle(Rebuild(2.0, plan))
    acts = c.handle(sseg(500, 1001, SYN | ACK, window=100, syn_opts=S_OPTS, now=2.1))
    refill = [a.segment for a in of(acts, Fabricate) if a.segment.payload]
    assert [s.payload for s in refill] == [b"hel"]  # only what arrived
    assert c.state is State.REPLAYING and c.refilling
    assert not [a for a in of(c.handle(InstreamArrived(2.2)), Fabricate)]  # nothing new yet
    _arrive(buf, arrival, 8)
    segs = [a.segment for a in of(c.handle(InstreamArrived(2.3)), Fabricate)]
    assert [(s.seq, s.payload) for s in segs] == [(1004, b"lo wo")]
    _arrive(buf, arrival, 11)
    segs = [a.segment for a in of(c.handle(InstreamArrived(2.4)), Fabricate)]
    assert [(s.seq, s.payload) for s in segs] == [(1009, b"rld")]
    # the kernel acks all of it: refill done
    c.handle(sseg(501, 1012, ACK, window=100, now=2.5))
    assert not c.refilling


def test_repair_queues_what_arrived_and_refills_the_rest() -> None:
    c = crashed()
    plan, buf, arrival = _streaming_plan(c, 5)
    c.handle(Rebuild(2.0, plan, repair=True))
    c.handle(sseg(123456, 1001, SYN | ACK, window=8, syn_opts=S_OPTS, now=2.1))
    assert c.awaiting_repair
    spec = c.repair_spec(2.2)
    assert bytes(spec.instream) == b"hello" and spec.partial
    acts = c.handle(Repaired(2.3, rcv_nxt=1006, rcv_wnd=100))
    assert not [a for a in of(acts, Fabricate) if a.segment.payload]  # nothing more here yet
    _arrive(buf, arrival, 11)
    segs = [a.segment for a in of(c.handle(InstreamArrived(2.4)), Fabricate)]
    assert [(s.seq, s.payload) for s in segs] == [(1006, b" world")]


def test_a_complete_instream_is_not_partial() -> None:
    c = crashed()
    plan, _, _ = _streaming_plan(c, 11)
    c.handle(Rebuild(2.0, plan, repair=True))
    c.handle(sseg(123456, 1001, SYN | ACK, window=8, syn_opts=S_OPTS, now=2.1))
    spec = c.repair_spec(2.2)
    assert spec.instream == DATA and not spec.partial


def test_refill_timer_does_not_run_past_the_arrival() -> None:
    c = crashed()
    plan, _, _ = _streaming_plan(c, 2)
    c.handle(Rebuild(2.0, plan))
    c.handle(sseg(500, 1001, SYN | ACK, window=100, syn_opts=S_OPTS, now=2.1))
    acts = c.handle(Timer(2.1 + c.refill_rto + 0.01))  # resend from the kernel's ack
    assert [a.segment.payload for a in of(acts, Fabricate) if a.segment.payload] == [b"he"]


@given(st.binary(min_size=0, max_size=40_000), st.data())
@settings(max_examples=40)
def test_block_sums_of_a_buffer_still_filling(data: bytes, draw: st.DataObject) -> None:
    buf = bytearray(len(data))
    sums = BlockSums(buf)
    got = 0
    while got < len(data):
        got = min(len(data), got + draw.draw(st.integers(1, 9000)))
        buf[:got] = data[:got]
        assert sums.precompute(None, got)  # every block of the arrived part
        a = draw.draw(st.integers(0, got))
        b = draw.draw(st.integers(a, got))
        assert sums.range_sum(a, b) == ones_sum(data[a:b]) % 0xFFFF


def _log_of(cid: int, instream: bytes, nreads: int) -> ConnectionLog:
    hs = Handshake(cid, cid, "a", 1, "b", 2, 10, 20, SynOptions(), SynOptions())
    reads = [ReadResult(cid, o, ReadKind.DATA, 1) for o in range(nreads)]
    return ConnectionLog(hs, 11 + len(instream), 21, instream, False, reads)


def test_assembler_calls_on_head_before_any_instream() -> None:
    logs = [_log_of(1, os.urandom(300_000), 5), _log_of(2, b"", 0), _log_of(3, b"xyz", 0)]
    # the logger's order: every head (and its reads), then every instream
    frames = [fr for lg in logs for fr in wire.recovery_conn_frames(4, lg)]
    for lg in logs:
        for off in range(0, len(lg.instream), 100_000):
            piece = lg.instream[off : off + 100_000]
            frames.append(wire.recovery_instream_head(4, lg.handshake.conn_id, off, len(piece)))
            frames.append(piece)
    frames.append(wire.encode(wire.RecoverEnd(4, 3)))
    events: list[tuple] = []
    arrivals: dict[int, Arrival] = {}

    def on_head(lg: ConnectionLog, arrival: Arrival) -> None:
        cid = lg.handshake.conn_id
        arrivals[cid] = arrival
        assert list(lg.reads) == list(logs[cid - 1].reads)
        assert len(lg.instream) == len(logs[cid - 1].instream)
        events.append(("head", cid, arrival.received))

    def on_data(cid: int) -> None:
        events.append(("data", cid, arrivals[cid].received))

    ended: list[int] = []
    asm = RecoveryAssembler(
        4, on_head=on_head, on_data=on_data, on_end=lambda: ended.append(len(events))
    )
    done = [asm.feed(f) for f in roundtrip(b"".join(frames), 30_000, stream=True)]  # type: ignore[arg-type]
    assert done[-1] and ended == [len(events)]  # once, after the last piece
    assert [e for e in events if e[0] == "head"] == [("head", 1, 0), ("head", 2, 0), ("head", 3, 0)]
    assert events.index(("head", 3, 0)) < min(i for i, e in enumerate(events) if e[0] == "data")
    got1 = [e[2] for e in events if e[:2] == ("data", 1)]
    assert got1 == sorted(got1) and got1[-1] == 300_000
    assert arrivals[1].complete and arrivals[3].complete and arrivals[2].complete
    assert asm.result() == logs


def test_refill_echoes_the_rebuilt_kernels_latest_tsval() -> None:
    """The kernel measures its receive RTT from the TSecr of what it receives; echoing
    the SYN-ACK's TSval for the whole refill froze that estimate (and with it the
    receive buffer's growth)."""
    c = crashed()
    plan, buf, arrival = _streaming_plan(c, 3)
    c.handle(Rebuild(2.0, plan))
    acts = c.handle(sseg(500, 1001, SYN | ACK, window=100, syn_opts=S_OPTS, now=2.1))
    first = [a.segment for a in of(acts, Fabricate) if a.segment.payload]
    assert first[0].ts_ecr == S_OPTS.ts_val  # nothing newer known yet
    c.handle(sseg(501, 1004, ACK, window=100, now=2.2, ts_val=S_OPTS.ts_val + 40))
    _arrive(buf, arrival, 11)
    segs = [a.segment for a in of(c.handle(InstreamArrived(2.3)), Fabricate)]
    assert segs and all(s.ts_ecr == S_OPTS.ts_val + 40 for s in segs)
