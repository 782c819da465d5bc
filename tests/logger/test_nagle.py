"""`ftcp logger --nagle/--no-nagle`: TCP_NODELAY on the logger's side of a connection."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from logger_helpers import logger_server

from ftcp.logger import cli as logger_cli
from ftcp.logger.daemon import LoggerConfig


async def _nodelay_of_accepted(data_dir: Path, **kw: Any) -> int:
    async with logger_server(data_dir, **kw) as srv:
        host, port = srv.address
        _, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(200):
                if srv.peers:
                    break
                await asyncio.sleep(0.01)
            (peer,) = srv.peers
            assert peer.transport is not None
            sock = peer.transport.get_extra_info("socket")
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            writer.close()


@pytest.mark.parametrize(("kw", "nodelay"), [({}, 1), ({"nagle": True}, 0), ({"nagle": False}, 1)])
def test_nagle_switch_sets_tcp_nodelay_on_the_logger_side(
    tmp_path: Path, kw: dict[str, bool], nodelay: int
) -> None:
    got = asyncio.run(asyncio.wait_for(_nodelay_of_accepted(tmp_path, **kw), 30))
    assert bool(got) == bool(nodelay)  # default: Nagle off (TCP_NODELAY set)


@pytest.mark.parametrize(
    ("args", "nagle"), [([], False), (["--nagle"], True), (["--no-nagle"], False)]
)
def test_cli_passes_the_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], nagle: bool
) -> None:
    seen: list[LoggerConfig] = []

    def fake_serve(cfg: LoggerConfig) -> None:
        seen.append(cfg)

    monkeypatch.setattr(logger_cli, "_serve", fake_serve)
    monkeypatch.setattr(logger_cli.asyncio, "run", lambda x: None)
    r = CliRunner().invoke(
        logger_cli.logger,
        ["--data-dir", str(tmp_path), "--insecure", "--listen", "127.0.0.1:0", *args],
    )
    assert r.exit_code == 0, r.output
    assert [c.nagle for c in seen] == [nagle]


def test_paper_bench_sees_the_switch() -> None:
    from ftcp.bench import paper

    paper._NAGLE_SWITCH = None
    assert paper.logger_nagle_switch()
