"""Can LD_PRELOAD wrap this command? (Only a dynamically linked executable.)

`check_preloadable(argv)` resolves ``argv[0]`` the way ``execvp`` does
(through ``PATH`` unless it contains a slash), follows ``#!`` interpreters
(and, for ``#!/usr/bin/env prog``, the program ``env`` runs), and reads each
ELF's program headers: an executable with a ``PT_INTERP`` entry is started by
the dynamic loader, which honours ``LD_PRELOAD``; one without (static, or
static-pie) is not, and that is a `UserError`.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

from ftcp.errors import UserError

PT_INTERP = 3
_MAX_SHEBANG_DEPTH = 4  # what Linux allows (BINPRM_MAX_RECURSION)


def resolve(cmd: str, path: str | None = None) -> Path:
    """The file `execvp(cmd)` would run."""
    if "/" in cmd:
        p = Path(cmd)
        if not p.is_file():
            raise UserError(f"{cmd}: no such file")
        if not os.access(p, os.X_OK):
            raise UserError(f"{cmd}: not executable")
        return p.resolve()
    found = shutil.which(cmd, path=path if path is not None else os.environ.get("PATH"))
    if found is None:
        raise UserError(f"{cmd}: command not found in PATH")
    return Path(found).resolve()


def elf_interp(path: Path) -> str | None:
    """The ELF's PT_INTERP (its dynamic loader), or None for a static ELF.

    Raises ValueError if `path` is not an ELF file.
    """
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF":
            raise ValueError(f"{path}: not an ELF file")
        cls, data = head[4], head[5]
        end = "<" if data == 1 else ">"
        if cls == 2:
            phoff = struct.unpack_from(end + "Q", head, 0x20)[0]
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
        elif cls == 1:
            phoff = struct.unpack_from(end + "I", head, 0x1C)[0]
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
        else:
            raise ValueError(f"{path}: unknown ELF class {cls}")
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = f.read(phentsize)
            if len(ph) < phentsize:
                raise ValueError(f"{path}: truncated program headers")
            (p_type,) = struct.unpack_from(end + "I", ph, 0)
            if p_type != PT_INTERP:
                continue
            if cls == 2:
                off, _, _, size = struct.unpack_from(end + "QQQQ", ph, 8)
            else:
                off, _, _, size = struct.unpack_from(end + "IIII", ph, 4)
            f.seek(off)
            return f.read(size).rstrip(b"\0").decode(errors="replace")
    return None


def _shebang(path: Path) -> tuple[str, str | None] | None:
    with open(path, "rb") as f:
        line = f.read(256).split(b"\n", 1)[0]
    if not line.startswith(b"#!"):
        return None
    rest = line[2:].decode(errors="replace").strip()
    if not rest:
        return None
    parts = rest.split(None, 1)
    return parts[0], (parts[1] if len(parts) > 1 else None)


def _env_target(arg: str | None) -> str | None:
    """The program `#!/usr/bin/env [opts] [NAME=V] prog` runs."""
    if arg is None:
        return None
    for word in arg.split():
        if word.startswith("-") or "=" in word:
            continue
        return word
    return None


def check_preloadable(argv: Sequence[str], path: str | None = None) -> list[Path]:
    """Raise `UserError` unless LD_PRELOAD reaches the program `argv` runs.

    Returns the chain of files examined (script, interpreter, ...), last is the
    ELF that will actually run.
    """
    if not argv:
        raise UserError("no command given")
    chain: list[Path] = []
    cmd = argv[0]
    for _ in range(_MAX_SHEBANG_DEPTH + 2):
        exe = resolve(cmd, path)
        chain.append(exe)
        try:
            interp = elf_interp(exe)
        except ValueError:
            sb = _shebang(exe)
            if sb is None:
                raise UserError(f"{exe}: neither an ELF executable nor a #! script") from None
            interp_path, arg = sb
            if Path(interp_path).name == "env":
                target = _env_target(arg)
                if target is not None:
                    # env itself must be dynamic too? No: env execs target, and the
                    # environment (LD_PRELOAD included) passes through.
                    cmd = target
                    continue
            cmd = interp_path
            continue
        except OSError as e:
            raise UserError(f"{exe}: cannot read: {e.strerror}") from None
        if interp is None:
            raise UserError(f"{exe} is statically linked; LD_PRELOAD cannot wrap it")
        return chain
    raise UserError(f"{argv[0]}: too many levels of #! interpreters")
