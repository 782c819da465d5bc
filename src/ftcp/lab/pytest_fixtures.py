"""pytest fixtures for lab tests. Re-export them from a test directory's conftest:

    from ftcp.lab.pytest_fixtures import lab_factory, module_lab_factory  # noqa: F401

then, in a test marked `@pytest.mark.root`:

    def test_x(lab_factory):
        lab = lab_factory("10-10")          # or a Topology, e.g. get_topology(...).with_hub(...)
        srv = lab.popen("server", [...])
        ...

Every lab gets a fresh unique name (`t` + 7 hex digits) and is torn down when
the test (or, for `module_lab_factory`, the module) ends, pass or fail, along
with every process still running in its namespaces.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from ftcp.lab import net
from ftcp.lab.net import Lab
from ftcp.lab.topology import Topology

LabFactory = Callable[..., Lab]


def unique_lab_name() -> str:
    while True:
        name = "t" + secrets.token_hex(4)[:7]
        if not net.state_path(name).exists() and not any(
            net.netns_exists(f"ftcp-{name}-{h}") for h in ("sw", "client", "server")
        ):
            return name


def _factory() -> Iterator[LabFactory]:
    made: list[Lab] = []

    def make(topology: Topology | str = "unshaped", name: str | None = None) -> Lab:
        lab = net.up(topology, name or unique_lab_name())
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(made):
            try:
                lab.down()
            except Exception as e:  # tear down the others anyway
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    """`lab_factory(topology="unshaped", name=None) -> Lab`, removed after the test."""
    yield from _factory()


@pytest.fixture(scope="module")
def module_lab_factory() -> Iterator[LabFactory]:
    """Like `lab_factory`, but the labs live until the end of the module."""
    yield from _factory()
