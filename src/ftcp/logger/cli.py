"""`ftcp logger`: run the logger daemon."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from pathlib import Path

import click

from ftcp.errors import UserError
from ftcp.logger.daemon import LoggerConfig, LoggerServer
from ftcp.logger.store import SyncPolicy


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def read_secret(path: str) -> bytes:
    try:
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise UserError(f"cannot read secret file {path}: {e.strerror}") from None
    if not data:
        raise UserError(f"secret file {path} is empty")
    return data


async def _serve(cfg: LoggerConfig) -> None:
    server = LoggerServer(cfg)
    await server.start()
    # what start-up made lives as long as the daemon: out of the collector's way (a
    # full collection over it paused the loop for 6-8 ms on a 2-core VM)
    gc.freeze()
    host, port = server.address
    print(
        f"ftcp logger: listening on {host}:{port} (data dir {cfg.data_dir}, sync {cfg.sync})",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.ensure_future(server.serve_forever())
    await stop.wait()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await server.close()


@click.command()
@click.option(
    "--listen",
    "listen",
    default="127.0.0.1:7007",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on (port 0: any free port).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory of the durable store.",
)
@click.option(
    "--sync",
    type=click.Choice([p.value for p in SyncPolicy]),
    default="batch",
    show_default=True,
    help="always: fdatasync each batch; batch: group commit; none: no fsync (unsafe).",
)
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Shared secret for HMAC auth.")
@click.option("--insecure", is_flag=True, help="Run without a secret (tests only).")
@click.option(
    "--segment-size",
    type=int,
    default=64 << 20,
    show_default=True,
    help="Rotate segment files at this size (bytes).",
)
@click.option(
    "--auth-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a peer has to authenticate.",
)
@click.option(
    "--frame-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds a partial frame may stay incomplete.",
)
@click.option(
    "--retry-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between retries after a store write error.",
)
@click.option(
    "--nagle/--no-nagle",
    default=False,
    show_default=True,
    help="Nagle's algorithm on the ack stream to supervisors. Off (TCP_NODELAY) by "
    "default: with Nagle on, each request/response of a protected server waits ~40 ms "
    "for a delayed ack (measured by `ftcp bench normal`); on is the paper's setting "
    "(its Table IV compares both).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def logger(
    listen: str,
    data_dir: str,
    sync: str,
    secret_file: str | None,
    insecure: bool,
    segment_size: int,
    auth_timeout: float,
    frame_timeout: float,
    retry_interval: float,
    nagle: bool,
    verbose: bool,
) -> None:
    """Run the logger daemon (durable store for supervisors' records)."""
    host, port = parse_hostport(listen)
    if secret_file:
        secret = read_secret(secret_file)
    elif insecure:
        secret = b""
    else:
        raise UserError("refusing to start without a secret: give --secret-file (or --insecure)")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s ftcp-logger %(levelname)s: %(message)s",
    )
    cfg = LoggerConfig(
        host=host,
        port=port,
        data_dir=Path(data_dir),
        sync=SyncPolicy(sync),
        secret=secret,
        insecure=insecure and not secret_file,
        segment_size=segment_size,
        auth_timeout=auth_timeout,
        frame_timeout=frame_timeout,
        retry_interval=retry_interval,
        nagle=nagle,
    )
    asyncio.run(_serve(cfg))
