"""`ftcp bench logger` end to end, briefly (the real numbers come from the bench)."""

from __future__ import annotations

import json

from ftcp.bench.logger import run_bench


def test_bench_logger_smoke(tmp_path) -> None:
    out = tmp_path / "logger.json"
    doc = run_bench(out, seconds=0.3, policies=("batch",), conn_counts=(1, 4))
    assert json.loads(out.read_text()) == doc
    kinds = {(r["conns"], r["kind"]) for r in doc["results"]}
    assert kinds == {(1, "segments"), (4, "segments"), (4, "reads")}
    for r in doc["results"]:
        assert r["records"] > 0 and r["records_per_s"] > 0 and r["ack_p99_ms"] >= r["ack_p50_ms"]
