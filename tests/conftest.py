"""Suite-wide policy: root-only tests skip when unprivileged, but never in CI.

`.ci/run` sets FTCP_FORBID_ROOT_SKIPS=1: a skipped root test then fails the
run, because CI is root and a skip there means the setup is broken.
"""

from __future__ import annotations

import os

import pytest

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
