import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftcp.core import seq
from ftcp.core.reassembly import Reassembler
from ftcp.errors import RemoteProtocolError


@st.composite
def stream_and_segments(draw: st.DrawFn) -> tuple[int, bytes, list[tuple[int, int]]]:
    isn = draw(st.integers(0, seq.MASK))
    data = draw(st.binary(min_size=0, max_size=400))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    segs = [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    # overlapping retransmissions: arbitrary ranges of the same stream
    extra = draw(
        st.lists(st.tuples(st.integers(0, len(data)), st.integers(0, 50)), max_size=10)
    )
    segs += [(a, min(len(data), a + n)) for a, n in extra if n]
    segs = draw(st.permutations(segs))
    return isn, data, segs


@given(stream_and_segments())
def test_any_order_dup_overlap_rebuilds_the_stream(case) -> None:
    isn, data, segs = case
    r = Reassembler(isn)
    for a, b in segs:
        r.add(seq.add(isn, 1 + a), data[a:b])
    covered = set()
    for a, b in segs:
        covered.update(range(a, b))
    prefix = 0
    while prefix in covered:
        prefix += 1
    assert r.contiguous == data[:prefix]
    assert r.stable_seq == seq.add(isn, 1 + prefix)


def test_fin_and_ack_limit() -> None:
    r = Reassembler(seq.MASK - 1)
    r.add(seq.add(seq.MASK - 1, 3), b"cd", fin=True)
    assert not r.fin_reached and r.ack_limit == r.stable_seq
    r.add(seq.MASK, b"ab")
    assert r.contiguous == b"abcd" and r.fin_reached
    assert r.ack_limit == seq.add(r.stable_seq, 1)


def test_conflicting_retransmission_is_a_remote_error() -> None:
    r = Reassembler(100)
    r.add(101, b"hello")
    with pytest.raises(RemoteProtocolError, match="differs"):
        r.add(103, b"XX")
