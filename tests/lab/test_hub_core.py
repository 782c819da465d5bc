"""The hub's sans-IO core: one bucket for every port, forwarding, delay, seeded loss."""

from __future__ import annotations

import pytest

from ftcp.lab.hub import HubCore

RATE = 10_000_000  # bit/s
FRAME = bytes(1514)


def make(**kw: object) -> HubCore:
    args: dict = dict(rate_bit=RATE, burst=6056, limit=70_000, now=0.0)
    args.update(kw)
    return HubCore(["front", "front", "front", "back", "back", "back"], **args)


def saturate(core: HubCore, ports: list[int], seconds: float, step: float = 0.0005) -> dict:
    """Offer each port far more than the rate for `seconds`; count deliveries per input."""
    delivered_bytes = 0
    now = 0.0
    while now < seconds:
        for p in ports:
            while core.queued_bytes < core.limit - 2 * len(FRAME):
                core.receive(p, FRAME, now)
        for _out, frame in core.poll(now):
            delivered_bytes += len(frame)
        now += step
    return {"bytes": core.stats.bytes_through_bucket, "delivered": delivered_bytes}


def test_one_port_gets_the_rate() -> None:
    core = make()
    r = saturate(core, [0], 2.0)
    bits = 8 * r["bytes"]
    assert 0.99 * RATE * 2.0 <= bits <= RATE * 2.0 + 8 * 6056


@pytest.mark.parametrize("step", [0.0005, 0.003, 0.02])
def test_late_polls_do_not_lose_budget(step: float) -> None:
    """A hub process scheduled late (coarse polls) still gives a backlog the full rate."""
    core = make()
    r = saturate(core, [0], 2.0, step=step)
    bits = 8 * r["bytes"]
    assert 0.98 * RATE * 2.0 <= bits <= RATE * (2.0 + step) + 8 * 6056


def test_idle_medium_caps_at_burst() -> None:
    core = make(burst=6056)
    core.receive(0, FRAME, 0.0)
    core.poll(0.0)
    for _ in range(20):  # after a long idle time only `burst` bytes go at once
        core.receive(0, FRAME, 10.0)
    out = core.poll(10.0)
    assert len(out) == 2 * 4  # 4 frames of 1514 fit in 6056 bytes; two receiving ports each


def test_all_ports_share_one_budget() -> None:
    core = make()
    r = saturate(core, [0, 3], 2.0)  # one sender on each segment
    bits = 8 * r["bytes"]
    assert 0.99 * RATE * 2.0 <= bits <= RATE * 2.0 + 8 * 6056  # not twice the rate


def test_forwarding_stays_inside_the_segment() -> None:
    core = make()
    core.receive(0, b"a" * 60, 0.0)
    core.receive(4, b"b" * 60, 0.0)
    out = core.poll(0.0)
    assert sorted((p, f[:1]) for p, f in out) == [(1, b"a"), (2, b"a"), (3, b"b"), (5, b"b")]


def test_fifo_order_across_ports() -> None:
    core = make(rate_bit=None)
    for i in range(10):
        core.receive(i % 2, bytes([i]) * 60, 0.0)
    out = [f[0] for p, f in core.poll(0.0) if p == 2]
    assert out == list(range(10))


def test_queue_limit_drops_tail() -> None:
    core = make(limit=10 * 1514)
    for _ in range(20):
        core.receive(0, FRAME, 0.0)
    assert core.stats.queue_drops == 10
    assert core.queued_bytes == 10 * 1514


def test_next_deadline_is_when_tokens_suffice() -> None:
    core = make(burst=1514)
    core.receive(0, FRAME, 0.0)
    core.receive(0, FRAME, 0.0)
    assert len(core.poll(0.0)) == 2  # first frame: bucket was full
    dl = core.next_deadline()
    assert dl == pytest.approx(1514 * 8 / RATE)
    assert core.poll(dl - 1e-5) == []
    assert len(core.poll(dl + 1e-9)) == 2
    assert core.next_deadline() is None


def test_fixed_delay() -> None:
    core = make(rate_bit=None, delay_s=0.02)
    core.receive(0, FRAME, 1.0)
    assert core.poll(1.0) == []
    assert core.next_deadline() == pytest.approx(1.02)
    assert core.poll(1.019) == []
    assert len(core.poll(1.02)) == 2


def test_seeded_loss_is_reproducible() -> None:
    def run(seed: int) -> list[int]:
        core = make(rate_bit=None, loss=0.25, seed=seed)
        got = []
        for i in range(2000):
            core.receive(0, i.to_bytes(2, "big") + bytes(58), 0.0)
            got += [int.from_bytes(f[:2], "big") for p, f in core.poll(0.0) if p == 1]
        return got

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert 0.2 < 1 - len(a) / 2000 < 0.3


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        make(loss=1.0)
    with pytest.raises(ValueError):
        make(rate_bit=0)
