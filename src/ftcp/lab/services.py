"""Services the demo, the benchmarks and the tests start inside lab hosts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from ftcp.lab.net import Lab


def start_logger(
    lab: Lab,
    host: str,
    ip: str,
    port: int,
    data_dir: Path,
    *,
    log: Path | None = None,
    extra: Sequence[str] = (),
    nice: int = 0,
) -> subprocess.Popen[bytes]:
    """`ftcp logger --insecure` in `host`, listening on `ip:port`; returns once it listens.

    Its stderr goes to `log` (or nowhere). A logger that does not come up is
    stopped and reported with a `RuntimeError` carrying the tail of its log.
    `nice`: the nice value every thread of it runs at (as `nice -n` would give).
    """
    err: IO[bytes] | int = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        p = lab.python(
            host, "ftcp.logger", "--listen", f"{ip}:{port}", "--data-dir", str(data_dir),
            "--insecure", *extra, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    finally:
        if not isinstance(err, int):
            err.close()
    assert p.stdout is not None
    line = p.stdout.readline().decode()
    if "listening on" not in line:
        p.kill()
        p.wait()
        tail = log.read_text(errors="replace")[-2000:] if log else ""
        raise RuntimeError(f"ftcp logger did not start in {host}: {line.strip()!r} {tail}")
    if nice:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
    return p
