"""Recovery fixtures: the integration helpers, and one `unshaped` lab with a logger."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))

from ithelpers import Env, logger_on, start_env  # noqa: E402

__all__ = ["live_logger", "unshaped"]


@pytest.fixture(scope="module")
def unshaped(module_lab_factory, tmp_path_factory) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    """An `unshaped` lab with a logger running in its logger host (module-wide)."""
    lab = module_lab_factory("unshaped")
    env = start_env(lab, tmp_path_factory.mktemp("rec"))
    try:
        yield env
    finally:
        env.close()


@pytest.fixture(autouse=True)
def live_logger(request: pytest.FixtureRequest) -> None:
    """A test that failed with the module's logger killed (tests kill it on purpose) does
    not take the next ones down with it: they start with a logger on the same data dir."""
    if "unshaped" not in request.fixturenames:
        return
    env: Env = request.getfixturevalue("unshaped")
    if env.logger.poll() is not None:
        env.logger = logger_on(env, env.tmp / "logger-data")
