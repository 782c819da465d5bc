"""Recovery planning: SYN, delta_seq, refill, read replay, write trimming, divergence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftcp.core import seq
from ftcp.core.events import ACK, FIN, SYN
from ftcp.core.packet import Summed, ones_sum
from ftcp.core.records import (
    Close,
    CloseHow,
    ConnectionLog,
    Handshake,
    ReadKind,
    ReadResult,
    SynOptions,
    WriteMark,
)
from ftcp.core.replay import (
    DivergenceError,
    OutstreamDigest,
    ReadReplayer,
    WriteFilter,
    outstream_checksum,
    plan_recovery,
    recovery_order,
)
from ftcp.errors import LocalProtocolError

u32 = st.integers(0, seq.MASK)
C_OPTS = SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1000, ts_ecr=0)
S_OPTS = SynOptions(mss=1400, wscale=2, sack_ok=True, ts_val=5000, ts_ecr=1000)


def make_log(
    c_isn: int = 1000,
    s_isn: int = 9000,
    instream: bytes = b"hello world",
    acked: int = 0,
    reads=(),
    c_opts: SynOptions = C_OPTS,
    s_opts: SynOptions = S_OPTS,
    accept_order: int = 0,
    **kw,
) -> ConnectionLog:
    hs = Handshake(1, accept_order, "10.0.0.1", 5555, "10.0.0.2", 80, c_isn, s_isn, c_opts, s_opts)
    return ConnectionLog(
        handshake=hs,
        stable_seq=seq.add(c_isn, 1 + len(instream)),
        server_seq=seq.add(s_isn, 1 + acked),
        instream=instream,
        client_fin=kw.pop("client_fin", False),
        reads=list(reads),
        client_window=kw.pop("client_window", 300),
        client_ts_val=kw.pop("client_ts_val", 1234),
        **kw,
    )


# ------------------------------------------------------------------------- handshake


def test_syn_and_third_ack() -> None:
    p = plan_recovery(make_log())
    syn = p.syn()
    assert (syn.seq, syn.flags) == (1000, SYN)
    assert syn.syn_opts == SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1000, ts_ecr=0)
    assert syn.window == min(0xFFFF, 300 << 7)
    third = p.third_ack(n_isn=seq.MASK, n_tsval=42)
    assert (third.seq, third.ack, third.flags) == (1001, 0, ACK)
    assert (third.ts_val, third.ts_ecr) == (1234, 42)


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
    assert plan_recovery(make_log(s_opts=s_opts)).syn().syn_opts == expect


@given(u32, u32, u32, st.integers(0, 1 << 30), st.integers(0, 5000))
def test_delta_seq_maps_every_byte(c_isn: int, s_isn: int, n_isn: int, acked: int, j: int) -> None:
    """Kernel byte j (view n_isn + 1 + j) is output byte A + j (client view s_isn + 1 + A + j)."""
    p = plan_recovery(make_log(c_isn=c_isn, s_isn=s_isn, acked=acked))
    assert p.discard == acked
    delta = p.delta_seq(n_isn)
    kernel_view = seq.add(n_isn, 1 + j)
    assert seq.add(kernel_view, delta) == seq.add(s_isn, 1 + acked + j)
    assert seq.add(seq.add(s_isn, 1 + acked + j), -delta) == kernel_view


def test_server_seq_hint_and_fin_acked() -> None:
    log = make_log(acked=5, write_mark=WriteMark(1, 10, 0))
    assert plan_recovery(log, server_seq_hint=seq.add(9000, 8)).discard == 7
    assert plan_recovery(log, server_seq_hint=seq.add(9000, 3)).discard == 5
    # the client acked all 10 bytes and our FIN: the FIN is not an output byte
    log = make_log(acked=11, write_mark=WriteMark(1, 10, 0), closes=[Close(1, CloseHow.SHUT_WR)])
    p = plan_recovery(log)
    assert p.discard == 10 and p.fin_acked


def test_ts_offset_never_runs_backwards() -> None:
    p = plan_recovery(make_log(), last_ts_out=seq.MASK - 1, ts_elapsed=0.004)
    assert p.ts_floor == seq.add(seq.MASK - 1, 5)
    off = p.ts_offset(n_tsval=77, floor=p.ts_floor)
    assert seq.add(77, off) == p.ts_floor
    assert seq.gt(seq.add(77 + 1000, off), seq.MASK - 1)
    off = p.ts_offset(n_tsval=77, floor=None)  # unknown: a quarter of the space ahead
    assert seq.sub(seq.add(77, off), S_OPTS.ts_val) == 1 << 30


@given(u32, st.binary(max_size=300), st.integers(0, 300), st.integers(0, 400), st.integers(1, 64))
def test_instream_chunks_cover_exactly(c_isn: int, data: bytes, a: int, b: int, mss: int) -> None:
    p = plan_recovery(make_log(c_isn=c_isn, instream=data))
    base = seq.add(c_isn, 1)
    chunks = list(p.instream_chunks(seq.add(base, a), seq.add(base, b), mss))
    lo, hi = min(a, len(data)), min(b, len(data))
    assert b"".join(c for _, c in chunks) == data[lo:hi] if lo < hi else not chunks
    pos = seq.add(base, lo)
    for s, c in chunks:
        assert s == pos and 0 < len(c) <= mss
        pos = seq.add(pos, len(c))


@given(st.binary(max_size=20000), st.integers(0, 20000), st.integers(1, 9000), st.booleans())
def test_instream_chunks_carry_their_sums(data: bytes, a: int, mss: int, presum: bool) -> None:
    """Refill payloads carry a sum congruent to their full checksum sum, whether the
    plan's blocks were summed beforehand (`presum`) or not."""
    p = plan_recovery(make_log(instream=data))
    if presum:
        assert p.presum()
    base = seq.add(p.c_isn, 1)
    for _, c in p.instream_chunks(seq.add(base, a), p.stable_seq, mss):
        assert isinstance(c, Summed)
        assert c.ones % 0xFFFF == ones_sum(bytes(c)) % 0xFFFF


def test_refill_segment_fin() -> None:
    p = plan_recovery(make_log(client_fin=True))
    s = p.refill_segment(p.stable_seq, b"", ack=5, window=10, ts_ecr=3, fin=True)
    assert s.flags == ACK | FIN and s.seq == 1012 and p.ack_limit == 1013


def test_plan_rejects_inconsistent_logs() -> None:
    log = make_log()
    log.instream = b"short"
    with pytest.raises(LocalProtocolError, match="instream"):
        plan_recovery(log)
    with pytest.raises(LocalProtocolError, match="reads consumed"):
        plan_recovery(make_log(reads=[ReadResult(1, 0, ReadKind.DATA, 12)]))
    with pytest.raises(LocalProtocolError, match="before s_isn"):
        plan_recovery(make_log(acked=-3))


def test_recovery_order() -> None:
    logs = [make_log(accept_order=n) for n in (3, 1, 2)]
    assert [lg.handshake.accept_order for lg in recovery_order(logs)] == [1, 2, 3]


# ---------------------------------------------------------------------------- reads


reads_strategy = st.lists(
    st.one_of(
        st.tuples(st.just(ReadKind.DATA), st.integers(1, 40)),
        st.tuples(st.just(ReadKind.EAGAIN), st.just(0)),
    ),
    max_size=20,
)


@given(st.binary(min_size=0, max_size=400), reads_strategy, st.booleans())
def test_replay_reproduces_read_results(data: bytes, script, eof: bool) -> None:
    """Run an original 'application' over the instream, log its read results, replay them."""
    results, pos = [], 0
    for order, (kind, n) in enumerate(script):
        if kind == ReadKind.DATA:
            n = min(n, len(data) - pos)
            if n == 0:
                kind = ReadKind.EAGAIN
            pos += n
        results.append(ReadResult(1, order, kind, n if kind == ReadKind.DATA else 0))
    if eof:
        results.append(ReadResult(1, len(results), ReadKind.EOF))
    p = plan_recovery(make_log(instream=data, reads=results))
    rp = p.read_replayer()
    served = []
    available = 0
    while not rp.done:
        r = rp.read(max_len=1000, available=available)
        if not r.ready:  # the refill is still under way
            assert available < r.length
            available = len(data)
            continue
        served.append(ReadResult(1, r.order, r.kind, r.length))
        if r.kind == ReadKind.DATA:
            assert r.data == data[rp.consumed - r.length : rp.consumed]
            available -= r.length
    assert served == results
    assert rp.read(10, 10).kind is None  # live from now on


def test_read_asking_for_less_than_logged_diverges() -> None:
    rp = ReadReplayer(1, [ReadResult(1, 0, ReadKind.DATA, 8)], b"abcdefgh")
    with pytest.raises(DivergenceError, match="read diverged"):
        rp.read(max_len=4, available=8)
    rp = ReadReplayer(1, [ReadResult(1, 0, ReadKind.DATA, 8)], b"abcdefgh", "record")
    r = rp.read(max_len=4, available=8)
    assert r.length == 4 and rp.divergences[0].offset == 0


# --------------------------------------------------------------------------- writes


@given(st.binary(max_size=300), st.lists(st.integers(0, 60), max_size=30), st.integers(0, 300))
def test_write_filter_trims_straddling_writes(stream: bytes, cuts, discard: int) -> None:
    discard = min(discard, len(stream))
    wf = WriteFilter(1, discard)
    sent, pos = b"", 0
    for n in [*cuts, len(stream)]:
        chunk = stream[pos : pos + n]
        pos += len(chunk)
        f = wf.write(chunk)
        assert f.discard + f.send == len(chunk)
        sent += chunk[f.discard :]
    assert sent == stream[discard:]
    assert wf.total == len(stream) and not wf.discarding


def test_straddling_write_example() -> None:
    wf = WriteFilter(1, discard=5)
    assert (wf.write(b"abc").discard, wf.write(b"defg").discard, wf.write(b"hi").discard) == (
        3,
        2,
        0,
    )


def _marks(stream: bytes, every: int) -> list[WriteMark]:
    d, marks = OutstreamDigest(1), []
    for i in range(0, len(stream), every):
        marks.append(d.update(stream[i : i + every]))
    return marks


def test_divergence_reported_with_offset() -> None:
    stream = bytes(range(200))
    marks = _marks(stream, 50)  # checkpoints at 50, 100, 150, 200
    assert marks[-1].checksum == outstream_checksum(stream)
    ok = WriteFilter(1, 120, marks)
    for i in range(0, 200, 7):
        ok.write(stream[i : i + 7])
    assert ok.verified == 200 and not ok.divergences
    bad = bytearray(stream)
    bad[117] ^= 0xFF  # regenerated output differs inside the discarded prefix
    wf = WriteFilter(1, 120, marks, on_divergence="record")
    for i in range(0, 200, 7):
        wf.write(bytes(bad[i : i + 7]))
    d = wf.divergences[0]
    assert (d.what, d.offset, d.verified) == ("write", 150, 100)
    with pytest.raises(DivergenceError, match="offset 150 \\(verified up to 100\\)"):
        w2 = WriteFilter(1, 0, marks)
        w2.write(bytes(bad))


def test_plan_helpers_share_the_discard() -> None:
    p = plan_recovery(make_log(acked=4, write_mark=WriteMark(1, 9, outstream_checksum(b"x" * 9))))
    wf = p.write_filter()
    assert wf.discard == 4 and wf.write(b"x" * 9).send == 5 and wf.verified == 9
