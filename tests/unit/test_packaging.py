"""What the shipped package may depend on."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# every module of the package, imported with the dev-only packages made unimportable
_IMPORT_ALL = """
import importlib, pkgutil, sys
for dev in ("pytest", "hypothesis", "dpkt"):
    sys.modules[dev] = None
import ftcp
for m in pkgutil.walk_packages(ftcp.__path__, "ftcp."):
    if m.name.endswith("__main__"):
        continue
    importlib.import_module(m.name)
print("ok")
"""


def test_shipped_modules_import_without_dev_dependencies() -> None:
    r = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_every_runtime_dependency_is_used() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    src = "\n".join(p.read_text() for p in (ROOT / "src" / "ftcp").rglob("*.py"))
    for dep in meta["dependencies"]:
        name = dep.split(">")[0].split("=")[0].split("<")[0].strip().replace("-", "_")
        used = f"import {name}" in src or f"from {name}" in src
        assert used, f"{dep} is declared, never imported"
