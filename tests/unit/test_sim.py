"""Sans-IO simulation: client TCP ⇄ faulty link ⇄ SSW core ⇄ toy kernel ⇄ toy shim ⇄ app,
with an in-memory logger; the server crashes at every step and recovers, through the
same core objects production runs (`Connection`, `OutputCommit`, `plan_recovery`,
`OutstreamCheck`).

`simnet` checks invariants 1-6 as the run goes (see its module docstring); here we
assert that no violation was recorded and the client's stream is exactly the one
the final incarnation of the application produced — and, with the glue or the
core broken on purpose, that the monitors do notice.
"""

from __future__ import annotations

import random

import pytest
import simnet
from simnet import Config, Result, run

from ftcp.core import conn as conn_mod
from ftcp.core.commit import OutputCommit
from ftcp.core.conn import Connection
from ftcp.core.replay import Divergence, OutstreamCheck, RecoveryPlan

POLICIES = ("conditional", "lazy", "eager", "basic")


def crash_kind(rng: random.Random) -> str:
    """How the process dies: silently (supervisor notices), or its TCP emits a FIN/RST."""
    return rng.choice(("silent", "fin", "rst"))


def ok(r: Result) -> bool:
    return not r.violations and r.client_received == r.expected


def explain(r: Result) -> str:
    return (
        f"violations={r.violations[:5]} stream_ok={r.client_received == r.expected} "
        f"crashes={r.crashes} recoveries={r.recoveries} trace={r.trace[-6:]}"
    )


_baseline: dict[tuple[str, int], int] = {}


def baseline_steps(policy: str, seed: int) -> int:
    key = (policy, seed)
    if key not in _baseline:
        r = run(Config(seed=seed, policy=policy))
        assert ok(r), explain(r)
        _baseline[key] = r.steps
    return _baseline[key]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("faults", [False, True])
def test_exchange_without_crash(policy: str, faults: bool) -> None:
    cfg = Config(seed=3, policy=policy)
    if not faults:
        cfg.loss = cfg.dup = cfg.reorder = 0.0
    r = run(cfg)
    assert ok(r), explain(r)
    assert r.client_received.endswith(b"BYE\n") and r.client_received.count(b"\n") == 5
    assert r.crashes == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_crash_at_every_step(policy: str) -> None:
    """One crash, at each step of the exchange in turn (handshake, data, close...)."""
    seed = 1
    n = baseline_steps(policy, seed)
    recovered = 0
    for k in range(n):
        r = run(Config(seed=seed, policy=policy, crash_at=(k,), crash_kind=crash_kind))
        assert ok(r), f"crash at step {k}: {explain(r)}"
        recovered += r.recoveries
    assert recovered > n // 2  # most crash points needed a real recovery


@pytest.mark.parametrize("policy", ["lazy", "conditional"])
def test_crash_at_every_step_with_the_client_ahead(policy: str) -> None:
    """The client sends every request at once and the server blocks in write while 100
    bytes are unacked; the rebuilt kernel's receive buffer is smaller than the first
    one's. After a crash the client is past the new kernel's window, and its pure acks
    must still reach the kernel (Linux drops a segment past its window, ack unread):
    otherwise the server blocks in write for good, its window shut."""
    reqs = tuple(b"%d:" % i + b"y" * 90 + b"\n" for i in range(8))
    cfg = Config(
        seed=1, policy=policy, pipelined=True, sndbuf=100, requests=reqs, server_rcvbufs=(600, 200)
    )
    base = run(cfg)
    assert ok(base), explain(base)
    stalled = 0
    for k in range(0, base.steps, 2):
        cfg.crash_at, cfg.crash_kind = (k,), crash_kind
        r = run(cfg)
        assert ok(r), f"crash at step {k}: {explain(r)}"
        stalled += r.fabricated.get("refill", 0) > 0
    assert stalled > base.steps // 4  # most crash points refilled a rebuilt kernel


@pytest.mark.parametrize("seed", [5, 8])
def test_crash_during_recovery(seed: int) -> None:
    """A second crash while the first recovery is under way: recovery starts again."""
    policy = POLICIES[seed % len(POLICIES)]
    n = baseline_steps(policy, seed)
    for k in range(0, n, 3):
        for gap in (5, 23, 41):
            cfg = Config(seed=seed, policy=policy, crash_at=(k, k + gap), crash_kind=crash_kind)
            r = run(cfg)
            assert ok(r), f"crashes at {k}, {k + gap}: {explain(r)}"


def test_scales_and_timestamps_change_across_incarnations() -> None:
    """The sim really exercises translation: the rebuilt kernel has another ISN, window
    scale and timestamp clock than the original one."""
    cfg = Config(seed=1, crash_at=(120,))
    assert len(set(cfg.server_ws[:2])) == 2 and len(set(cfg.server_isns[:2])) == 2
    r = run(cfg)
    assert ok(r), explain(r)
    assert r.recoveries == 1 and "REPLAY_SYN_SENT => REPLAYING" in r.trace


# ----------------------------------------------------------- the monitors have teeth


def sweep(cfg_kw: dict, steps=range(40, 400, 9)) -> list[Result]:
    out = []
    for k in steps:
        try:
            out.append(run(Config(crash_at=(k,), crash_kind=crash_kind, max_steps=4000, **cfg_kw)))
        except (AssertionError, Exception) as e:  # a broken core may also wedge the run
            out.append(Result(0, [f"run failed: {e}"], b"", b"?", 1, 0, 0, {}))
    return out


def test_monitor_catches_unclamped_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conn_mod, "clamp_ack_window", lambda k, w, ks, lim, cs: (k, w))
    r = run(Config(seed=1))
    assert any(v.startswith("inv1: ack") for v in r.violations)
    assert any(v.startswith("inv6") for v in r.violations)


def test_monitor_catches_early_synack() -> None:
    r = run(Config(seed=1, mutations=frozenset({"no_handshake_hold"})))
    assert any(v.startswith("inv2") for v in r.violations)


@pytest.mark.parametrize("early", [1, 1000])
def test_monitor_catches_output_before_reads_logged(
    monkeypatch: pytest.MonkeyPatch, early: int
) -> None:
    """Production's write gate (`OutputCommit`, what the engine publishes to the shim)
    releasing one read too early, or every read at once, is caught (one read early
    shows when requests are pipelined: a read that completes one follows at once)."""
    real = OutputCommit.logged
    monkeypatch.setattr(OutputCommit, "logged", lambda self, n: real(self, n + early))
    r = run(Config(seed=1, logger_delay=(0.005, 0.02), pipelined=True))
    assert any(v.startswith("output commit") for v in r.violations)


@pytest.mark.parametrize("policy", ["lazy", "conditional"])
def test_nondeterministic_server_divergence_is_reported(policy: str) -> None:
    """A server that writes something other than its inputs (its incarnation): every
    divergence the replay meets is reported (`OutstreamCheck`), and nothing else."""
    results = sweep({"seed": 1, "policy": policy, "nondeterministic": True})
    assert all(not r.violations for r in results), [r.violations[:3] for r in results]
    assert sum(r.divergences for r in results) > len(results) // 3


def test_monitor_catches_a_replay_check_that_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OutstreamCheck, "check", lambda self, cid, total, crc, where: None)
    results = sweep({"seed": 1, "nondeterministic": True})
    assert any(any(v.startswith("inv5") for v in r.violations) for r in results)


def test_monitor_catches_a_replay_check_that_cries_wolf(monkeypatch: pytest.MonkeyPatch) -> None:
    real = OutstreamCheck.check

    def off_by_one(self, cid: int, total: int, crc: int, where: str) -> Divergence | None:
        return real(self, cid, total, crc ^ 1, where)

    monkeypatch.setattr(OutstreamCheck, "check", off_by_one)
    results = sweep({"seed": 1})
    assert any(any(v.startswith("inv5") for v in r.violations) for r in results)


def test_monitor_catches_unexplained_close() -> None:
    results = sweep({"seed": 1, "mutations": frozenset({"deliver_dropped_close"})})
    assert any(any(v.startswith("inv4") for v in r.violations) for r in results)


def test_monitor_catches_replay_without_logged_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    real = simnet.plan_recovery

    def forgetful(log, **kw) -> RecoveryPlan:
        log.reads = []
        return real(log, **kw)

    monkeypatch.setattr(simnet, "plan_recovery", forgetful)
    results = sweep({"seed": 1})
    assert not all(ok(r) for r in results)


def test_monitor_catches_wrong_delta_seq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        RecoveryPlan, "delta_seq", lambda self, n: (self.s_isn + self.discard - n + 1) & 0xFFFFFFFF
    )
    results = sweep({"seed": 1})
    assert not all(ok(r) for r in results)


def test_monitor_catches_tsval_running_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    # no timestamp translation at all (the core also pins TSval to the last one sent, so
    # breaking only the offset would not make it run backwards)
    monkeypatch.setattr(Connection, "_ts_out", lambda self, ts_val, now: None)
    results = sweep({"seed": 1, "server_ts_bases": (10**6, 5)})
    assert any(any(v.startswith("TSval ran backwards") for v in r.violations) for r in results)
