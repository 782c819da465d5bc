"""A new client that connects while the crashed server is down is held, not refused.

During recovery no process listens on the port: without ftcp the kernel would
answer the SYN with a reset. SSW holds new SYNs until the connections of the
crash are rebuilt, then lets them through; the new client is then served as
usual, and the connection open at the crash goes on byte-exact.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
from crashlib import finish_client, kill_app, recovered_count, run_client, verify
from ithelpers import Capture, Env, Protected, wait_until

pytestmark = pytest.mark.root

# An echo server that, once restarted, takes a while before it listens (the window in
# which a new SYN arrives), and notes when it listens; and a client that connects once
# (no retry on refusal), notes when it started, and checks an echo.
APP = textwrap.dedent(
    """
    import hashlib, json, os, socket, socketserver, sys, time

    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                d = self.request.recv(65536)
                if not d:
                    break
                self.request.sendall(d)

    def serve(port, marker, listened):
        if os.path.exists(marker):
            time.sleep(1.5)  # the restarted instance is slow to start
        open(marker, "a").close()
        srv = socketserver.ThreadingTCPServer(("0.0.0.0", port), Echo, bind_and_activate=False)
        srv.daemon_threads = True
        srv.allow_reuse_address = True
        srv.server_bind()
        srv.server_activate()
        with open(listened, "a") as f:
            f.write(f"{time.time()}\\n")
        srv.serve_forever()

    def once(host, port):
        t0 = time.time()
        s = socket.create_connection((host, port), timeout=60)
        data = os.urandom(200_000)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
        print(json.dumps({"started": t0, "sport": s.getsockname()[1],
                          "ok": hashlib.sha256(got).digest() == hashlib.sha256(data).digest()}))

    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        once(sys.argv[2], int(sys.argv[3]))
    """
)


def test_syn_during_recovery_is_held_then_served(unshaped: Env, tmp_path: Path) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    app = tmp_path / "app.py"
    app.write_text(APP)
    marker, listened = tmp_path / "started", tmp_path / "listened"
    cmd = [sys.executable, str(app), "serve", str(port), str(marker), str(listened)]
    with Protected(unshaped, port, cmd) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        old = run_client(unshaped, ["duplex", lab.ip("server"), port, 2 << 20, 16384, 0.005])
        time.sleep(0.5)
        kill_app(srv)
        time.sleep(0.2)  # the application is down and the restarted one sleeps
        new = lab.run(
            "client", [sys.executable, str(app), "once", lab.ip("server"), str(port)],
            check=False, timeout=90,
        )  # fmt: skip
        assert new.returncode == 0, f"{new.stderr}\n{srv.err()[-3000:]}"  # not refused
        r_new = json.loads(new.stdout.strip().splitlines()[-1])
        assert r_new["ok"], r_new
        r_old = finish_client(old)
        assert r_old["ok"], r_old
        wait_until(lambda: recovered_count(srv) >= 1, 30, f"recovery\n{srv.err()}")
    times = [float(x) for x in listened.read_text().split()]
    assert len(times) == 2, times  # the first instance and the restarted one
    # the new client's SYN went out while nothing listened on the port
    assert r_new["started"] < times[1], (r_new, times)
    verify(unshaped, srv, cap, port)  # no RST, no early FIN, no gap: both connections
    assert "Traceback" not in srv.err(), srv.err()
