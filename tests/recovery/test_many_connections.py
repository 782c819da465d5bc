"""kill -9 of a server with many clients at once: every connection is recovered.

Each client sends its own bytes (a mix-up between connections in the refill or the
replay would show in its hashes), duplex, paced, so data is in flight both ways
on every connection when the server dies.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
from crashlib import finish_client, kill_app, recovered_count, run_client, verify
from ithelpers import APPS, Capture, Env, Protected, wait_until

from ftcp.supervisor import read_status

pytestmark = pytest.mark.root

CONNS = 16


def _established(env: Env, port: int) -> int:
    out = env.lab.run(
        "server", ["ss", "-Htn", "state", "established", f"( sport = :{port} )"]
    ).stdout
    return len(out.splitlines())


@pytest.mark.parametrize("restore", ["repair", "handshake"])
def test_sixteen_connections_recovered_byte_exact(unshaped: Env, restore: str) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    cmd = [sys.executable, APPS, "echo-server", str(port)]
    with Protected(unshaped, port, cmd, extra=["--restore", restore]) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        clients = [
            run_client(unshaped, ["duplex", lab.ip("server"), port, 2 << 20, 16384, 0.01, k])
            for k in range(CONNS)
        ]
        try:
            wait_until(
                lambda: _established(unshaped, port) >= CONNS, 30, "every client to connect"
            )
            time.sleep(0.3)
            kill_app(srv)
            try:
                wait_until(lambda: recovered_count(srv) >= 1, 60, "recovery")
            except AssertionError as e:
                st = json.dumps(read_status(str(srv.dir / "state")))[:8000]
                ss = lab.run("server", ["ss", "-tnmi", f"( sport = :{port} )"]).stdout
                raise AssertionError(f"{e}\n{srv.err()[-4000:]}\nstatus: {st}\n{ss}") from None
            results = [finish_client(cl) for cl in clients]
        finally:
            for cl in clients:  # a client left waiting by a failed recovery
                if cl.poll() is None:
                    cl.kill()
                    cl.communicate()
    assert all(r["ok"] and r["recv"] == r["sent"] == 2 << 20 for r in results), results
    assert len({r["sent_sha"] for r in results}) == CONNS  # each sent bytes of its own
    verify(unshaped, srv, cap, port)
    err = srv.err()
    assert "Traceback" not in err, err
    assert f"recovering {CONNS} connection(s)" in err, err
    done = re.findall(r"recovered (\d+) connection\(s\)(?: \((\d+) by TCP_REPAIR\))?", err)
    assert done and int(done[0][0]) == CONNS, err
    if restore == "repair":
        assert done[0][1] == str(CONNS), err
    print(err)
