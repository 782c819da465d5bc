"""`ftcp.lab.services.start_logger`: a real logger in a lab host, at the nice value asked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftcp.lab.services import start_logger

pytestmark = pytest.mark.root


def _nice(pid: int, tid: str) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice


def test_logger_started_at_a_nice_value(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every thread of it (the loop and the store's committer) runs at that value."""
    lab = lab_factory("unshaped")
    ip = lab.ip("logger")
    p = start_logger(lab, "logger", ip, 7007, tmp_path / "a", nice=-7)
    q = start_logger(lab, "logger", ip, 7008, tmp_path / "b")
    try:
        tasks = os.listdir(f"/proc/{p.pid}/task")
        assert len(tasks) >= 2  # the loop and the committer
        assert {_nice(p.pid, t) for t in tasks} == {-7}
        assert {_nice(q.pid, t) for t in os.listdir(f"/proc/{q.pid}/task")} == {os.nice(0)}
    finally:
        for proc in (p, q):
            proc.terminate()
            proc.wait(10)
