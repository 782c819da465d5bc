"""`ftcp bench lab` end to end on one topology, and the sock_diag reader it uses."""

from __future__ import annotations

import json
import os
import time

import pytest

from ftcp.bench import lab as bench_lab
from ftcp.lab import net
from ftcp.lab.net import Lab
from ftcp.lab.tcpinfo import SockDiag
from ftcp.lab.traffic import finish_transfer, start_transfer

pytestmark = pytest.mark.root


def test_sockdiag_reads_a_host_without_leaving_our_namespace(lab_factory) -> None:
    lab: Lab = lab_factory("10-10")
    ours = os.readlink("/proc/self/ns/net")
    rx, tx = start_transfer(lab, "client", "server", 1_500_000, port=5801)
    try:
        with SockDiag(net.NETNS_RUN_DIR / lab.netns("client")) as diag:
            assert os.readlink("/proc/self/ns/net") == ours
            seen = []
            for _ in range(100):
                seen = [k for k in diag.tcp() if k.dst == (lab.ip("server"), 5801)]
                if seen and seen[0].delivered > 10:
                    break
                time.sleep(0.02)
            assert seen and seen[0].src[0] == lab.ip("client")
            assert seen[0].snd_mss > 1000 and seen[0].bytes_acked > 0
        with SockDiag(net.NETNS_RUN_DIR / lab.netns("logger")) as diag:
            assert [k for k in diag.tcp() if k.dst[1] == 5801] == []  # another host's view
    finally:
        sent, got = finish_transfer(rx, tx)
    assert sent["sha256"] == got["sha256"]


@pytest.mark.parametrize("tool", ["iperf3", "python"])
def test_bench_lab_measures_the_configured_rates(tool: str, tmp_path) -> None:
    if tool == "iperf3" and bench_lab._tool() != "iperf3":
        pytest.fail("iperf3 is not installed (the Makefile installs it)")
    path = bench_lab.run(["10-100"], 3.0, tmp_path, tool=tool)
    doc = json.loads(path.read_text())
    assert doc["tool"] == tool
    rows = {r["link"]: r for r in doc["results"]}
    assert set(rows) == {"client->server", "server->logger"}
    assert rows["client->server"]["configured_bps"] == 10_000_000
    assert rows["server->logger"]["configured_bps"] == 100_000_000
    for r in rows.values():
        # a shaper never lets goodput exceed the configured frame rate; how close it
        # gets is a benchmark figure (`ftcp bench lab`), not a test assertion
        assert 0 < r["ratio"] <= 0.975, r
