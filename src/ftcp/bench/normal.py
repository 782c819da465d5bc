"""`ftcp bench normal`: what protection costs when nothing fails.

For each topology one lab is built with a logger in its logger host. In that one
lab, one after the other, the same server runs bare ("clean") and then under
`ftcp run` once per ack strategy (basic, lazy, eager, conditional), each on its
own port. Against each of these servers the client measures:

* throughput, both directions: a bulk transfer of 1 MiB (the paper's workload;
  the median of `reps` runs) and a large one (100 MiB on fast links, 10 MiB on
  10 Mbit/s links; one run). Time is measured at the client: connect → the
  server's byte count (up, client→server) or connect → EOF (down);
* latency during the transfer, as the client's kernel sees it: the median of
  TCP_INFO samples of the client socket taken every 10 ms — `tcpi_rtt` (the
  smoothed RTT of the client's data) going up, `tcpi_rcv_rtt` (the receiver's
  RTT estimate) going down, where the client sends no data;
* acks: the client's TCP_INFO counters at the end of the transfer —
  `acks_in` = `segs_in - data_segs_in`, the segments without payload the
  client received (the server's pure ACKs, SYN-ACK and FIN included);
  `acks_out` likewise for what the client sent;
* request/response: `conns` connections (1 and 16), each sending a 100-byte
  request and waiting for the 100-byte response, back to back for a fixed time
  (TCP_NODELAY on both ends); p50/p99 latency and requests/s. Measured for
  clean and for every strategy.

Each transfer has a time cap; a transfer that hits it is reported as a timeout
(with the bytes it had moved and the ratio bound it implies), never as a number.
A protected cap is `max(floor, 8 x clean time)`: below 1/8 of clean no target
can be met anyway. If a strategy's 1 MiB transfer times out, its large
transfer in that direction is skipped and says so.

The summary per topology takes, for each strategy, the worst protected/clean
throughput ratio over {bulk, large} x {up, down}; the best strategy by that
figure is compared with the issue's target for the topology.

The server and client are this module run as a script in the lab hosts
(`python -m ftcp.bench.normal serve|xfer|rr ...`).
"""

from __future__ import annotations

import io
import json
import os
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftcp.lab.services import start_logger

STRATEGIES = ("basic", "lazy", "eager", "conditional")
TOPOLOGIES = ("10-10", "10-shared", "10-100", "1g-10g", "unshaped")
TARGETS = {"10-100": 0.99, "10-10": 0.90, "10-shared": 0.45, "1g-10g": 0.90, "unshaped": 0.20}
DIRECTIONS = ("up", "down")
WORKLOADS = ("bulk", "large")
RR_CONNS = (1, 16)
RR_REQ = 100
RR_RESP = 100
MIB = 1 << 20
SLOW_LINK = 100_000_000  # front links below this rate get the smaller large transfer

CHUNK = 1 << 18
PORT = 5600
LOGGER_PORT = 7007
HEADER = struct.Struct("!cQII")  # mode, bytes, request size, response size

# struct tcp_info offsets (linux/tcp.h)
_TI_LEN = 232
_TI = {
    "rtt": 68,
    "rcv_rtt": 92,
    "total_retrans": 100,
    "segs_out": 136,
    "segs_in": 140,
    "data_segs_in": 152,
    "data_segs_out": 156,
}


# --- the two ends (run inside lab hosts) ------------------------------------------------


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        d = conn.recv(n - len(buf))
        if not d:
            return None
        buf += d
    return bytes(buf)


def _handle(conn: socket.socket) -> None:
    with conn:
        try:
            head = _recv_exact(conn, HEADER.size)
            if head is None:
                return
            mode, nbytes, req, resp = HEADER.unpack(head)
            if mode == b"U":
                n = 0
                while d := conn.recv(CHUNK):
                    n += len(d)
                conn.sendall(str(n).encode())
                conn.shutdown(socket.SHUT_WR)
            elif mode == b"D":
                buf = os.urandom(CHUNK)
                left = nbytes
                while left:
                    left -= conn.send(buf[: min(left, CHUNK)])
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(CHUNK):  # until the client closes
                    pass
            elif mode == b"R":
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                answer = os.urandom(resp)
                while _recv_exact(conn, req) is not None:
                    conn.sendall(answer)
        except OSError:
            pass  # a client that gave up (timeout): its connection only


def serve(port: int) -> None:
    """Accept forever, one thread per connection; the header says what to do."""
    with socket.create_server(("0.0.0.0", port), backlog=64) as srv:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def tcp_info(s: socket.socket) -> dict[str, int]:
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TI_LEN)
    return {k: struct.unpack_from("=I", raw, off)[0] for k, off in _TI.items()}


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(
                (host, port), timeout=max(0.1, deadline - time.monotonic())
            )
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class _Sampler(threading.Thread):
    """TCP_INFO RTT of one socket every `interval` s, from a second thread."""

    def __init__(self, s: socket.socket, key: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.s, self.key, self.interval = s, key, interval
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                v = tcp_info(self.s)[self.key]
            except OSError:
                return
            if v:
                self.samples.append(v)

    def stop(self) -> list[int]:
        self.halt.set()
        self.join()
        return self.samples


def transfer(direction: str, host: str, port: int, nbytes: int, cap: float) -> dict[str, Any]:
    """One bulk transfer; stops at `cap` seconds and says so."""
    t0 = time.monotonic()
    deadline = t0 + cap
    s = _connect(host, port, deadline)
    key = "rtt" if direction == "up" else "rcv_rtt"
    sampler = _Sampler(s, key)
    sampler.start()
    n = 0
    timed_out = False

    def arm() -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        s.settimeout(left)

    try:
        if direction == "up":
            arm()
            s.sendall(HEADER.pack(b"U", nbytes, 0, 0))
            buf = os.urandom(CHUNK)
            left = nbytes
            while left:
                arm()
                k = s.send(buf[: min(left, CHUNK)])
                left -= k
                n += k
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while True:
                arm()
                d = s.recv(64)
                if not d:
                    break
                answer += d
            n = int(answer or b"0")
        else:
            arm()
            s.sendall(HEADER.pack(b"D", nbytes, 0, 0))
            while True:
                arm()
                d = s.recv(CHUNK)
                if not d:
                    break
                n += len(d)
    except TimeoutError:
        timed_out = True
    secs = time.monotonic() - t0
    samples = sampler.stop()
    info = tcp_info(s)
    s.close()
    final = info[key] or info["rtt"]
    rtt_us = statistics.median(samples) if samples else final
    return {
        "bytes": n,
        "seconds": secs,
        "mbps": n * 8 / secs / 1e6,
        "timeout": timed_out,
        "cap_s": cap,
        "rtt_ms": rtt_us / 1000,
        "rtt_source": f"tcpi_{key}" if samples or info[key] else "tcpi_rtt",
        "rtt_samples": len(samples),
        "acks_in": info["segs_in"] - info["data_segs_in"],
        "acks_out": info["segs_out"] - info["data_segs_out"],
        "segs_in": info["segs_in"],
        "segs_out": info["segs_out"],
        "retrans": info["total_retrans"],
    }


def reqresp(
    host: str, port: int, conns: int, req: int, resp: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """`conns` connections, each request/response back to back for `warmup + seconds`."""
    deadline = time.monotonic() + 30
    socks = [_connect(host, port, deadline) for _ in range(conns)]
    sel = selectors.DefaultSelector()
    sent_at: dict[int, float] = {}
    got: dict[int, int] = {}
    request = HEADER.pack(b"R", 0, req, resp)
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(10)
        s.sendall(request)
    payload = os.urandom(req)
    t0 = time.monotonic()
    t_start, t_end = t0 + warmup, t0 + warmup + seconds
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        got[s.fileno()] = 0
        sent_at[s.fileno()] = time.monotonic()
        s.send(payload)
    lat: list[float] = []
    outstanding = conns
    while outstanding:
        now = time.monotonic()
        if now > t_end + 10:
            raise RuntimeError(f"{outstanding} responses missing 10 s after the end")
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            d = s.recv(65536)
            if not d:
                raise RuntimeError("server closed a request/response connection")
            fd = s.fileno()
            got[fd] += len(d)
            if got[fd] < resp:
                continue
            got[fd] -= resp
            now = time.monotonic()
            if sent_at[fd] >= t_start and now <= t_end:
                lat.append(now - sent_at[fd])
            if now < t_end:
                sent_at[fd] = now
                s.send(payload)
            else:
                outstanding -= 1
    for s in socks:
        s.close()
    lat.sort()
    if not lat:
        raise RuntimeError("no request completed in the measured window")
    return {
        "conns": conns,
        "requests": len(lat),
        "seconds": seconds,
        "rps": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "mean_ms": statistics.fmean(lat) * 1000,
    }


# --- the driver -----------------------------------------------------------------------


class Plan:
    """Sizes, repetitions and durations of one run."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.reps = 1 if quick else 3
        self.bulk = MIB
        self.rr_seconds = 1.0 if quick else 3.0
        self.rr_warmup = 0.2 if quick else 0.5

    def large(self, front_rate: int | None) -> int:
        slow = front_rate is not None and front_rate < SLOW_LINK
        if self.quick:
            return (2 if slow else 8) * MIB
        return (10 if slow else 100) * MIB

    def sizes(self, front_rate: int | None) -> dict[str, int]:
        return {"bulk": self.bulk, "large": self.large(front_rate)}

    def to_json(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "bulk_reps": self.reps,
            "large_reps": 1,
            "rr_seconds": self.rr_seconds,
            "rr_warmup_s": self.rr_warmup,
            "rr_request_bytes": RR_REQ,
            "rr_response_bytes": RR_RESP,
            "rr_conns": list(RR_CONNS),
        }


def _ftcp_argv() -> list[str]:
    return [sys.executable, "-c", "from ftcp.cli import main; main()"]


def _listening(lab: Any, port: int) -> bool:
    r = lab.run("server", ["ss", "-Hltn", f"sport = :{port}"], check=False)
    return bool(r.stdout.strip())


class _Server:
    """The bench server in the server host, bare or under `ftcp run`."""

    def __init__(self, lab: Any, tmp: Path, mode: str, port: int, logger_addr: str) -> None:
        self.lab, self.port = lab, port
        self.err_path = tmp / f"server-{mode}.err"
        server = [sys.executable, "-m", "ftcp.bench.normal", "serve", str(port)]
        if mode == "clean":
            argv = server
        else:
            argv = [
                *_ftcp_argv(), "run", "--logger", logger_addr, "--insecure", "--port", str(port),
                "--ack-strategy", mode, "--state-dir", str(tmp / f"state-{mode}"), "--", *server,
            ]  # fmt: skip
        with open(self.err_path, "wb") as err:
            self.proc = lab.popen("server", argv, stdout=err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not _listening(lab, port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{mode} server did not start: {self.err()[-2000:]}")
            time.sleep(0.05)

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _client(lab: Any, args: list[str], timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "ftcp.bench.normal", *args]
    r = lab.run("client", argv, timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"client {args[0]} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _one_transfer(lab: Any, port: int, direction: str, nbytes: int, cap: float) -> dict[str, Any]:
    args = ["xfer", direction, lab.ip("server"), str(port), str(nbytes), f"{cap:.3f}"]
    res = _client(lab, args, timeout=cap + 60)
    if not res["timeout"] and res["bytes"] != nbytes:
        raise RuntimeError(f"{direction}: {res['bytes']} of {nbytes} bytes")
    return res


def _summarise_runs(runs: list[dict[str, Any]], cap: float) -> dict[str, Any]:
    done = [r for r in runs if not r["timeout"]]
    if len(done) < len(runs):
        t = runs[-1]
        return {
            "status": "timeout",
            "cap_s": cap,
            "runs": runs,
            "bytes_done": t["bytes"],
            "mbps_upper_bound": None,  # filled by the caller with the bound of the ratio
            "rtt_ms": t["rtt_ms"],
            "acks_in": t["acks_in"],
        }
    return {
        "status": "ok",
        "cap_s": cap,
        "runs": runs,
        "mbps": statistics.median(r["mbps"] for r in runs),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "rtt_ms": statistics.median(r["rtt_ms"] for r in runs),
        "acks_in": statistics.median(r["acks_in"] for r in runs),
        "acks_out": statistics.median(r["acks_out"] for r in runs),
        "retrans": statistics.median(r["retrans"] for r in runs),
    }


def _measure_mode(
    lab: Any,
    port: int,
    sizes: dict[str, int],
    plan: Plan,
    clean: dict[str, Any] | None,
    front_rate: int | None,
) -> dict[str, Any]:
    """Throughput cells and request/response for one server (clean if `clean` is None)."""
    out: dict[str, Any] = {w: {} for w in WORKLOADS}
    for direction in DIRECTIONS:
        bulk_timed_out = False
        for w in WORKLOADS:
            nbytes = sizes[w]
            reps = plan.reps if w == "bulk" else 1
            if clean is None:
                link = front_rate or 1_000_000_000
                cap = 30 + 4 * nbytes * 8 / link
            else:
                ref = clean[w][direction]
                cap = max(10.0 if w == "bulk" else 20.0, 8 * ref["seconds"])
            cap = round(cap, 3)  # as the client receives it
            if w == "large" and bulk_timed_out:
                out[w][direction] = {"status": "skipped", "why": "the 1 MiB transfer timed out"}
                continue
            runs = []
            try:
                for _ in range(reps):
                    r = _one_transfer(lab, port, direction, nbytes, cap)
                    runs.append(r)
                    if r["timeout"]:
                        break
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                if clean is None:
                    raise
                bulk_timed_out = True
                out[w][direction] = {"status": "error", "why": str(e)[-500:], "cap_s": cap}
                continue
            cell = _summarise_runs(runs, cap)
            if cell["status"] == "timeout":
                bulk_timed_out = True
                if clean is None:
                    raise RuntimeError(f"clean {w} {direction} timed out after {cap:.0f} s")
            if clean is not None:
                ref = clean[w][direction]
                if cell["status"] == "ok":
                    cell["ratio"] = cell["mbps"] / ref["mbps"]
                else:
                    # it moved `bytes_done` in `cap` s at most, so rate < that; the ratio is
                    # bounded by clean time / cap (it would have needed more than cap)
                    cell["ratio_upper_bound"] = ref["seconds"] / cap
                    cell["mbps_upper_bound"] = nbytes * 8 / cap / 1e6
            out[w][direction] = cell
    rr: dict[str, Any] = {}
    for conns in RR_CONNS:
        args = [
            "rr", lab.ip("server"), str(port), str(conns), str(RR_REQ), str(RR_RESP),
            str(plan.rr_seconds), str(plan.rr_warmup),
        ]  # fmt: skip
        try:
            r = _client(lab, args, timeout=plan.rr_seconds + plan.rr_warmup + 60)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            if clean is None:
                raise
            rr[str(conns)] = {"status": "error", "why": str(e)[-500:]}
            continue
        r["status"] = "ok"
        if clean is not None:
            ref = clean["rr"][str(conns)]
            r["rps_ratio"] = r["rps"] / ref["rps"]
            r["p50_ratio"] = r["p50_ms"] / ref["p50_ms"]
            r["p99_ratio"] = r["p99_ms"] / ref["p99_ms"]
        rr[str(conns)] = r
    out["rr"] = rr
    return out


def _summary(topo: str, res: dict[str, Any], strategies: Sequence[str]) -> dict[str, Any]:
    """Each strategy's worst throughput ratio; the best strategy against the target."""
    per: dict[str, Any] = {}
    for st in strategies:
        worst: tuple[float, str, bool] | None = None  # ratio (or its bound), cell, is bound
        for w in WORKLOADS:
            for d in DIRECTIONS:
                cell = res["modes"][st][w][d]
                if cell["status"] == "ok":
                    v, bound = cell["ratio"], False
                elif cell["status"] == "timeout":
                    v, bound = cell["ratio_upper_bound"], True
                elif cell["status"] == "error":
                    v, bound = 0.0, True
                else:
                    continue  # skipped: its bulk transfer already counts as a timeout
                if worst is None or v < worst[0]:
                    worst = (v, f"{w} {d}", bound)
        assert worst is not None
        per[st] = {"worst_ratio": worst[0], "worst_cell": worst[1], "is_upper_bound": worst[2]}
    best = max(strategies, key=lambda s: (not per[s]["is_upper_bound"], per[s]["worst_ratio"]))
    target = TARGETS.get(topo)
    b = per[best]
    passed = None if target is None else (not b["is_upper_bound"] and b["worst_ratio"] >= target)
    return {
        "per_strategy": per,
        "best_strategy": best,
        "ratio": b["worst_ratio"],
        "worst_cell": b["worst_cell"],
        "is_upper_bound": b["is_upper_bound"],
        "target": target,
        "pass": passed,
    }


def _start_logger(lab: Any, tmp: Path, extra: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    ip = lab.ip("logger")
    lg = start_logger(
        lab, "logger", ip, LOGGER_PORT, tmp / "logger-data", log=tmp / "logger.err", extra=extra
    )
    return lg, f"{ip}:{LOGGER_PORT}"


def bench_topology(
    topo: str,
    strategies: Sequence[str],
    plan: Plan,
    progress: Any = None,
    logger_args: Sequence[str] = (),
) -> dict[str, Any]:
    from ftcp.lab import net
    from ftcp.lab.topology import get_topology

    front_rate = get_topology(topo).link_rate("front")
    sizes = plan.sizes(front_rate)
    load_start = os.getloadavg()
    t0 = time.monotonic()
    lab = net.up(topo, net.unique_name("n"))
    tmp = Path(tempfile.mkdtemp(prefix="ftcp-bench-normal-"))
    modes: dict[str, Any] = {}
    try:
        lg, logger_addr = _start_logger(lab, tmp, logger_args)
        try:
            for i, mode in enumerate(["clean", *strategies]):
                if progress:
                    progress(f"{topo}: {mode}")
                srv = _Server(lab, tmp, mode, PORT + i, logger_addr)
                try:
                    clean = None if mode == "clean" else modes["clean"]
                    modes[mode] = _measure_mode(lab, srv.port, sizes, plan, clean, front_rate)
                finally:
                    srv.stop()
        finally:
            lg.terminate()
            try:
                lg.wait(10)
            except subprocess.TimeoutExpired:
                lg.kill()
                lg.wait()
    finally:
        lab.down()
    shutil.rmtree(tmp, ignore_errors=True)  # logger data; kept (for the logs) on failure
    res: dict[str, Any] = {
        "front_rate_bps": front_rate,
        "sizes": sizes,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "wall_s": time.monotonic() - t0,
        "modes": modes,
    }
    res["summary"] = _summary(topo, res, strategies)
    return res


METHOD = {
    "throughput": "client-side time: connect -> server's byte count (up) or EOF (down); "
    "Mbit/s of payload; bulk = median of bulk_reps runs, large = one run",
    "rtt": "median of TCP_INFO samples of the client socket every 10 ms during the transfer: "
    "tcpi_rtt (smoothed RTT of the client's data) up, tcpi_rcv_rtt down",
    "acks": "client TCP_INFO at the end of the transfer: acks_in = segs_in - data_segs_in "
    "(segments without payload received by the client: server's pure ACKs incl. SYN-ACK/FIN)",
    "rr": "selectors client, N connections, 100-byte request / 100-byte response back to "
    "back, TCP_NODELAY both ends; latencies of requests sent after the warm-up and answered "
    "before the end; rps = those / rr_seconds",
    "caps": "clean cap 30 s + 4x link time; protected cap max(10 s bulk / 20 s large, "
    "8x clean); a timeout reports ratio_upper_bound = clean seconds / cap",
    "summary": "per strategy the worst protected/clean throughput ratio over bulk/large x "
    "up/down; best strategy vs the target",
}


def run(
    topologies: Sequence[str],
    strategies: Sequence[str],
    out_dir: Path,
    quick: bool = False,
    progress: Any = None,
    logger_nagle: bool | None = None,
) -> dict[str, Any]:
    """Measure and write `<out_dir>/normal.json`; returns the document.

    `logger_nagle`: None leaves the logger's default; True/False passes
    `--nagle`/`--no-nagle` (Nagle on the logger's ack stream to the server)."""
    plan = Plan(quick)
    logger_args = [] if logger_nagle is None else ["--nagle" if logger_nagle else "--no-nagle"]
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "bench": "normal",
        "plan": plan.to_json(),
        "strategies": list(strategies),
        "topologies": list(topologies),
        "targets": {t: TARGETS[t] for t in topologies if t in TARGETS},
        "logger_nagle": {None: "logger default", True: "on", False: "off"}[logger_nagle],
        "logger_args": logger_args,
        "method": METHOD,
        "host": {
            "cpus": os.cpu_count(),
            "kernel": os.uname().release,
            "python": sys.version.split()[0],
            "loadavg_start": list(os.getloadavg()),
        },
        "results": {},
    }
    path = out_dir / "normal.json"
    for topo in topologies:
        doc["results"][topo] = bench_topology(topo, strategies, plan, progress, logger_args)
        doc["host"]["loadavg_end"] = list(os.getloadavg())
        path.write_text(json.dumps(doc, indent=1) + "\n")  # partial results survive a crash
    return doc


# --- tables ---------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:g} MiB"


def _tput_cell(cell: dict[str, Any], clean: bool) -> str:
    if cell["status"] == "skipped":
        return "skipped"
    if cell["status"] == "error":
        return "ERROR"
    if cell["status"] == "timeout":
        return f"TIMEOUT {cell['cap_s']:.0f}s (<{cell['ratio_upper_bound']:.2f})"
    if clean:
        return f"{cell['mbps']:.1f}"
    return f"{cell['mbps']:.1f} ({cell['ratio']:.2f})"


def _lat_cell(cell: dict[str, Any]) -> str:
    if cell["status"] in ("skipped", "error"):
        return "-"
    tag = "~" if cell["status"] == "timeout" else ""
    return f"{tag}{cell['rtt_ms']:.2f} / {cell['acks_in']:.0f}"


def render(doc: dict[str, Any], width: int = 200) -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    strategies = doc["strategies"]
    plan = doc["plan"]
    quick = " (QUICK)" if plan["quick"] else ""
    console.print(
        f"ftcp bench normal{quick}: strategies {', '.join(strategies)}; "
        f"logger Nagle: {doc.get('logger_nagle', 'logger default')}"
    )

    t = Table(
        title=f"throughput, Mbit/s (protected/clean ratio){quick}",
        caption=f"bulk: median of {plan['bulk_reps']}; large: 1 run; 100 MiB on fast links, "
        "10 MiB on 10 Mbit/s links (see size column)",
    )
    for c in ("topology", "workload", "dir", "clean", *strategies):
        t.add_column(c, justify="left" if c in ("topology", "workload", "dir") else "right")
    for topo, res in doc["results"].items():
        m = res["modes"]
        for w in WORKLOADS:
            for d in DIRECTIONS:
                t.add_row(
                    topo,
                    f"{w} {_mib(res['sizes'][w])}",
                    d,
                    _tput_cell(m["clean"][w][d], True),
                    *(_tput_cell(m[s][w][d], False) for s in strategies),
                )
        t.add_section()
    console.print(t)

    t = Table(
        title=f"client RTT during transfer (ms) / pure ACKs received by the client{quick}",
        caption="RTT: median TCP_INFO sample, tcpi_rtt up / tcpi_rcv_rtt down; "
        "ACKs: client segs_in - data_segs_in; ~ = timed-out run",
    )
    for c in ("topology", "workload", "dir", "clean", *strategies):
        t.add_column(c, justify="left" if c in ("topology", "workload", "dir") else "right")
    for topo, res in doc["results"].items():
        m = res["modes"]
        for w in WORKLOADS:
            for d in DIRECTIONS:
                t.add_row(
                    topo,
                    f"{w} {_mib(res['sizes'][w])}",
                    d,
                    _lat_cell(m["clean"][w][d]),
                    *(_lat_cell(m[s][w][d]) for s in strategies),
                )
        t.add_section()
    console.print(t)

    t = Table(
        title=f"request/response {RR_REQ} B / {RR_RESP} B: p50 / p99 ms, req/s "
        f"(req/s ratio){quick}",
        caption=f"{plan['rr_seconds']:g} s per measurement after {plan['rr_warmup_s']:g} s "
        "warm-up; every strategy measured",
    )
    for c in ("topology", "conns", "clean", *strategies):
        t.add_column(c, justify="left" if c in ("topology", "conns") else "right")
    for topo, res in doc["results"].items():
        m = res["modes"]
        for conns in RR_CONNS:
            c = m["clean"]["rr"][str(conns)]
            cells = [f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}, {c['rps']:.0f}"]
            for s in strategies:
                r = m[s]["rr"][str(conns)]
                if r["status"] != "ok":
                    cells.append("ERROR")
                    continue
                cells.append(
                    f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}, {r['rps']:.0f} ({r['rps_ratio']:.2f})"
                )
            t.add_row(topo, str(conns), *cells)
    console.print(t)

    lines = []
    for topo, res in doc["results"].items():
        s = res["summary"]
        verdict = {True: "PASS", False: "FAIL", None: "no target"}[s["pass"]]
        rel = "<" if s["is_upper_bound"] else ""
        target = "-" if s["target"] is None else f"{s['target']:.2f}"
        la = res["loadavg_start"][0], res["loadavg_end"][0]
        lines.append(
            f"{topo:<10} best {s['best_strategy']:<11} worst ratio {rel}{s['ratio']:.3f} "
            f"({s['worst_cell']}) target >= {target}: {verdict}   "
            f"[load {la[0]:.2f}->{la[1]:.2f}]{quick}"
        )
    console.print("\n".join(lines))
    return buf.getvalue().rstrip()


def main(argv: Sequence[str]) -> int:
    mode, *args = argv
    if mode == "serve":
        serve(int(args[0]))
        return 0
    if mode == "xfer":
        d, host, port, nbytes, cap = args
        res = transfer(d, host, int(port), int(nbytes), float(cap))
        print(json.dumps(res), flush=True)
        return 0
    if mode == "rr":
        host, port, conns, req, resp, secs, warm = args
        res = reqresp(host, int(port), int(conns), int(req), int(resp), float(secs), float(warm))
        print(json.dumps(res), flush=True)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
