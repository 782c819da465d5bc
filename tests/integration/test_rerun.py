"""An operator stops `ftcp run` and starts it again on the same port, same logger.

The application id (`port-N` by default) is the same both times, so the logger
already holds the first run's records: its connection ids, its read-order
watermark and its deleted connections. The second run must still protect new
connections end to end (handshake logged, reads logged, writes released).
"""

from __future__ import annotations

import pytest
from ithelpers import Env, client_app, echo_server

pytestmark = pytest.mark.root


def _exchange(env: Env, port: int) -> None:
    lab = env.lab
    r = client_app(lab, "small", lab.ip("server"), port, 40, 300, timeout=60)
    assert r["ok"] == 40, r  # every echo matched its request byte for byte


def test_second_run_same_app_id_protects_new_connections(unshaped: Env) -> None:
    port = unshaped.next_port()
    with echo_server(unshaped, port) as first:
        _exchange(unshaped, port)
    assert first.proc.returncode == 0, first.err()
    with echo_server(unshaped, port) as second:
        _exchange(unshaped, port)
        _exchange(unshaped, port)
    assert second.proc.returncode == 0, second.err()
    assert "refused" not in second.err(), second.err()
