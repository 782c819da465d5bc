"""Fixtures for the NSW tests (helpers live in nswhelpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nswhelpers import Recorder, Servers

from ftcp.nsw.agent import AgentThread
from ftcp.nsw.build import shim_path


@pytest.fixture(scope="session")
def shim() -> str:
    return str(shim_path())


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_agent(tmp_path: Path, recorder: Recorder) -> Iterator[Callable[..., AgentThread]]:
    started: list[AgentThread] = []

    def make(**kwargs: Any) -> AgentThread:
        at = AgentThread(tmp_path / f"agent{len(started)}.sock", recorder, **kwargs)
        at.__enter__()
        started.append(at)
        return at

    yield make
    for at in started:
        at.stop()


@pytest.fixture
def servers(shim: str) -> Iterator[Servers]:
    s = Servers(shim)
    yield s
    s.kill_all()
