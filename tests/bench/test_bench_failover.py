"""`ftcp bench failover` end to end, briefly: every figure measured and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

FTCP = [sys.executable, "-c", "from ftcp.cli import main; main()"]


def test_bench_failover_splits_the_stall(tmp_path: Path) -> None:
    r = subprocess.run(
        [*FTCP, "bench", "failover", "--runs", "2", "--topology", "10-100",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "failover.json").read_text())
    (row,) = doc["rows"]
    assert row["ok"] and row["runs"] == 2 and "keepalived" in doc["anchor"]
    for k in ("stall_ms", "detection_ms", "address_ms", "startup_ms", "rebuild_ms", "replay_ms"):
        assert 0 < row[k]["p50"] <= row[k]["p99"] <= row[k]["max"], (k, row[k])
    # the client cannot see the server again before the failure was detected
    assert row["stall_ms"]["p50"] > row["detection_ms"]["p50"]
    assert row["crash_stall_ms"]["p50"] > 0
    assert "detection" in r.stdout and "stall" in r.stdout
