"""More unmodified servers and loads under `ftcp run`, byte-exact (lab `unshaped`).

50 concurrent connections on a threaded server, an asyncio server, and socat
(a C server that forks per connection) relaying to `cat`; each with the ack
trace checked against a client-side capture (invariant 1).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from ithelpers import Capture, Env, Protected, check_ack_clamping, client_app, echo_server

pytestmark = pytest.mark.root

MB = 1 << 20
AIO_ECHO = str(Path(__file__).with_name("aio_echo.py"))


def test_fifty_concurrent_connections(unshaped: Env) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    with echo_server(unshaped, port) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        r = client_app(lab, "concurrent", lab.ip("server"), port, 50, 20, 3000, timeout=300)
        cap.stop()
        assert not r["errors"], r["errors"][:3]
        assert r["ok"] == r["count"] == 50 * 20
    assert srv.proc.returncode == 0, srv.err()
    check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)


def test_asyncio_server(unshaped: Env) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    with Protected(unshaped, port, [sys.executable, AIO_ECHO, str(port)]) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        r = client_app(lab, "bulk", lab.ip("server"), port, 8 * MB)
        assert r["recv"] == r["sent"] == 8 * MB and r["recv_sha"] == r["sent_sha"]
        r = client_app(lab, "concurrent", lab.ip("server"), port, 16, 20, 1500)
        assert not r["errors"] and r["ok"] == r["count"] == 16 * 20
        cap.stop()
    assert "Traceback" not in srv.err(), srv.err()
    check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
def test_socat_fork_to_cat(unshaped: Env) -> None:
    """socat (C, forks a child per connection) relaying each connection to `cat`."""
    lab = unshaped.lab
    port = unshaped.next_port()
    cmd = ["socat", f"TCP-LISTEN:{port},reuseaddr,fork", "SYSTEM:cat"]
    with Protected(unshaped, port, cmd) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        r = client_app(lab, "bulk", lab.ip("server"), port, 4 * MB)
        assert r["recv"] == r["sent"] == 4 * MB and r["recv_sha"] == r["sent_sha"]
        r = client_app(lab, "concurrent", lab.ip("server"), port, 8, 20, 1000)
        assert not r["errors"] and r["ok"] == r["count"] == 8 * 20
        cap.stop()
    check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)
