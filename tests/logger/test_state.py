"""AppState.apply: the one place records change logger state (sans-IO)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from logger_helpers import handshake, segments

from ftcp.core import seq
from ftcp.core.records import Close, CloseHow, Finished, InSegment, ReadKind, ReadResult, WriteMark
from ftcp.logger.state import AppState


def test_read_order_watermark_waits_for_gaps() -> None:
    app = AppState("a")
    app.apply([handshake(1)])
    a = app.apply([ReadResult(1, 0, ReadKind.DATA, 5), ReadResult(1, 2, ReadKind.EAGAIN)])
    assert a.next_order == 1 and app.next_order == 1
    a = app.apply([ReadResult(1, 3, ReadKind.EOF)])
    assert a.next_order is None
    a = app.apply([ReadResult(1, 1, ReadKind.DATA, 7)])
    assert a.next_order == 4
    assert [r.order for r in app.recovery()[0].reads] == [0, 1, 2, 3]  # sorted for recovery


@given(
    st.permutations(range(12)),
    st.lists(st.integers(0, 3), min_size=12, max_size=12),
    st.lists(st.sampled_from([1, 2]), min_size=12, max_size=12),
    st.integers(0, 12),
)
def test_recovery_reads_are_sorted_whichever_order_they_came(
    orders: list[int], kinds: list[int], conns: list[int], cut: int
) -> None:
    """Reads of two connections in any arrival order, in two batches: kept as they came
    while each connection's came in order, sorted otherwise; a recovery gets every
    read, kind and length of each connection, by order."""
    app = AppState("a")
    app.apply([handshake(1), handshake(2)])
    reads = [ReadResult(conns[o], o, ReadKind(kinds[o]), 100 + o) for o in orders]
    app.apply(reads[:cut])
    app.apply(reads[cut:])
    for lg in app.recovery():
        cid = lg.handshake.conn_id
        want = sorted((r for r in reads if r.conn_id == cid), key=lambda r: r.order)
        assert list(lg.reads) == want


def test_server_seq_is_wrap_aware_max_of_client_acks() -> None:
    s_isn = 0xFFFFFFF0
    app = AppState("a")
    app.apply([handshake(1, s_isn=s_isn)])
    assert app.conns[1].server_seq == seq.add(s_isn, 1)
    app.apply([InSegment(1, 1001, seq.add(s_isn, 40), 100)])  # wrapped past 0
    app.apply([InSegment(1, 1001, seq.add(s_isn, 20), 90)])  # older ack: ignored
    c = app.conns[1]
    assert c.server_seq == seq.add(s_isn, 40) and c.client_window == 90


def test_reassembly_acks_and_fin() -> None:
    app = AppState("a")
    app.apply([handshake(1, c_isn=10)])
    segs = segments(1, 10, b"abcdefghij", mss=4)
    a = app.apply([segs[1]])
    assert a.streams == {}  # nothing contiguous yet: no new watermark
    a = app.apply([segs[0]])
    assert a.streams == {1: (19, 19)}
    last = segs[2]
    a = app.apply([InSegment(1, last.seq, last.ack, last.window, True, payload=last.payload)])
    assert a.streams == {1: (21, 22)}  # ack_limit counts the FIN
    log = app.recovery()[0]
    assert log.instream == b"abcdefghij" and log.client_fin


def test_refused_records_are_reported_not_raised() -> None:
    app = AppState("a")
    a = app.apply([InSegment(7, 1, 1, 1, payload=b"x")])
    assert a.errors and "unknown connection 7" in a.errors[0]
    app.apply([handshake(1, c_isn=0)])
    app.apply([InSegment(1, 1, 1, 1, payload=b"abc")])
    a = app.apply([InSegment(1, 1, 1, 1, payload=b"abd")])
    assert a.errors and "differs" in a.errors[0]
    assert app.recovery()[0].instream == b"abc"
    a = app.apply([handshake(1, c_isn=5)])
    assert a.errors and "differs" in a.errors[0]


def test_finished_deletes_in_connection_scoped_mode_only() -> None:
    for whole in (False, True):
        app = AppState("a", whole_history=whole)
        app.apply([handshake(1), handshake(2, order=1)])
        app.apply([WriteMark(1, 10, 99), Close(1, CloseHow.CLOSE)])
        a = app.apply([Finished(1)])
        assert a.finished == [1]
        ids = [c.handshake.conn_id for c in app.recovery()]
        assert ids == ([1, 2] if whole else [2])
        assert a.tombstones == (set() if whole else {1})
        # late records for a deleted connection are silently ignored
        assert not app.apply([InSegment(1, 1001, 5001, 1)]).errors


def test_fin_logged_in_the_batch_of_finished_is_still_acknowledged() -> None:
    """A client FIN and the Finished right behind it: the FIN's watermark is acked."""
    for whole in (False, True):
        app = AppState("a", whole_history=whole)
        app.apply([handshake(1, c_isn=10)])
        a = app.apply([InSegment(1, 11, 1, 1, True, payload=b"ab"), Finished(1)])
        assert a.streams == {1: (13, 14)} and a.finished == [1]
