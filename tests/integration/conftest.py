"""Integration fixtures: a logger daemon in the logger host of a lab."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ithelpers import Env, start_env  # noqa: E402

__all__ = ["unshaped"]


@pytest.fixture(scope="module")
def unshaped(module_lab_factory, tmp_path_factory) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    """An `unshaped` lab with a logger running in its logger host (module-wide)."""
    lab = module_lab_factory("unshaped")
    env = start_env(lab, tmp_path_factory.mktemp("it"))
    try:
        yield env
    finally:
        env.close()
