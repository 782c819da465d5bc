"""Step 1: kill -9 of a protected echo server mid-transfer is invisible to the client."""

from __future__ import annotations

import sys
import time

import pytest
from crashlib import finish_client, kill_app, recovered_count, run_client, verify
from ithelpers import APPS, Capture, Env, Protected, wait_until

pytestmark = pytest.mark.root


def test_echo_killed_mid_transfer(unshaped: Env) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    cmd = [sys.executable, APPS, "echo-server", str(port)]
    with Protected(unshaped, port, cmd) as srv:
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
