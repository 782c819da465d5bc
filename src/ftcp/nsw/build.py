"""Build the NSW shim (`shim.c`) into a shared object, on demand, cached.

`shim_path()` returns the path of ``ftcp-nsw-<hash>.so``, compiling it first
if no build of the current source exists. The hash covers the source and the
compiler command, so an edited shim is rebuilt and a stale one never used.
The cache is ``__pycache__/`` beside this module when writable (ignored by
git), else ``$XDG_CACHE_HOME/ftcp`` (default ``~/.cache/ftcp``). Builds go to
a temporary file renamed into place, so concurrent builders do not collide.

The compiler is ``$CC`` or ``gcc``; a missing compiler is a `UserError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ftcp.errors import UserError

SOURCE = Path(__file__).with_name("shim.c")
CFLAGS = [
    "-O2",
    "-g",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-std=gnu11",
]
LIBS = ["-ldl"]


def _compiler() -> str:
    cc = os.environ.get("CC") or "gcc"
    path = shutil.which(cc)
    if path is None:
        raise UserError(
            f"C compiler {cc!r} not found: the NSW shim is built with it "
            "(install gcc and libc6-dev, or set CC)"
        )
    return path


def _cache_dirs() -> list[Path]:
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [Path(__file__).with_name("__pycache__"), Path(xdg) / "ftcp"]


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK)


def source_hash(cc: str | None = None) -> str:
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    h.update("\0".join([cc or "gcc", *CFLAGS, *LIBS]).encode())
    return h.hexdigest()[:16]


def shim_path() -> Path:
    """Path of the built shim for the current source, building it if needed."""
    name = None
    for d in _cache_dirs():
        if name is None:
            cc_name = os.environ.get("CC") or "gcc"
            name = f"ftcp-nsw-{source_hash(cc_name)}.so"
        if (d / name).is_file():
            return d / name
    assert name is not None
    for d in _cache_dirs():
        if _writable(d):
            return _build(d / name)
    raise UserError("no writable cache directory for the NSW shim (set XDG_CACHE_HOME)")


def _build(out: Path) -> Path:
    cc = _compiler()
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cc, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise UserError(
                f"building the NSW shim failed ({' '.join(cmd)}):\n{tail}\n"
                "(are gcc and libc6-dev installed?)"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Old builds: unlinking is safe even while a process has one mapped.
    for old in out.parent.glob("ftcp-nsw-*.so"):
        if old != out:
            with contextlib.suppress(OSError):
                old.unlink()
    return out
