"""Leases and epochs (host failover): never two holders, whatever the clocks and delays."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ftcp.core.lease import Fenced, Granted, LeaseBook, LeaseHolder, LeaseTerms, Wait
from ftcp.errors import LocalProtocolError

TERMS = LeaseTerms()


def test_default_terms_hold_and_detect_within_150_ms() -> None:
    TERMS.check()
    assert TERMS.detection <= 0.150


@pytest.mark.parametrize(
    "bad",
    [
        LeaseTerms(margin=0.0001, drift=0.01),  # clocks too far apart for the margin
        LeaseTerms(guard=0.2),
        LeaseTerms(heartbeat=0.08),  # no renewal fits before the guard
        LeaseTerms(duration=0),
    ],
)
def test_unsafe_terms_are_refused(bad: LeaseTerms) -> None:
    with pytest.raises(LocalProtocolError):
        bad.check()


def test_the_book_lends_epochs_in_turn_and_fences_the_old_one() -> None:
    book = LeaseBook(TERMS)
    g = book.acquire("a", 0.0)
    assert g == Granted("a", 1, pytest.approx(0.1))
    assert book.acquire("b", 0.05) == Wait("a", pytest.approx(0.12))
    assert book.renew("a", 1, 0.09) == Granted("a", 1, pytest.approx(0.19))
    assert isinstance(book.acquire("b", 0.2), Wait)  # expired, not yet past the margin
    g2 = book.acquire("b", 0.21)
    assert isinstance(g2, Granted) and g2.epoch == 2
    assert book.renew("a", 1, 0.22) == Fenced(1, 2, "another epoch was lent")
    assert not book.admits(1) and book.admits(2)
    assert isinstance(book.renew("b", 2, 0.5), Fenced)  # expired: it must ask again
    assert book.acquire("b", 0.5) == Granted("b", 3, pytest.approx(0.6))


def test_a_released_lease_is_lent_at_once_and_epochs_survive_a_restart() -> None:
    book = LeaseBook(TERMS)
    book.acquire("a", 0.0)
    book.release("a", 1)
    assert book.acquire("b", 0.01) == Granted("b", 2, pytest.approx(0.11))
    again = LeaseBook(TERMS, epoch=book.epoch)  # the logger restarted
    assert again.acquire("a", 5.0).epoch == 3


def test_a_restarted_logger_lends_nothing_before_the_old_lease_could_end() -> None:
    """After a restart the logger knows the last epoch but not its holder, who may
    still hold it: nobody else gets it for a full lease plus the margin; the holder
    may renew it (the first renewal of that epoch names it)."""
    book = LeaseBook(TERMS, epoch=4, now=10.0)
    assert book.acquire("b", 10.01) == Wait("", pytest.approx(10.12))
    assert book.renew("a", 4, 10.05) == Granted("a", 4, pytest.approx(10.15))
    assert isinstance(book.renew("b", 4, 10.06), Fenced)  # a holds it now
    assert isinstance(book.acquire("b", 10.16), Wait)
    assert book.acquire("b", 10.171) == Granted("b", 5, pytest.approx(10.271))
    # nobody renews after the restart: lent once the full lease and margin are over
    book = LeaseBook(TERMS, epoch=4, now=10.0)
    assert isinstance(book.acquire("b", 10.11), Wait)
    assert book.acquire("b", 10.121).epoch == 5
    assert LeaseBook(TERMS, epoch=0, now=10.0).acquire("b", 10.0).epoch == 1  # never lent


def test_the_holder_counts_from_what_it_sent() -> None:
    h = LeaseHolder(TERMS)
    h.sent(1, 10.0)
    h.granted(1, 7)
    assert h.held and h.until == pytest.approx(10.1)
    assert h.give_up_at() == pytest.approx(10.07)
    assert not h.renew_due(10.01) and h.renew_due(10.021)
    h.sent(2, 10.03)
    h.sent(3, 10.05)
    h.granted(3, 7)
    h.granted(2, 7)  # late: older than what is known, changes nothing
    assert h.until == pytest.approx(10.15)
    assert not h.lost(10.11) and h.lost(10.121)
    h.drop()
    assert not h.held and not h.lost(11.0)


# A holder and a standby against one book, with clocks drifting apart, random delays,
# the holder cut off from the logger for a while (its link down, or it stalls) and
# the holder dying: at no real time may both hold the lease by their own clocks.


@given(
    st.floats(-TERMS.drift, TERMS.drift),
    st.floats(-TERMS.drift, TERMS.drift),
    st.floats(-TERMS.drift, TERMS.drift),
    st.lists(st.sampled_from((0.0, 0.0005, 0.002, 0.01, 0.03)), min_size=20, max_size=20),
    st.tuples(st.floats(0, 0.6), st.floats(0, 0.4)),
    st.floats(0.0, 1.5),
    st.none() | st.floats(0.0, 1.0),
)
# the tightest cases: no delay at all, clocks drifting the worst way, the holder cut off
@example(0.0, 0.0, 0.0, [0.0] * 20, (0.2, 0.3), 1.5, None)
@example(-TERMS.drift, TERMS.drift, TERMS.drift, [0.0] * 20, (0.2, 0.3), 1.5, None)
@example(TERMS.drift, -TERMS.drift, -TERMS.drift, [0.0] * 20, (0.1, 0.4), 1.5, None)
@example(0.0, 0.0, 0.0, [0.0] * 20, (0.0, 0.0), 1.5, 0.3)  # the logger restarts
@settings(max_examples=400, deadline=None)
def test_never_two_holders(
    e_a: float,
    e_b: float,
    e_l: float,
    delays: list,
    cut: tuple,
    death: float,
    restart: float | None,
) -> None:
    # each host's clock: its own origin, its own rate
    spec = {"a": (5, 1 + e_a), "b": (900, 1 + e_b), "logger": (40, 1 + e_l)}
    clock = {k: (lambda t, o=o, r=r: o + r * t) for k, (o, r) in spec.items()}
    book = LeaseBook(TERMS)
    holders = {"a": LeaseHolder(TERMS), "b": LeaseHolder(TERMS)}
    delay = iter(delays * 1000)
    events: list[tuple[float, int, str, tuple]] = []
    n = 0

    def push(t: float, what: str, arg: tuple) -> None:
        nonlocal n
        n += 1
        heapq.heappush(events, (t, n, what, arg))

    def send(t: float, frm: str, to: str, msg: tuple) -> None:
        if "a" in (frm, to) and cut[0] <= t < cut[0] + cut[1]:
            return  # the holder's link is cut
        push(t + next(delay), to, msg)

    req = 0
    for who in ("a", "b"):
        for k in range(100):
            push(0.01 * k + (0.003 if who == "b" else 0), "tick", (who,))
    if restart is not None:  # the logger restarts: it remembers the epoch, nothing else
        push(restart, "restart", ())
    served: set[str] = set()
    done_by = {"a": float("-inf"), "b": float("-inf")}
    while events:
        t, _, what, arg = heapq.heappop(events)
        if what == "restart":
            book = LeaseBook(TERMS, book.epoch, clock["logger"](t))
        elif what == "tick":
            (who,) = arg
            if who == "a" and t >= death:
                continue  # dead: sends nothing more
            h = holders[who]
            now = clock[who](t)
            if h.lost(now):  # it starts giving up: done only by the end of its lease
                done_by[who] = h.until
                h.drop()
            if not h.held or h.renew_due(now):
                req += 1
                h.sent(req, now)
                send(t, who, "logger", (who, req, h.epoch))
        elif what == "logger":
            who, r, epoch = arg
            now = clock["logger"](t)
            ans = book.renew(who, epoch, now) if epoch else book.acquire(who, now)
            send(t, "logger", who, (r, ans))
        else:  # an answer reaches a holder
            r, ans = arg
            h = holders[what]
            if isinstance(ans, Granted):
                if h.held and ans.epoch != h.epoch:
                    done_by[what] = h.until
                    h.drop()
                h.granted(r, ans.epoch)
            elif isinstance(ans, Fenced):
                done_by[what] = max(done_by[what], h.until)
                h.drop()
        # the monitor: who serves now (holds the lease, or has not finished giving it up,
        # by its own clock; and lives)
        serving = [
            who
            for who, h in holders.items()
            if clock[who](t) < max(h.until if h.held else done_by[who], done_by[who])
            and not (who == "a" and t >= death)
        ]
        assert len(serving) <= 1, f"two holders at {t:.4f}: {serving}"
        served.update(serving)
    assert served  # someone held it
