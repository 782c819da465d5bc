"""Building the shim on demand."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ftcp.errors import UserError
from ftcp.nsw import build


def test_shim_builds_and_is_cached(shim: str) -> None:
    p = Path(shim)
    assert p.is_file() and build.source_hash() in p.name
    mtime = p.stat().st_mtime_ns
    assert build.shim_path() == p
    assert p.stat().st_mtime_ns == mtime


def test_missing_compiler_is_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "ftcp-no-such-compiler")
    with pytest.raises(UserError, match="not found"):
        build.shim_path()


def test_cache_falls_back_to_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shim: str
) -> None:
    ro = tmp_path / "ro"
    monkeypatch.setattr(build, "_cache_dirs", lambda: [ro / "x", tmp_path / "xdg" / "ftcp"])
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores mode bits
            real = build._writable
            monkeypatch.setattr(
                build, "_writable", lambda d: not str(d).startswith(str(ro)) and real(d)
            )
        p = build.shim_path()
    finally:
        ro.chmod(0o700)
    assert p.parent == tmp_path / "xdg" / "ftcp" and p.is_file()


def test_shim_is_inert_without_env(shim: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCP_")}
    env["LD_PRELOAD"] = shim
    out = subprocess.run(
        ["sh", "-c", "echo hello | cat; exec 3>&1; echo dup >&3"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "hello\ndup\n" and out.stderr == ""
