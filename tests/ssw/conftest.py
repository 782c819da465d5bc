"""Fixtures for the SSW I/O tests: a private pair of network namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ssw_harness import NsPair


@pytest.fixture
def nspair() -> Iterator[NsPair]:
    pair = NsPair()
    try:
        pair.up()
        yield pair
    finally:
        pair.close()
