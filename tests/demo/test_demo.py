"""`ftcp demo` runs end to end, verifies both directions and leaves nothing behind."""

import subprocess
import sys
from pathlib import Path

import pytest

from ftcp.lab.net import unique_name


@pytest.mark.root
def test_demo_verifies_both_directions_and_cleans_up() -> None:
    name = unique_name()
    r = subprocess.run(
        [str(Path(sys.executable).parent / "ftcp"), "demo", "--name", name],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("matches") == 2
    assert "server killed 2 time(s), recovered 2 time(s)" in r.stdout, r.stdout
    assert "masked" in r.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ftcp-{name}-" not in after  # every namespace of the demo's lab is gone


@pytest.mark.root
def test_demo_failover_masks_a_power_off_and_cleans_up() -> None:
    name = unique_name()
    r = subprocess.run(
        [str(Path(sys.executable).parent / "ftcp"), "demo", "--failover", "--name", name],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("matches") == 2
    assert "POWER-OFF of the server host" in r.stdout
    assert "taking over" in r.stdout and "recovered 1 time(s)" in r.stdout, r.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ftcp-{name}-" not in after
