"""`--boost`: the supervisor's event loop runs ahead of the application while it
recovers, and shares the CPU again once the recovery is over."""

from __future__ import annotations

import os
import sys
import time

import pytest
from crashlib import app_pid, finish_client, kill_app, recovered_count, run_client
from ithelpers import APPS, Env, Protected, nice_of, wait_until

from ftcp.supervisor import read_status

pytestmark = pytest.mark.root


@pytest.mark.parametrize("boost", [10, 0])
def test_loop_boosted_during_the_recovery_only(unshaped: Env, boost: int) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    cmd = [sys.executable, APPS, "echo-server", str(port)]
    with Protected(unshaped, port, cmd, extra=["--boost", str(boost)]) as srv:
        cl = run_client(unshaped, ["duplex", lab.ip("server"), port, 1 << 20, 16384, 0.01])
        time.sleep(0.3)
        assert nice_of(srv.proc.pid) == mine
        kill_app(srv)
        wait_until(lambda: recovered_count(srv) >= 1, 30, f"recovery\n{srv.err()}")
        assert finish_client(cl)["ok"]
        last = wait_until(
            lambda: next(
                (
                    d["recovery"]["last"]
                    for d in read_status(str(srv.dir / "state"))
                    if (d.get("recovery") or {}).get("last")
                ),
                None,
            ),
            10,
            "the recovery's timings in the status file",
        )
        assert last["loop_nice"] == (max(-20, mine - boost) if boost else None), last
        assert nice_of(srv.proc.pid) == mine  # back once the recovery was over
        new_app = app_pid(srv)
        assert new_app is not None and nice_of(new_app) == mine
