"""Crash-suite helpers: kill the protected application, check the client-side capture."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ithelpers import Capture, Env, Protected, read_trace, server_acks, wait_until

from ftcp.appproc import children
from ftcp.core import seq

CRASHAPPS = str(Path(__file__).with_name("crashapps.py"))


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def app_pid(srv: Protected) -> int | None:
    kids = children(srv.proc.pid)
    return kids[0] if kids else None


def kill_app(srv: Protected) -> int:
    """kill -9 the application and everything it forked; its pid."""
    pid = wait_until(lambda: app_pid(srv), 20, "the application to run")
    victims = [pid, *descendants(pid)]
    for p in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return pid


def recovered_count(srv: Protected) -> int:
    return srv.err().count("ftcp run: recovered")


@dataclass
class WireCheck:
    packets: int = 0
    problems: list[str] = field(default_factory=list)


def check_wire(pcap: Path, server_ip: str, port: int, server_closes: bool = False) -> WireCheck:
    """No RST from the server, no server FIN before the client's, no gap in the outstream.

    `server_closes`: the application closes first (HTTP/1.0): its FIN is its own."""
    import dpkt

    res = WireCheck()
    client_fin: dict[int, bool] = {}
    nxt: dict[int, int] = {}
    with open(pcap, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            plen = ip.len - ip.hl * 4 - tcp.off * 4
            res.packets += 1
            if socket.inet_ntoa(ip.dst) == server_ip and tcp.dport == port:
                if tcp.flags & dpkt.tcp.TH_FIN:
                    client_fin[tcp.sport] = True
                continue
            if socket.inet_ntoa(ip.src) != server_ip or tcp.sport != port:
                continue
            cp = tcp.dport
            if tcp.flags & dpkt.tcp.TH_RST:
                res.problems.append(f"RST to client port {cp}")
            if tcp.flags & dpkt.tcp.TH_FIN and not client_fin.get(cp) and not server_closes:
                res.problems.append(f"FIN to client port {cp} before the client's own FIN")
            if tcp.flags & dpkt.tcp.TH_SYN:
                nxt[cp] = seq.add(tcp.seq, 1)
                continue
            end = seq.add(tcp.seq, plen + (1 if tcp.flags & dpkt.tcp.TH_FIN else 0))
            if cp in nxt:
                if plen and seq.gt(tcp.seq, nxt[cp]):
                    res.problems.append(
                        f"gap in the outstream to port {cp}: {seq.sub(tcp.seq, nxt[cp])} bytes"
                    )
                nxt[cp] = seq.max_(nxt[cp], end)
    return res


def run_client(env: Env, args: list[Any], timeout: float = 120) -> subprocess.Popen[str]:
    return env.lab.popen(
        "client",
        [sys.executable, CRASHAPPS, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_client(p: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    import json

    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"client timed out: {err[-2000:]}") from None
    assert p.returncode == 0, f"client failed ({p.returncode}): {out[-500:]} {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def check_acks(pcap: Path, trace: Path, server_ip: str, port: int) -> int:
    """Invariant 1 on the wire: every ack the client received, to the end of the capture.

    (The client's FIN is acked while `ftcp run` runs, so no late unclamped ack of it
    arrives after it stopped.)"""
    limits = read_trace(trace)
    bad = []
    n = 0
    for t, cport, ack in server_acks(pcap, server_ip, port):
        n += 1
        lim = None
        for te, le in limits.get(cport, []):
            if te > t:
                break
            lim = le
        if lim is None or not seq.le(ack, lim):
            bad.append((t, cport, ack, lim))
    assert not bad, f"{len(bad)} acks beyond the logged limit, e.g. {bad[:5]}"
    return n


def verify(
    env: Env,
    srv: Protected,
    cap: Capture,
    port: int,
    server_closes: bool = False,
) -> WireCheck:
    cap.stop()
    w = check_wire(cap.path, env.server_ip, port, server_closes)
    assert not w.problems, f"{w.problems[:5]}\n{srv.err()[-3000:]}"
    check_acks(cap.path, srv.trace, env.server_ip, port)
    return w


def sleep_random(rng: Any, lo: float, hi: float) -> float:
    d = rng.uniform(lo, hi)
    time.sleep(d)
    return d
