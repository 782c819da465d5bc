"""The server closes first (HTTP/1.0 style): the client's FIN is acknowledged at once.

Client-side capture: each client FIN is sent once (never retransmitted) and a server
segment acknowledging it reaches the client while `ftcp run` still runs; the client's
socket ends cleanly (no LAST-ACK left behind).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
from ithelpers import Capture, Env, Protected, check_ack_clamping, wait_until

pytestmark = pytest.mark.root


def fin_report(pcap: Path, server_ip: str, port: int) -> dict[int, dict[str, list[float]]]:
    """client port -> times of the client's FINs and of server acks covering the FIN."""
    import dpkt

    from ftcp.core import seq

    out: dict[int, dict[str, list[float]]] = {}
    fin_end: dict[int, int] = {}
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            plen = ip.len - ip.hl * 4 - tcp.off * 4
            if socket.inet_ntoa(ip.dst) == server_ip and tcp.dport == port:
                r = out.setdefault(tcp.sport, {"fins": [], "acked": []})
                if tcp.flags & dpkt.tcp.TH_FIN:
                    r["fins"].append(float(ts))
                    fin_end[tcp.sport] = seq.add(tcp.seq, plen + 1)
            elif socket.inet_ntoa(ip.src) == server_ip and tcp.sport == port:
                cp = tcp.dport
                end = fin_end.get(cp)
                if end is not None and tcp.flags & dpkt.tcp.TH_ACK and seq.ge(tcp.ack, end):
                    out[cp]["acked"].append(float(ts))
    return out


@pytest.mark.parametrize("strategy", ["lazy", "basic"])
def test_server_closes_first_client_fin_acked(unshaped: Env, strategy: str) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    root = unshaped.tmp / f"www-{port}"
    root.mkdir()
    (root / "small.bin").write_bytes(os.urandom(100_000))
    cmd = [sys.executable, "-m", "http.server", str(port), "--directory", str(root)]
    with Protected(unshaped, port, cmd, strategy=strategy) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        url = f"http://{lab.ip('server')}:{port}/small.bin"
        for _ in range(3):
            r = lab.run("client", ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", url])
            assert r.returncode == 0, r.stderr

        def no_last_ack() -> bool:
            ss = lab.run("client", ["ss", "-Htan", f"dport = :{port}"], check=False).stdout
            return not any(s in ss for s in ("LAST-ACK", "FIN-WAIT", "CLOSING"))

        wait_until(no_last_ack, 3, "the client's sockets to close cleanly")
        time.sleep(0.5)
        until = time.time()
        cap.stop()
    rep = fin_report(cap.path, lab.ip("server"), port)
    assert len(rep) == 3, rep
    for cp, r in rep.items():
        assert len(r["fins"]) == 1, f"client port {cp}: FIN sent {len(r['fins'])} times"
        assert r["acked"] and r["acked"][0] < until, f"client port {cp}: FIN not acked in time"
        assert r["acked"][0] - r["fins"][0] < 0.1, f"client port {cp}: FIN acked late: {r}"
    check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)
    assert "Traceback" not in srv.err(), srv.err()
