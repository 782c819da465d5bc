"""`ftcp bench normal --quick` end to end on one topology and one strategy: JSON structure,
every figure measured (no placeholders), ratios consistent with the raw numbers. No timing
assertions: the machine is shared."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftcp.bench import normal

FTCP = [sys.executable, "-c", "from ftcp.cli import main; main()"]
NULLABLE = {"front_rate_bps"}  # unshaped: no configured rate


def _no_placeholders(x: Any, where: str = "") -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            if v is None:
                assert k in NULLABLE, f"{where}.{k} is None"
            else:
                _no_placeholders(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _no_placeholders(v, f"{where}[{i}]")
    elif isinstance(x, float):
        assert math.isfinite(x), f"{where} = {x}"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _check_transfer_cell(cell: dict[str, Any], nbytes: int) -> None:
    assert cell["status"] in ("ok", "timeout"), cell
    assert cell["runs"] and cell["cap_s"] > 0
    for r in cell["runs"]:
        assert r["seconds"] > 0 and r["cap_s"] == cell["cap_s"]
        assert _close(r["mbps"], r["bytes"] * 8 / r["seconds"] / 1e6)
        assert r["rtt_ms"] > 0 and r["rtt_source"].startswith("tcpi_")
        assert r["acks_in"] >= 1  # the SYN-ACK at least
        assert r["segs_in"] >= r["acks_in"] and r["segs_out"] >= r["acks_out"] >= 1
        assert r["retrans"] >= 0
        if not r["timeout"]:
            assert r["bytes"] == nbytes
    if cell["status"] == "ok":
        assert not any(r["timeout"] for r in cell["runs"])
        assert _close(cell["mbps"], statistics.median(r["mbps"] for r in cell["runs"]))
        assert _close(cell["rtt_ms"], statistics.median(r["rtt_ms"] for r in cell["runs"]))
    else:
        assert cell["runs"][-1]["timeout"]


def _check_rr(r: dict[str, Any], conns: int) -> None:
    assert r["status"] == "ok" and r["conns"] == conns
    assert r["requests"] > 0 and r["seconds"] > 0
    assert _close(r["rps"], r["requests"] / r["seconds"])
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert r["mean_ms"] > 0


@pytest.mark.root
@pytest.mark.slow
def test_bench_normal_quick_unshaped_lazy(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    r = subprocess.run(
        [
            *FTCP,
            "bench",
            "normal",
            "--quick",
            "--topology",
            "unshaped",
            "--ack-strategy",
            "lazy",
            "--out",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "normal.json").read_text())
    _no_placeholders(doc)

    # structure
    assert doc["bench"] == "normal"
    assert doc["plan"]["quick"] is True and doc["plan"]["bulk_reps"] == 1
    assert doc["strategies"] == ["lazy"] and doc["topologies"] == ["unshaped"]
    assert doc["targets"] == {"unshaped": 0.20}
    for k in ("loadavg_start", "loadavg_end"):
        assert len(doc["host"][k]) == 3
    assert doc["host"]["cpus"] >= 1
    for k in ("throughput", "rtt", "acks", "rr", "summary"):
        assert doc["method"][k]
    assert list(doc["results"]) == ["unshaped"]
    res = doc["results"]["unshaped"]
    assert len(res["loadavg_start"]) == 3 and len(res["loadavg_end"]) == 3
    assert res["sizes"] == {"bulk": normal.MIB, "large": 8 * normal.MIB}
    assert set(res["modes"]) == {"clean", "lazy"}

    # every figure measured; ratios from the raw numbers
    modes = res["modes"]
    ratios = {}
    for w in normal.WORKLOADS:
        for d in normal.DIRECTIONS:
            clean, prot = modes["clean"][w][d], modes["lazy"][w][d]
            _check_transfer_cell(clean, res["sizes"][w])
            assert clean["status"] == "ok"
            _check_transfer_cell(prot, res["sizes"][w])
            if prot["status"] == "ok":
                assert _close(prot["ratio"], prot["mbps"] / clean["mbps"])
                ratios[f"{w} {d}"] = prot["ratio"]
            else:  # an honest timeout: a bound, not a number
                assert "mbps" not in prot and "ratio" not in prot
                assert _close(prot["ratio_upper_bound"], clean["seconds"] / prot["cap_s"])
                ratios[f"{w} {d}"] = prot["ratio_upper_bound"]
    for conns in normal.RR_CONNS:
        c, p = modes["clean"]["rr"][str(conns)], modes["lazy"]["rr"][str(conns)]
        _check_rr(c, conns)
        _check_rr(p, conns)
        assert _close(p["rps_ratio"], p["rps"] / c["rps"])
        assert _close(p["p50_ratio"], p["p50_ms"] / c["p50_ms"])
        assert _close(p["p99_ratio"], p["p99_ms"] / c["p99_ms"])

    # summary: the worst ratio, against the target
    s = res["summary"]
    worst = min(ratios, key=lambda k: ratios[k])
    assert s["best_strategy"] == "lazy" and s["target"] == 0.20
    assert s["worst_cell"] == worst and _close(s["ratio"], ratios[worst])
    assert s["pass"] == (not s["is_upper_bound"] and s["ratio"] >= 0.20)

    # the tables show the same figures
    text = r.stdout
    verdict = "PASS" if s["pass"] else "FAIL"
    assert f"worst ratio {'<' if s['is_upper_bound'] else ''}{s['ratio']:.3f}" in text
    assert f"target >= 0.20: {verdict}" in text
    for title in ("throughput, Mbit/s", "client RTT during transfer", "request/response"):
        assert title in text
    assert "(QUICK)" in text
