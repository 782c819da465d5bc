"""Fixtures for logger tests (helpers live in logger_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from logger_helpers import SECRET, LoggerProcess


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(SECRET + b"\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def logger_proc(tmp_path: Path, secret_file: Path) -> Iterator[list[LoggerProcess]]:
    """A list the test appends spawned loggers to; every one is stopped at the end."""
    procs: list[LoggerProcess] = []
    yield procs
    for p in procs:
        p.kill9()
        if p.proc.stdout is not None:
            p.proc.stdout.close()
