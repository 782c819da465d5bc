"""Invariant 3 (output commit): `OutputCommit` against a model, in any interleaving."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftcp.core.commit import OutputCommit
from ftcp.errors import RemoteProtocolError

# an application's history: reads by 1-3 processes (protected or not), logger acks
# (each covering some of the reads sent so far) and process exits, in any order
step = st.one_of(
    st.tuples(st.just("read"), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(1, 3)),
)


@given(st.lists(step, max_size=60))
@settings(max_examples=300)
def test_released_reads_are_logged_and_in_order(steps: list[tuple]) -> None:
    c = OutputCommit()
    history: list[tuple[int, int, int | None]] = []  # (source, seq, order) as reported
    seqs = {1: 0, 2: 0, 3: 0}
    alive = {1, 2, 3}
    logged_next = 0
    released = {1: 0, 2: 0, 3: 0}
    for s in steps:
        if s[0] == "read":
            _, src, protected = s
            if src not in alive:
                continue
            seqs[src] += 1
            order = c.read(src, seqs[src], 100 + src, protected)
            assert (order is None) == (not protected)
            history.append((src, seqs[src], order))
        elif s[0] == "ack":
            logged_next = min(c.next_order, logged_next + s[1])
            c.logged(logged_next)
        else:
            alive.discard(s[1])
            c.end(s[1])
        for src, n in c.releases().items():
            assert src in alive and n > released[src]  # only live sources, only forward
            released[src] = n
        # the model: a read is released iff it and every read reported before it is
        # logged or unprotected
        ok = 0
        while ok < len(history) and (history[ok][2] is None or history[ok][2] < logged_next):
            ok += 1
        for src in alive:
            want = max((q for s_, q, _ in history[:ok] if s_ == src), default=0)
            assert released[src] == want == c.released(src)
            assert c.may_output(src) == (want == seqs[src])
    # protected orders are dense from 0, in report order
    orders = [o for _, _, o in history if o is not None]
    assert orders == list(range(len(orders)))


def test_a_read_out_of_turn_is_the_shims_fault() -> None:
    c = OutputCommit()
    c.read(1, 1, 7, True)
    with pytest.raises(RemoteProtocolError, match="read 3 of source 1 after 1"):
        c.read(1, 3, 7, True)


def test_unstable_reads_per_connection() -> None:
    c = OutputCommit()
    c.read(1, 1, 7, True)
    c.read(1, 2, 8, False)
    c.read(2, 1, 7, True)
    assert (c.unstable(7), c.unstable(8)) == (2, 1)
    c.logged(1)
    assert c.releases() == {1: 2}
    assert (c.unstable(7), c.unstable(8)) == (1, 0)
    c.logged(2)
    assert c.releases() == {2: 1} and c.unstable(7) == 0
