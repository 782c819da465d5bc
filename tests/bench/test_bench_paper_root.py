"""`ftcp bench paper --quick` end to end on one topology: report structure, every figure
measured, ratios consistent with the raw runs, valid PNGs."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ftcp.bench import paper
from ftcp.bench import published as pub
from ftcp.bench.stats import MomentSums, SumStats

FTCP = [sys.executable, "-c", "from ftcp.cli import main; main()"]
NM = "not measured"


def _rows(report: str, heading: str) -> dict[str, list[str]]:
    """Rows of the markdown table under `heading`, keyed by their first cell."""
    part = report.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in part.splitlines():
        if line.startswith("| ") and not line.startswith("| Config") and "---" not in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].rstrip("†")] = cells
    return rows


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    return struct.unpack("!II", raw[16:24])


@pytest.mark.root
@pytest.mark.slow
def test_bench_paper_quick_10_100(tmp_path: Path) -> None:
    out = tmp_path / "paper"
    r = subprocess.run(
        [*FTCP, "bench", "paper", "--quick", "--runs", "2", "--topology", "10-100",
         "--out", str(out)],  # fmt: skip
        capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    report = (out / "report.md").read_text()
    doc = json.loads((out / "results.json").read_text())

    # structure
    for heading in ("## Methodology", "## Table III — 10-100 performance", "## Table IV",
                    "## Table V", "## Figures 3 and 4", "## Not measured, and why"):  # fmt: skip
        assert heading in report, heading
    assert "**Quick run**" in report and "2 runs per configuration" in report
    assert pub.CITATION in report
    for key in ("kernel", "CPU", "cores", "Python"):
        assert f"| {key} |" in report
    assert doc["quick"] is True and doc["runs"] == 2
    assert list(doc["topologies"]) == ["10-100"]

    configs = doc["topologies"]["10-100"]["configs"]
    assert list(configs)[: len(pub.CONFIGS)] == list(pub.CONFIGS)
    clean = configs["Clean"]
    assert clean["status"] == "measured", clean["reason"]
    rows = _rows(report, "## Table III")
    base: tuple[float, float, float] | None = None
    for name, c in configs.items():
        row = rows[name]
        if name in pub.PERFORMANCE["10-100"]:
            p = pub.PERFORMANCE["10-100"][name]
            assert row[2] == f"{p.throughput_kBps:.2f} ± {p.throughput_err_kBps:.2f}"
            assert row[4] == f"{p.pct_of_clean:.2f}%"
        if c["status"] != "measured":
            assert row[1] == NM and c["reason"]
            assert c["reason"] in report  # the reason is given
            continue
        # every figure of a measured row is there: no placeholder in our columns
        ours = [row[i] for i in (1, 3, 5, 6, 7, 8, 9, 11, 12, 14)]
        assert all(NM not in v and v not in ("", "—", "-") for v in ours), (name, row)
        runs = c["runs"]
        assert len(runs) == int(row[14]) >= 1
        # pooled figures recomputed from the raw runs
        fs, ls = SumStats(), MomentSums()
        for run in runs:
            assert run["bytes"] == pub.TRANSFER_BYTES
            assert 0 < run["r2"] <= 1 and run["throughput_ci_kBps"] >= 0
            assert run["latency_ci_ms"] >= 0 and run["acks"] > 0
            assert run["ack_series"] and (out / run["pcap"]).is_file()
            fs = fs.merge(SumStats.from_json(run["fit_sums"]))
            ls = ls.merge(MomentSums.from_json(run["latency_sums_s"]))
        fit, lat = fs.fit(), ls.mean_ci()
        s = c["summary"]
        assert s["throughput_Bps"] == pytest.approx(fit.slope, rel=1e-9)
        assert row[1] == f"{fit.slope / 1024:.2f} ± {fit.slope_ci / 1024:.2f}"
        assert row[5] == f"{fit.r2:.4f}" and 0 < fit.r2 <= 1
        assert row[7] == f"{lat.mean * 1e3:.2f} ± {lat.ci * 1e3:.2f}"
        acks = sum(run["acks"] for run in runs) / len(runs)
        assert row[11] == f"{acks:.1f}"
        if name == "Clean":
            base = (fit.slope, acks, lat.mean)
        assert base is not None  # Clean comes first
        assert row[3] == f"{100 * fit.slope / base[0]:.2f}%"
        assert row[12] == f"{acks / base[1]:.2f}"
        assert row[9] == f"{lat.mean / base[2]:.2f}"
        # throughput is physically plausible on a 10 Mbit/s link
        assert 0 < fit.slope * 8 < 10.5e6
    assert base is not None

    # Tables IV and V: a cell is a number or says "not measured" (with a reason listed)
    t4 = report.split("## Table IV", 1)[1].split("\n## ", 1)[0]
    assert "| 10-100 | Clean |" in t4
    # Table V is measured: both setups of the 10-100 lab, the paper's handshake restore
    # and the repair restore (extra rows), every cell a number next to the paper's
    t5 = report.split("## Table V", 1)[1].split("\n## ", 1)[0]
    assert NM not in t5
    assert "Table V" not in report.split("## Not measured, and why", 1)[1]
    assert doc["recovery_runs"] == 2  # --quick: as many runs as the other tables
    assert set(doc["recovery"]) == {
        "10-100", "local", "local-nice", "10-100 repair", "local repair", "local-nice repair"
    }  # fmt: skip
    assert "10-10" not in doc["recovery"]  # only setups of the measured topologies
    t5rows = {}  # (setup, restore) -> cells
    for line in t5.splitlines():
        if line.startswith(("| 10-100 |", "| Local |", "| Local, logger nice −10 |")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            t5rows[(cells[0], cells[1])] = cells
    for key, e in doc["recovery"].items():
        setup, restore = e["setup"], e["restore"]
        assert key == (setup if restore == "handshake" else f"{setup} repair")
        assert e["status"] == "measured", (key, e["reason"], e.get("failures"))
        samples = e["samples"]
        assert len(samples) == 2
        for smp in samples:
            assert 0 < smp["restart_s"] < 5 and 0 < smp["replay_s"] < 10, smp
            assert smp["reads"] >= 1 and smp["fetch_ms"] / 1e3 <= smp["replay_s"]
        s = e["summary"]
        reads = [smp["replay_s"] * 1e3 / smp["reads"] for smp in samples]
        assert s["read_ms"] == pytest.approx(sum(reads) / 2, rel=1e-9)
        label = restore if restore == "handshake" else f"{restore}†"  # † not in the paper
        row = t5rows[(paper.SETUP_NAMES.get(setup, setup), label)]
        assert row[2] == f"{s['restart_ms']:.2f} ± {s['restart_ci_ms']:.2f}"
        assert row[4] == f"{s['replay_s'] * 1e3:.2f} ± {s['replay_ci_s'] * 1e3:.2f}"
        assert row[6] == f"{s['read_ms']:.4f} ± {s['read_ci_ms']:.4f}"
        assert row[11] == "2"
        p = pub.RECOVERY[setup]
        if restore == "handshake":  # the paper's values alongside
            assert row[3] == f"{p.restart_ms:.2f} ± {p.restart_err_ms:.2f}"
            assert row[5] == f"{p.replay_s * 1e3:.2f} ± {p.replay_err_s * 1e3:.2f}"
        else:  # not in the paper
            assert row[3] == row[5] == "—"

    # figures
    for name in ("fig3.png", "fig4.png", "fig3-10-100.png", "fig4-10-100.png"):
        w, h = _png_size(out / name)
        assert w >= 400 and h >= 300
        assert f"({name})" in report or name.endswith("-10-100.png")
    assert not (out / "work").exists()  # scratch space removed


def test_bench_paper_rejects_other_topologies(tmp_path: Path) -> None:
    r = subprocess.run(
        [*FTCP, "bench", "paper", "--topology", "1g-10g", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert "10-shared" in (r.stderr + r.stdout)
    assert not re.search(r"Traceback", r.stderr)
