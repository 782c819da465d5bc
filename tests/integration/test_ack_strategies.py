"""Each ack strategy through `ftcp run --ack-strategy X`, told apart by what it did.

One scripted exchange per strategy against a sink server (it only reads, so
the server's TCP sends pure acks): 40 paced 2000-byte writes 30 ms apart, then
a 4 MB burst. The engine's counters (read from the status file `ftcp status`
shows) and a client-side capture must show each strategy's signature:

* Basic: server acks leave at once, clamped (rewritten); nothing held (but the
  SYN-ACK, in every strategy), nothing fabricated (but, in every strategy, the
  ack of the client's FIN once it is logged);
* Lazy: pure acks are held until the logger caught up; nothing fabricated (but
  that FIN ack);
* Eager: an ack is fabricated on logger acknowledgements; nothing held;
* Conditional: fabricates only when TCP already acked and no packet arrived
  since: some in the paced part, fewer than Eager over the whole exchange.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from ithelpers import Capture, Env, Protected, check_ack_clamping, server_acks, wait_until

pytestmark = pytest.mark.root

CLIENT = r"""
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(struct.pack("!cQII", b"U", 0, 0, 0))  # ftcp.bench.normal's header: upload
for i in range(40):
    s.sendall(bytes([i]) * 2000)
    time.sleep(0.03)
s.sendall(b"x" * (4 << 20))
s.shutdown(socket.SHUT_WR)
print(s.recv(64).decode())
"""


def _exchange(env: Env, strategy: str) -> tuple[dict[str, int], int]:
    lab = env.lab
    port = env.next_port()
    server = [sys.executable, "-m", "ftcp.bench.normal", "serve", str(port), "0"]
    with Protected(env, port, server, strategy=strategy) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        r = lab.run("client", [sys.executable, "-c", CLIENT, lab.ip("server"), str(port)])
        assert int(r.stdout.strip()) == 40 * 2000 + (4 << 20)
        cap.stop()
        t0 = time.time()

        def fresh() -> dict | None:
            for p in (srv.dir / "state").glob("status-*.json"):
                doc = json.loads(p.read_text())
                return doc if doc.get("stats") and p.stat().st_mtime > t0 else None
            return None

        doc = wait_until(fresh, 10, "a fresh status file")
    check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)
    return doc["stats"], len(server_acks(cap.path, lab.ip("server"), port))


def test_each_strategy_has_its_own_signature(unshaped: Env) -> None:
    got = {s: _exchange(unshaped, s) for s in ("basic", "lazy", "eager", "conditional")}
    why = {s: (st["held"], st["rewritten"], st["fabricated"], n) for s, (st, n) in got.items()}
    msg = f"(held, rewritten, fabricated, acks on the wire) per strategy: {why}"
    basic, lazy, eager, cond = (got[s][0] for s in ("basic", "lazy", "eager", "conditional"))
    # `held` counts the SYN-ACK too (every strategy holds it until the handshake is logged);
    # every strategy may fabricate one ack: the ack of the client's FIN once it is logged
    assert basic["held"] == 1 and basic["fabricated"] <= 1 and basic["rewritten"] > 0, msg
    assert lazy["held"] > 10 and lazy["fabricated"] <= 1, msg
    assert eager["held"] == 1 and eager["fabricated"] > 0, msg
    assert cond["held"] == 1 and 0 < cond["fabricated"] < eager["fabricated"], msg
    # Lazy's client sees about one ack per held one: far fewer than Basic's clamped stream
    assert got["lazy"][1] < got["basic"][1], msg
