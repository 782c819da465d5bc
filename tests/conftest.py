"""Suite-wide policy and lab fixtures.

Root-only tests skip when unprivileged, but never in CI: `.ci/run` sets
FTCP_FORBID_ROOT_SKIPS=1, and a skipped root test then fails the run, because
CI is root and a skip there means the setup is broken.

Lab fixtures, in a test marked `@pytest.mark.root`:

    def test_x(lab_factory):
        lab = lab_factory("10-10")          # or a Topology, e.g. get_topology(...).with_hub(...)
        srv = lab.popen("server", [...])

Every lab gets a fresh unique name and is torn down when the test (or, for
`module_lab_factory`, the module) ends, pass or fail, along with every process
still running in its namespaces.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from ftcp.lab import net
from ftcp.lab.net import Lab
from ftcp.lab.topology import Topology

LabFactory = Callable[..., Lab]

IS_ROOT = os.geteuid() == 0
FORBID_ROOT_SKIPS = os.environ.get("FTCP_FORBID_ROOT_SKIPS") == "1"

_skipped_root: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, iptables)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # an expected failure (xfail: a known bug, named in its reason) reports as skipped
    # too; it ran, so it is no sign of a broken setup
    if report.skipped and "root" in report.keywords and not hasattr(report, "wasxfail"):
        _skipped_root.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if FORBID_ROOT_SKIPS and _skipped_root:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if FORBID_ROOT_SKIPS and _skipped_root:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped_root)} root-only test(s) were skipped in CI:", red=True
        )
        for nodeid in _skipped_root:
            terminalreporter.write_line(f"  {nodeid}", red=True)


def _factory() -> Iterator[LabFactory]:
    made: list[Lab] = []

    def make(topology: Topology | str = "unshaped", name: str | None = None) -> Lab:
        lab = net.up(topology, name or net.unique_name())
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
