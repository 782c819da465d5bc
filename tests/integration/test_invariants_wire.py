"""Invariants 2-4 checked on the wire: a client-side capture against the engine's trace.

The trace (`--ack-trace`) says when each handshake record became durable
(``hs``), how many bytes each connection had read with those read results
durable (``rlog``), and when the application closed or shut down a socket
(``close``); each line is written before any segment it allows can leave.

* invariant 2: no SYN-ACK reaches the client before its handshake was stored;
* invariant 3 (an echo server writes only bytes it has read): no response byte
  at outstream offset `o` reaches the client before reads of `o` bytes were logged;
* invariant 4: no FIN or RST reaches the client before the application closed.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from ithelpers import Capture, Env, check_ack_clamping, client_app, echo_server, read_events

pytestmark = pytest.mark.root


def _server_segments(
    pcap: Path, server_ip: str, port: int
) -> list[tuple[float, int, int, int, int]]:
    """(time, client port, flags, seq, payload length) of every server→client segment."""
    import dpkt

    out = []
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if socket.inet_ntoa(ip.src) != server_ip or tcp.sport != port:
                continue
            plen = ip.len - ip.hl * 4 - tcp.off * 4  # the capture holds headers only
            out.append((float(ts), tcp.dport, tcp.flags, tcp.seq, plen))
    return out


def _first_at_or_before(events: list[tuple[float, list[str]]], t: float) -> list[str] | None:
    last = None
    for te, args in events:
        if te <= t:
            last = args
        else:
            break
    return last


@pytest.mark.parametrize("strategy", ["lazy", "basic"])
def test_handshake_output_and_close_commit_on_the_wire(unshaped: Env, strategy: str) -> None:
    import dpkt

    lab = unshaped.lab
    port = unshaped.next_port()
    sip = lab.ip("server")
    with echo_server(unshaped, port, strategy=strategy) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        r = client_app(lab, "concurrent", sip, port, 6, 30, 3000)
        assert not r["errors"] and r["ok"] == r["count"] == 6 * 30
        r = client_app(lab, "bulk", sip, port, 2 << 20)
        assert r["recv"] == r["sent"] and r["recv_sha"] == r["sent_sha"]
        cap.stop()
    check_ack_clamping(cap.path, srv.trace, sip, port)
    hs = read_events(srv.trace, "hs")
    rlog = read_events(srv.trace, "rlog")
    closes = read_events(srv.trace, "close")
    segs = _server_segments(cap.path, sip, port)
    isn: dict[int, int] = {}
    synacks = data = fins = 0
    for t, cport, flags, sq, plen in segs:
        if flags & dpkt.tcp.TH_SYN:
            synacks += 1
            isn.setdefault(cport, sq)
            ev = _first_at_or_before(hs.get(cport, []), t)
            assert ev is not None, f"SYN-ACK to port {cport} at {t} before its handshake was stored"
            continue
        if plen:
            data += 1
            end = (sq - isn[cport] - 1) % (1 << 32) + plen  # outstream offset past the segment
            ev = _first_at_or_before(rlog.get(cport, []), t)
            logged = int(ev[0]) if ev else 0
            assert logged >= end, (
                f"port {cport}: response bytes up to {end} on the wire at {t} while only "
                f"{logged} read bytes were logged"
            )
        if flags & (dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST):
            fins += 1
            ev = _first_at_or_before(closes.get(cport, []), t)
            assert ev is not None, f"FIN/RST to port {cport} at {t} before the application closed"
    assert synacks >= 7 and data > 100 and fins >= 7, (synacks, data, fins)
