"""Telling a dynamically linked command (LD_PRELOAD works) from a static one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftcp.errors import UserError
from ftcp.nsw.elfcheck import check_preloadable, elf_interp


def test_bin_sh_is_dynamic() -> None:
    chain = check_preloadable(["/bin/sh"])
    assert elf_interp(chain[-1]) is not None


def test_resolves_through_path() -> None:
    chain = check_preloadable(["sh", "-c", "true"])
    assert chain[-1].name in ("dash", "bash", "sh", "busybox")


def test_python_script_with_shebang(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    script.chmod(0o755)
    # PATH with only the running interpreter's directory: env finds that python3
    bindir = str(Path(sys.executable).parent)
    if not (Path(bindir) / "python3").exists():
        pytest.skip("no python3 beside sys.executable")
    chain = check_preloadable([str(script)], path=bindir)
    assert chain[0] == script.resolve()
    assert "python" in chain[-1].name and elf_interp(chain[-1]) is not None

    direct = tmp_path / "direct.py"
    direct.write_text(f"#!{sys.executable} -u\nprint('hi')\n")
    direct.chmod(0o755)
    assert "python" in check_preloadable([str(direct)])[-1].name


def test_static_binary_is_refused(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    src = tmp_path / "s.c"
    src.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "static-prog"
    r = subprocess.run([gcc, "-static", "-o", str(exe), str(src)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"gcc -static failed (no static libc?): {r.stderr.decode()[-200:]}")
    with pytest.raises(UserError, match="statically linked; LD_PRELOAD cannot wrap it"):
        check_preloadable([str(exe)])
    # ... also when reached through a #! script
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(f"#!{exe}\n")
    wrapper.chmod(0o755)
    with pytest.raises(UserError, match="statically linked"):
        check_preloadable([str(wrapper)])


@pytest.mark.parametrize("what", ["missing", "notexec", "garbage"])
def test_bad_commands(tmp_path: Path, what: str) -> None:
    f = tmp_path / "f"
    if what != "missing":
        f.write_bytes(b"\x00\x01garbage")
        f.chmod(0o755 if what == "garbage" else 0o644)
    with pytest.raises(UserError):
        check_preloadable([str(f)])
    with pytest.raises(UserError, match="not found"):
        check_preloadable(["ftcp-no-such-command-anywhere"])
