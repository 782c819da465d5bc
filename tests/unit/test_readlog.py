"""`ReadLog`: a connection's logged reads, packed from the logger's answer to the
NSW replay script, read as a sequence of `ReadResult`."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftcp.core import wire
from ftcp.core.records import ReadKind, ReadLog, ReadResult
from ftcp.errors import RemoteProtocolError
from ftcp.nsw import proto

reads_st = st.lists(
    st.tuples(st.sampled_from(list(ReadKind)), st.integers(0, 2**32 - 1)), max_size=300
).map(lambda ks: [ReadResult(9, 100 + 3 * i, k, n) for i, (k, n) in enumerate(ks)])


@given(reads_st)
def test_sequence_of_read_results(reads: list[ReadResult]) -> None:
    rl = ReadLog.from_results(9, reads)
    assert len(rl) == len(reads)
    assert list(rl) == reads
    assert rl == reads and rl == tuple(reads)
    assert rl == ReadLog(9, rl.packed)
    assert rl != ReadLog(8, rl.packed) or not reads
    if reads:
        assert rl[0] == reads[0] and rl[-1] == reads[-1]
        assert rl[1:4] == reads[1:4] and isinstance(rl[1:4], ReadLog)
        assert rl[::2] == reads[::2]
    assert rl.in_order()
    assert rl.data_bytes() == sum(r.length for r in reads if r.kind is ReadKind.DATA)


@given(reads_st)
def test_script_is_the_agents_entries(reads: list[ReadResult]) -> None:
    rl = ReadLog.from_results(9, reads)
    entries = [(int(r.kind), r.length) for r in reads]
    assert rl.script() == b"".join(proto.ENTRY.pack(k, v) for k, v in entries)
    assert proto.script_packets_packed(rl.script()) == proto.script_packets(entries)


def test_script_packets_split_at_the_shims_chunk() -> None:
    n = proto.SCRIPT_CHUNK + 5
    rl = ReadLog.from_tuples(1, [(i, 0, i % 7) for i in range(n)])
    packets = proto.script_packets_packed(rl.script())
    counts = [proto.SCRIPT.unpack_from(p, proto.HDR.size)[0] for p in packets]
    assert counts == [proto.SCRIPT_CHUNK, 5]


def test_out_of_order_is_seen() -> None:
    assert not ReadLog.from_tuples(1, [(5, 0, 1), (4, 0, 1)]).in_order()
    assert not ReadLog.from_tuples(1, [(5, 0, 1), (5, 0, 1)]).in_order()


@given(
    st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.sampled_from(list(ReadKind)), st.integers(0, 9)),
        max_size=2600,  # past two of the thousand-entry unpacks `summary` does at once
    ),
    st.data(),
)
def test_summary_is_the_naive_one(reads: list[tuple[int, int, int]], data: st.DataObject) -> None:
    if reads and data.draw(st.booleans()):  # mostly ascending, as the logger sends them
        reads = [(i, k, n) for i, (_, k, n) in enumerate(reads)]
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(reads) - 1))
            reads[i] = (max(0, i - 1), reads[i][1], reads[i][2])  # one step back (or equal)
    rl = ReadLog.from_tuples(1, reads)
    orders = [o for o, _, _ in reads]
    ordered = all(a < b for a, b in zip(orders, orders[1:], strict=False))
    data_bytes = sum(n for _, k, n in reads if k == ReadKind.DATA)
    assert rl.summary() == (ordered, data_bytes)
    assert rl.in_order() == ordered and rl.data_bytes() == data_bytes


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="whole number"):
        ReadLog(1, b"\x00" * 14)
    with pytest.raises(ValueError, match="unknown read kind 7"):
        ReadLog(1, struct.pack("!QBI", 0, 7, 0))
    with pytest.raises(IndexError):
        ReadLog(1)[0]


@given(reads_st)
def test_wire_round_trip(reads: list[ReadResult]) -> None:
    frame = wire.encode(wire.RecoverReads(3, 9, reads))
    (back,) = wire.Decoder().feed(frame)
    assert isinstance(back, wire.RecoverReads) and isinstance(back.reads, ReadLog)
    assert back.reads == reads
    # a ReadLog is sent as it is
    assert wire.encode(wire.RecoverReads(3, 9, back.reads)) == frame


def test_wire_refuses_an_unknown_kind() -> None:
    body = struct.pack("!IQ", 3, 9) + struct.pack("!QBI", 0, 9, 0)
    frame = wire.frame(wire.FrameType.RECOVER_READS, body)
    with pytest.raises(RemoteProtocolError, match="unknown read kind 9"):
        wire.Decoder().feed(frame)
