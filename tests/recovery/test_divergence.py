"""Step 6: a server that writes the clock breaks replay; ftcp says so and obeys the policy."""

from __future__ import annotations

import json
import sys
import time

import pytest
from crashlib import CRASHAPPS, finish_client, kill_app, recovered_count, run_client
from ithelpers import FTCP, Env, Protected, wait_until

pytestmark = pytest.mark.root


def _status(env: Env, srv: Protected) -> list[dict]:
    r = env.lab.run(
        "server", [*FTCP, "status", "--json", "--state-dir", str(srv.dir / "state")], check=False
    )
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []


@pytest.mark.parametrize("policy", ["continue", "close"])
def test_clock_server_divergence_is_reported(unshaped: Env, policy: str) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    cmd = [sys.executable, CRASHAPPS, "clock-server", str(port)]
    with Protected(unshaped, port, cmd, extra=["--on-divergence", policy]) as srv:
        cl = run_client(unshaped, ["drip", lab.ip("server"), port, 60, 0.02])
        time.sleep(0.7)
        kill_app(srv)
        wait_until(lambda: "DIVERGENCE" in srv.err(), 30, f"a divergence report\n{srv.err()}")
        line = next(ln for ln in srv.err().splitlines() if "DIVERGENCE" in ln)
        assert "connection" in line and "outstream byte" in line, line
        if policy == "continue":
            wait_until(lambda: recovered_count(srv) >= 1, 30, "recovery")
        r = finish_client(cl)
        if policy == "close":
            assert r["error"], r  # the client was reset, on purpose
        docs = wait_until(
            lambda: [d for d in _status(unshaped, srv) if d.get("recovery", {}).get("divergences")],
            10,
            "ftcp status to show the divergence",
        )
        assert docs[0]["recovery"]["divergences"] >= 1
