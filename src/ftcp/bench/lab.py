"""`ftcp bench lab`: does each lab topology deliver the rate it claims?

For each topology: goodput of one TCP stream client->server (front link) and
server->logger (back link), against the configured rate of that link. For a
hub topology (`10-shared`) also both streams at once: their sum must stay at
the one shared budget, and the hub's own counters give the medium's load.

Rates count whole Ethernet frames (what `tbf` and the hub meter); goodput
counts TCP payload. A full segment carries 1448 payload bytes in a 1514-byte
frame, so goodput can reach at most 95.6% of the configured rate; on the
shared hub the receiver's ACKs ride the same budget (about 2% more).
Traffic comes from iperf3 when installed, else from `ftcp.lab.traffic`.
Goodput is read from the sender's kernel (`tcp_info.delivered` x MSS, sock_diag)
at two instants inside the run, 1 s after the start and 0.5 s before the end:
slow start and the ends are left out, and neither application's scheduling
(a receiver descheduled for a moment, then catching up) skews it. The
receivers' own whole-test averages are kept in the JSON as well.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ftcp.errors import UserError
from ftcp.lab import net
from ftcp.lab.net import NETNS_RUN_DIR, Lab
from ftcp.lab.tcpinfo import SockDiag
from ftcp.lab.topology import PAYLOAD_EFFICIENCY, RATE_COUNTS, TOPOLOGIES, get_topology

BASE_PORT = 5301


@dataclass
class Result:
    topology: str
    link: str  # "client->server", "server->logger", or "sum of both at once"
    configured_bps: int | None
    measured_bps: float
    ratio: float | None  # measured / configured
    medium_bps: float | None = None  # hub only: frame bits/s through the shared bucket
    streams: int = 1
    receiver_avg_bps: float | None = None  # the receiving application's whole-test average
    window_s: float = 0.0  # length of the steady-state sampling window


@dataclass(frozen=True)
class Stream:
    src: str
    dst: str
    segment: str

    @property
    def label(self) -> str:
        return f"{self.src}->{self.dst}"


FRONT = Stream("client", "server", "front")
BACK = Stream("server", "logger", "back")


def _tool(choice: str = "auto") -> str:
    if choice == "auto":
        return "iperf3" if shutil.which("iperf3") else "python"
    if choice == "iperf3" and not shutil.which("iperf3"):
        raise UserError("iperf3 is not installed (use --tool python)")
    return choice


def _start_server(lab: Lab, s: Stream, port: int, tool: str, seconds: float) -> subprocess.Popen:
    ip = lab.ip(s.dst, s.segment)
    if tool == "iperf3":
        argv = ["iperf3", "-s", "-1", "-J", "-B", ip, "-p", str(port)]
        return lab.popen(s.dst, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p = lab.python(
        s.dst, "ftcp.lab.traffic", "recv", "--bind", ip, "--port", str(port),
        "--timeout", str(seconds + 30), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        raise UserError(f"receiver in {s.dst} did not start")
    return p


def _start_client(lab: Lab, s: Stream, port: int, tool: str, seconds: float) -> subprocess.Popen:
    ip = lab.ip(s.dst, s.segment)
    if tool == "iperf3":
        argv = ["iperf3", "-c", ip, "-p", str(port), "-t", f"{seconds:g}", "-J"]
        return lab.popen(s.src, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return lab.python(
        s.src, "ftcp.lab.traffic", "send", "--to", ip, "--port", str(port),
        "--seconds", f"{seconds:g}", stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_listening(lab: Lab, s: Stream, port: int, timeout: float = 5.0) -> None:
    """Poll (from the destination host itself) until the server port accepts."""
    ip = lab.ip(s.dst, s.segment)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = lab.run(s.dst, ["ss", "-Hltn", "src", f"{ip}:{port}"], check=False)
        if r.returncode != 0 or r.stdout.strip():
            return
        time.sleep(0.05)
    raise UserError(f"server on {s.dst} {ip}:{port} never listened")


def _delivered(diag: SockDiag, lab: Lab, s: Stream, port: int) -> tuple[float, int]:
    """(time, TCP payload bytes that reached the receiver) for the stream, read from the
    sender's kernel: `tcp_info.delivered` (segments cumulatively acked or SACKed, as they
    arrive) times the MSS. Independent of when either application gets the CPU, and
    unlike `bytes_acked` it does not jump when a hole is filled."""
    dst = (lab.ip(s.dst, s.segment), port)
    t0 = time.monotonic()
    socks = [k for k in diag.tcp() if k.dst == dst]
    t1 = time.monotonic()
    if not socks:
        raise UserError(f"no TCP connection {s.label} to {dst[0]}:{port} to measure")
    return (t0 + t1) / 2, sum(k.delivered * k.snd_mss for k in socks)


def _finish(
    tool: str, clients: list[subprocess.Popen], servers: list[subprocess.Popen], timeout: float
) -> list[float]:
    """Wait for every stream; the receivers' own whole-test averages (bit/s)."""
    avgs = []
    for c, srv in zip(clients, servers, strict=True):
        out, err = c.communicate(timeout=timeout)
        sout, serr = srv.communicate(timeout=timeout)
        if c.returncode or srv.returncode:
            why = (err or serr or out or sout or "").strip().splitlines()[-1:] or ["?"]
            raise UserError(f"{tool} failed: {why[0][:200]}")
        if tool == "iperf3":
            avgs.append(float(json.loads(sout)["end"]["sum_received"]["bits_per_second"]))
        else:
            avgs.append(float(json.loads(sout)["bps"]))
    return avgs


@dataclass
class Measurement:
    goodput_bps: list[float]  # per stream, steady state, all streams running
    receiver_avg_bps: list[float]  # per stream, receiver's whole-test average
    medium_bps: float | None  # hub only: frame bits/s through its one bucket
    window_s: float


def measure(lab: Lab, streams: list[Stream], seconds: float, tool: str) -> Measurement:
    """Run `streams` at once for `seconds`.

    Goodput is sampled from the senders' kernels at 1 s and at `seconds` - 0.5 s after
    the start (slow start and the ends left out, every stream running), together
    with the hub's counters; `seconds` < 2 falls back on the receivers' averages.
    """
    ports = [BASE_PORT + i for i in range(len(streams))]
    pairs = list(zip(streams, ports, strict=True))
    servers = [_start_server(lab, s, p, tool, seconds) for s, p in pairs]
    if tool == "iperf3":
        for s, p in pairs:
            _wait_listening(lab, s, p)
    t0 = time.monotonic()
    clients = [_start_client(lab, s, p, tool, seconds) for s, p in pairs]
    goodput: list[float] | None = None
    medium = None
    window = 0.0
    diags = [SockDiag(NETNS_RUN_DIR / lab.netns(s.src)) for s in streams]
    try:
        if seconds >= 2:
            time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
            a = [_delivered(d, lab, s, p) for d, (s, p) in zip(diags, pairs, strict=True)]
            hub_a = lab.hub_stats() if lab.hub_pid is not None else None
            time.sleep(max(0.0, t0 + seconds - 0.5 - time.monotonic()))
            b = [_delivered(d, lab, s, p) for d, (s, p) in zip(diags, pairs, strict=True)]
            hub_b = lab.hub_stats() if lab.hub_pid is not None else None
            goodput = [8 * (nb - na) / (tb - ta) for (ta, na), (tb, nb) in zip(a, b, strict=True)]
            window = b[0][0] - a[0][0]
            if hub_a is not None and hub_b is not None:
                bucket = hub_b["bytes_through_bucket"] - hub_a["bytes_through_bucket"]
                medium = 8 * bucket / (hub_b["time"] - hub_a["time"])
    finally:
        for d in diags:
            d.close()
        avgs = _finish(tool, clients, servers, seconds + 60)
    return Measurement(goodput or avgs, avgs, medium, window)


def _ratio(measured: float, configured: int | None) -> float | None:
    return None if configured is None else measured / configured


def bench_topology(name: str, seconds: float, tool: str) -> list[Result]:
    topo = get_topology(name)
    lab = net.up(topo, net.unique_name("b"))
    results: list[Result] = []
    try:
        for s in (FRONT, BACK):
            conf = topo.link_rate(s.segment)
            m = measure(lab, [s], seconds, tool)
            bps = m.goodput_bps[0]
            results.append(
                Result(
                    name,
                    s.label,
                    conf,
                    bps,
                    _ratio(bps, conf),
                    m.medium_bps,
                    1,
                    m.receiver_avg_bps[0],
                    m.window_s,
                )  # fmt: skip
            )
        if topo.hub is not None:
            conf = topo.hub.rate_bit
            m = measure(lab, [FRONT, BACK], seconds, tool)
            for s, bps, avg in zip((FRONT, BACK), m.goodput_bps, m.receiver_avg_bps, strict=True):
                results.append(
                    Result(
                        name,
                        f"  {s.label} (at once)",
                        conf,
                        bps,
                        _ratio(bps, conf),
                        None,
                        1,
                        avg,
                        m.window_s,
                    )  # fmt: skip
                )
            total = sum(m.goodput_bps)
            results.append(
                Result(
                    name,
                    "sum of both at once",
                    conf,
                    total,
                    _ratio(total, conf),
                    m.medium_bps,
                    2,
                    sum(m.receiver_avg_bps),
                    m.window_s,
                )  # fmt: skip
            )
    finally:
        lab.down()
    return results


def _fmt(bps: float | None) -> str:
    if bps is None:
        return "line rate"
    if bps >= 1e9:
        return f"{bps / 1e9:.3f} Gbit/s"
    return f"{bps / 1e6:.2f} Mbit/s"


def run(
    topologies: list[str],
    seconds: float,
    out_dir: Path,
    console: Console | None = None,
    tool: str = "auto",
) -> Path:
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 110)  # a log file or pipe: room for the table
    for t in topologies:
        get_topology(t)
    net.require_root()
    if seconds <= 0:
        raise UserError("--seconds must be positive")
    tool = _tool(tool)
    results: list[Result] = []
    with console.status("measuring") as status:
        for t in topologies:
            status.update(f"measuring {t} ({tool}, {seconds:g} s per stream)")
            results += bench_topology(t, seconds, tool)
    table = Table(
        title=f"lab goodput, one TCP stream per link ({tool})",
        caption=(
            f"configured rates count {RATE_COUNTS}; measured = TCP payload goodput. "
            f"Ceiling for full-size segments: {PAYLOAD_EFFICIENCY:.3f}. "
            "On the shared hub ACKs use the same budget; 'medium' = frame bits/s "
            "through the hub's one bucket."
        ),
    )
    for col in ("topology", "link", "configured", "measured", "ratio", "medium"):
        left = col in ("topology", "link")
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for r in results:
        table.add_row(
            r.topology,
            r.link,
            _fmt(r.configured_bps),
            _fmt(r.measured_bps),
            "-" if r.ratio is None else f"{r.ratio:.3f}",
            "" if r.medium_bps is None else _fmt(r.medium_bps),
        )
    console.print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "lab.json"
    doc: dict[str, Any] = {
        "bench": "lab",
        "tool": tool,
        "seconds": seconds,
        "rate_counts": RATE_COUNTS,
        "payload_ceiling": PAYLOAD_EFFICIENCY,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {path}")
    return path


ALL = list(TOPOLOGIES)
