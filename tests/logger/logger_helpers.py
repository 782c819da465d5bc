"""Logger test helpers: records, an in-process logger, a real `python -m ftcp.logger`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ftcp.core import seq
from ftcp.core.records import Handshake, InSegment, SynOptions
from ftcp.logger.daemon import LoggerConfig, LoggerServer

SECRET = b"test-secret-0123456789"


def handshake(conn_id: int, c_isn: int = 1000, s_isn: int = 5000, order: int = 0) -> Handshake:
    return Handshake(
        conn_id=conn_id,
        accept_order=order,
        client_ip="10.0.0.2",
        client_port=40000 + conn_id % 20000,
        server_ip="10.0.0.1",
        server_port=8080,
        c_isn=c_isn,
        s_isn=s_isn,
        client_opts=SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=111, ts_ecr=None),
        server_opts=SynOptions(mss=1460, wscale=9, sack_ok=True, ts_val=222, ts_ecr=111),
    )


def segments(
    conn_id: int, c_isn: int, data: bytes, mss: int = 1000, s_ack: int = 5001, start: int = 0
) -> list[InSegment]:
    """`data` cut into segments; `data[0]` is instream byte `start` (0: the first)."""
    return [
        InSegment(conn_id, seq.add(c_isn, 1 + start + i), s_ack, 65535, payload=data[i : i + mss])
        for i in range(0, len(data), mss)
    ]


@contextlib.asynccontextmanager
async def logger_server(data_dir: Path, **kw: object) -> AsyncIterator[LoggerServer]:
    cfg = LoggerConfig(data_dir=data_dir, secret=SECRET, **kw)  # type: ignore[arg-type]
    srv = LoggerServer(cfg)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@dataclass
class LoggerProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def spawn_logger(
    data_dir: Path, secret_file: Path, *extra: str, log_dir: Path | None = None
) -> LoggerProcess:
    """Start `python -m ftcp.logger` on 127.0.0.1:0 and wait for its listening line."""
    log_dir = log_dir or data_dir.parent
    errp = log_dir / f"logger-{time.monotonic_ns()}.err"
    cmd = [
        sys.executable,
        "-m",
        "ftcp.logger",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        "--secret-file",
        str(secret_file),
        *extra,
    ]
    with open(errp, "wb") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    m = re.search(r"listening on ([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        proc.wait()
        raise AssertionError(f"logger did not start: {line!r} {errp.read_text()}")
    return LoggerProcess(proc, m.group(1), int(m.group(2)), errp)
