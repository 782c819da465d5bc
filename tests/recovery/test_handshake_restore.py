"""Step 1: kill -9 of a protected echo server mid-transfer is invisible to the client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crashlib import finish_client, kill_app, recovered_count, run_client, verify
from ithelpers import APPS, Capture, Env, Protected, wait_until

BIGAPPS = str(Path(__file__).with_name("bigapps.py"))

pytestmark = pytest.mark.root


@pytest.mark.parametrize("restore", ["handshake", "repair"])
def test_echo_killed_mid_transfer(unshaped: Env, restore: str) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    cmd = [sys.executable, APPS, "echo-server", str(port)]
    with Protected(unshaped, port, cmd, extra=["--restore", restore]) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        cl = run_client(unshaped, ["duplex", lab.ip("server"), port, 4 << 20, 16384, 0.01])
        time.sleep(1.0)
        kill_app(srv)
        wait_until(lambda: recovered_count(srv) >= 1, 30, f"recovery\n{srv.err()}")
        r = finish_client(cl)
        assert r["ok"], r
    verify(unshaped, srv, cap, port)
    assert "Traceback" not in srv.err(), srv.err()
    print(srv.err())


@pytest.mark.parametrize("restore", ["repair", "handshake"])
def test_log_larger_than_the_receive_queue_replays_byte_exact(
    unshaped: Env, restore: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logged upload larger than a receive queue can take (TCP_REPAIR queues what fits,
    ~32 MB here; SSW refills the rest as the application's reads make room): after the
    crash the restarted server re-reads all of it from the log and its digest matches."""
    lab = unshaped.lab
    port = unshaped.next_port()
    rmem_max = int(lab.run("server", ["sysctl", "-n", "net.ipv4.tcp_rmem"]).stdout.split()[2])
    nbytes = min(rmem_max + (8 << 20), 96 << 20)
    timing = unshaped.tmp / f"timing-{port}.jsonl"
    monkeypatch.setenv("FTCP_RECOVERY_TIMING", str(timing))
    cmd = [sys.executable, BIGAPPS, "serve", str(port), str(nbytes)]
    with Protected(unshaped, port, cmd, extra=["--restore", restore]) as srv:
        cl = lab.popen(
            "client",
            [sys.executable, BIGAPPS, "client", lab.ip("server"), str(port), str(nbytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert cl.stdout is not None and cl.stdin is not None
            assert "loaded" in cl.stdout.readline(), srv.err()
            time.sleep(0.3)  # the last read results reach the logger
            kill_app(srv)
            cl.stdin.write("go\n")
            cl.stdin.flush()
            line = cl.stdout.readline()
            assert json.loads(line)["ok"], f"{line!r} {srv.err()[-3000:]}"
            wait_until(lambda: recovered_count(srv) >= 1, 30, f"recovery\n{srv.err()}")
        finally:
            if cl.poll() is None:
                cl.kill()
            cl.wait()
    err = srv.err()
    assert "Traceback" not in err and "DIVERGENCE" not in err, err
    t = json.loads(timing.read_text().splitlines()[-1])
    assert t["logged_bytes"] >= nbytes
    if restore == "repair":
        assert t["repaired"] == 1, err
        assert 0 < t["queued_bytes"] < t["logged_bytes"], t  # the rest came by refill
