"""Table V of `ftcp bench paper`: summary statistics and the report's rows (no lab)."""

from __future__ import annotations

from typing import Any

import pytest

from ftcp.bench import paper
from ftcp.bench import published as pub


def _samples(n: int, replay_s: float = 0.01, reads: int = 400) -> list[dict[str, Any]]:
    return [
        {"run": i + 1, "restart_s": 0.002 + 1e-4 * i, "replay_s": replay_s + 1e-3 * i,
         "reads": reads + i, "fetch_ms": 5.0 + i, "startup_ms": 70.0, "stall_ms": 900.0}
        for i in range(n)
    ]  # fmt: skip


def _doc(recovery: dict[str, Any]) -> dict[str, Any]:
    return {
        "quick": False, "runs": 12, "recovery_runs": 3,
        "recovery_runs_of": {"handshake": 3, "repair": 3}, "topologies": {},
        "interrupted": False, "date": "today", "command": "ftcp bench paper", "wall_s": 1.0,
        "machine": {"kernel": "k", "cpu": "c", "cores": 1, "python": "p", "tcpdump": "t",
                    "load_start": [1.0, 2.0, 3.0], "load_end": [0.5, 0.25, 0.125]},
        "recovery": recovery,
    }  # fmt: skip


def _entry(setup: str, restore: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "setup": setup, "restore": restore, "status": "measured", "reason": "",
        "samples": samples, "failures": [], "summary": paper.summarize_recovery(samples),
    }  # fmt: skip


def test_summarize_recovery_average_read_time_is_replay_over_reads() -> None:
    smp = _samples(4)
    s = paper.summarize_recovery(smp)
    per_run = [x["replay_s"] * 1e3 / x["reads"] for x in smp]
    assert s["read_ms"] == pytest.approx(sum(per_run) / 4)
    assert s["replay_s"] == pytest.approx(sum(x["replay_s"] for x in smp) / 4)
    assert s["restart_ms"] == pytest.approx(1e3 * sum(x["restart_s"] for x in smp) / 4)
    assert s["reads"] == pytest.approx(401.5)
    assert s["fetch_ms"] == pytest.approx(6.5) and s["fetch_ci_ms"] > 0
    assert s["restart_ci_ms"] > 0 and s["replay_ci_s"] > 0 and s["read_ci_ms"] > 0


def test_recovery_keys() -> None:
    assert paper.recovery_key("local", "handshake") == "local"
    assert paper.recovery_key("10-10", "repair") == "10-10 repair"
    assert paper.RESTORES[0] == paper.RESTORE_IN_PAPER == "handshake"
    assert paper.RECOVERY_PROBE is paper.kill9_probe  # Table V is measured by default
    assert paper.recovery_unavailable() is None


def test_table_v_rows_ours_next_to_the_papers() -> None:
    rec = {
        paper.recovery_key(s, r): _entry(s, r, _samples(3))
        for s in pub.RECOVERY_SETUPS
        for r in paper.RESTORES
    }
    rec["local repair"] = {
        "setup": "local", "restore": "repair", "status": "not measured",
        "reason": "the logger did not start", "samples": [],
    }  # fmt: skip
    report = paper.render_report(_doc(rec))
    t5 = report.split("## Table V", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in t5.splitlines():
        if line.startswith(("| 10-10 |", "| 10-100 |", "| Local |")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells
    assert len(rows) == 6
    # the paper's rows first, its values alongside ours
    order = list(rows)
    assert order[:3] == [("10-10", "handshake"), ("10-100", "handshake"), ("Local", "handshake")]
    local = rows[("Local", "handshake")]
    s = rec["local"]["summary"]
    assert local[2] == f"{s['restart_ms']:.2f} ± {s['restart_ci_ms']:.2f}"
    assert local[3] == "22.44 ± 14.08"  # the paper's restart
    assert local[4] == f"{s['replay_s'] * 1e3:.2f} ± {s['replay_ci_s'] * 1e3:.2f}"
    assert local[5] == "56.00 ± 0.25"  # the paper's replay, in ms
    assert local[7] == "0.039 ± 0.0002"
    assert local[11] == "3"
    assert rows[("10-10", "handshake")][5] == "2571.00 ± 2.01"
    # the local logger run ahead of the host (not in the paper): next to the paper's Local
    nice = [ln for ln in t5.splitlines() if ln.startswith("| Local, logger nice −10 | handshake |")]
    assert len(nice) == 1 and "| 56.00 ± 0.25 |" in nice[0]
    # repair: extra rows, marked, no paper values
    rep = rows[("10-100", "repair†")]
    assert rep[3] == rep[5] == rep[7] == "—"
    assert "† not in the paper" in t5
    assert rows[("Local", "repair†")][2] == "not measured"
    tail = report.split("## Not measured, and why", 1)[1]
    assert "Table V Local (repair): not measured — the logger did not start" in tail
    assert "Table V Local (handshake)" not in tail
    # the load average is recorded
    assert "1.00 2.00 3.00 / 0.50 0.25 0.12" in report
    # what restart and replay include is said
    assert "excludes the" in t5 and "log fetch" in t5
