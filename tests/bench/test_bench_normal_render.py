"""`ftcp bench normal` summary and tables on synthetic results: timeouts, skips and errors
are shown as such and never counted as a pass (no lab, no root)."""

from __future__ import annotations

from typing import Any

from ftcp.bench import normal


def _cell(mbps: float, seconds: float, ratio: float | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "status": "ok",
        "cap_s": 10.0,
        "runs": [],
        "mbps": mbps,
        "seconds": seconds,
        "rtt_ms": 1.5,
        "acks_in": 12,
    }
    if ratio is not None:
        c["ratio"] = ratio
    return c


def _rr(rps: float, ratio: float | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"status": "ok", "p50_ms": 1.0, "p99_ms": 2.0, "rps": rps}
    if ratio is not None:
        r["rps_ratio"] = ratio
    return r


def _doc() -> dict[str, Any]:
    clean = {w: {d: _cell(10.0, 1.0) for d in normal.DIRECTIONS} for w in normal.WORKLOADS}
    clean["rr"] = {str(c): _rr(1000.0) for c in normal.RR_CONNS}
    lazy = {w: {d: _cell(9.5, 1.05, 0.95) for d in normal.DIRECTIONS} for w in normal.WORKLOADS}
    lazy["rr"] = {str(c): _rr(900.0, 0.9) for c in normal.RR_CONNS}
    lazy["large"]["up"] = _cell(9.2, 1.09, 0.92)
    basic = {w: {d: _cell(9.9, 1.01, 0.99) for d in normal.DIRECTIONS} for w in normal.WORKLOADS}
    basic["bulk"]["up"] = {
        "status": "timeout",
        "cap_s": 10.0,
        "runs": [],
        "bytes_done": 5,
        "rtt_ms": 3.0,
        "acks_in": 4,
        "ratio_upper_bound": 0.1,
        "mbps_upper_bound": 0.8,
    }
    basic["large"]["up"] = {"status": "skipped", "why": "the 1 MiB transfer timed out"}
    basic["large"]["down"] = {"status": "error", "why": "boom", "cap_s": 20.0}
    basic["rr"] = {"1": {"status": "error", "why": "boom"}, "16": _rr(800.0, 0.8)}
    res: dict[str, Any] = {
        "sizes": {"bulk": normal.MIB, "large": 10 * normal.MIB},
        "loadavg_start": [1.0, 1.0, 1.0],
        "loadavg_end": [2.0, 2.0, 2.0],
        "modes": {"clean": clean, "basic": basic, "lazy": lazy},
    }
    res["summary"] = normal._summary("10-10", res, ["basic", "lazy"])
    plan = normal.Plan(quick=False).to_json()
    return {
        "plan": plan,
        "strategies": ["basic", "lazy"],
        "logger_nagle": "off",
        "results": {"10-10": res},
    }


def test_summary_prefers_measured_and_takes_the_worst_cell() -> None:
    s = _doc()["results"]["10-10"]["summary"]
    assert s["per_strategy"]["basic"]["is_upper_bound"] is True
    assert s["per_strategy"]["basic"]["worst_ratio"] == 0.0  # the error cell
    assert s["best_strategy"] == "lazy"
    assert s["ratio"] == 0.92 and s["worst_cell"] == "large up"
    assert s["target"] == 0.90 and s["pass"] is True


def test_summary_fails_on_a_bound_even_above_target() -> None:
    doc = _doc()
    res = doc["results"]["10-10"]
    del res["modes"]["lazy"]
    s = normal._summary("10-10", res, ["basic"])
    assert s["best_strategy"] == "basic" and s["is_upper_bound"] and s["pass"] is False


def test_render_shows_timeouts_skips_errors() -> None:
    text = normal.render(_doc())
    assert "TIMEOUT 10s (<0.10)" in text
    assert "skipped" in text and "ERROR" in text
    assert "9.2 (0.92)" in text
    assert "worst ratio 0.920 (large up) target >= 0.90: PASS" in text
    assert "logger Nagle: off" in text
