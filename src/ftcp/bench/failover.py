"""`ftcp bench failover`: what losing the server's host costs (host failover).

Per run, in one lab per topology: a logger in the logger host, the workload
server of `ftcp bench recovery` under `ftcp run --vip` in the server host (the
primary) and `--standby` in the backup host, one client. The client uploads N
bytes (logged: N bytes to refill, their read results to replay); then the
primary's host is powered off (links cut, every process SIGKILLed) and the
client at once sends a one-byte ping the server answers: the client-visible
stall is the time from the power-off to the answer. The standby reports its
split (`FTCP_BENCH_RECOVERY_TIMING`):

* detection: power-off -> the logger lent the standby the lease;
* address: -> the service address added and announced (gratuitous ARP);
* start-up: the application's own (spawn -> listening), overlapped with the log
  transfer;
* rebuild (the restart of `ftcp bench recovery`) and replay.

Beside them, in the same run: the stall of a process crash (kill -9, `ftcp
bench recovery` on the same topology) and keepalived's defaults as an anchor.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcp.bench.recovery import MB, _env, one_run
from ftcp.lab.services import start_logger

if TYPE_CHECKING:
    from ftcp.lab.net import Lab

PORT = 9400
LOGGER_PORT = 7027
# keepalived's defaults: VRRP adverts every second; a backup declares the master down
# after 3 missed adverts plus its skew time, about 3 s
KEEPALIVED = "keepalived defaults: 1 s adverts, failover after ~3 s (3 missed + skew)"
TARGET_DETECTION_MS = 150.0
TARGET_STALL_P99_MS = 500.0  # plus the application's own start-up


def _vip(lab: Lab) -> ipaddress.IPv4Interface:
    net = ipaddress.ip_network(lab.subnet("front"))
    return ipaddress.IPv4Interface(f"{net.network_address + 9}/{net.prefixlen}")


def _ftcp_run(
    lab: Lab, host: str, logger: str, vip: str, restore: str, work: Path, nbytes: int,
    standby: bool, timing: Path | None,
) -> subprocess.Popen:  # fmt: skip
    err = open(work / f"{host}.err", "w")  # noqa: SIM115
    env = {"FTCP_BENCH_RECOVERY_TIMING": str(timing)} if timing is not None else {}
    p = lab.popen(
        host,
        [sys.executable, "-c", "from ftcp.cli import main; main()", "run",
         "--logger", logger, "--insecure", "--port", str(PORT), "--vip", vip,
         "--iface", lab.ifname(host, "front"), "--restore", restore,
         "--state-dir", str(work / f"state-{host}"), *(["--standby"] if standby else []),
         "--", sys.executable, "-m", "ftcp.bench.recovery", "serve", str(PORT), str(nbytes)],
        stdout=err, stderr=subprocess.STDOUT, text=True, env=_env(env),
    )  # fmt: skip
    err.close()
    return p


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.name}: no {text!r}: {path.read_text()[-2000:]}")
        time.sleep(0.02)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def power_off_run(
    lab: Lab, logger: str, restore: str, nbytes: int, work: Path
) -> dict[str, Any]:
    """One power-off of the primary's host in `lab` (see the module docstring)."""
    vip = _vip(lab)
    timing = work / "timing.jsonl"
    timing.unlink(missing_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        primary = _ftcp_run(lab, "server", logger, vip.with_prefixlen, restore, work, nbytes,
                            False, None)  # fmt: skip
        procs.append(primary)
        _wait_for(work / "server.err", "application pid", primary, 20)
        standby = _ftcp_run(lab, "backup", logger, vip.with_prefixlen, restore, work, nbytes,
                            True, timing)  # fmt: skip
        procs.append(standby)
        _wait_for(work / "backup.err", "waiting for the lease", standby, 20)
        cl = lab.popen(
            "client",
            [sys.executable, "-m", "ftcp.bench.recovery", "client", str(vip.ip), str(PORT),
             str(nbytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env({}),
        )  # fmt: skip
        procs.append(cl)
        assert cl.stdout is not None and cl.stdin is not None
        if "loaded" not in (line := cl.stdout.readline()):
            raise RuntimeError(f"client: {line!r}; {(work / 'server.err').read_text()[-2000:]}")
        time.sleep(0.3)  # the last read results reach the logger
        t_off = time.time()
        lab.power_off("server")
        cl.stdin.write("go\n")
        cl.stdin.flush()
        if "done" not in (line := cl.stdout.readline()):
            raise RuntimeError(f"client: {line!r}; {(work / 'backup.err').read_text()[-2000:]}")
        res = json.loads(line)
        deadline = time.monotonic() + 10
        while not timing.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        t = json.loads(timing.read_text().splitlines()[-1])
        return {
            "stall_ms": 1000 * res["stall_s"],
            "detection_ms": 1000 * (t["wall_started"] - t_off),
            "address_ms": 1000 * (t["address_s"] or 0),
            "startup_ms": 1000 * (t["startup_s"] or 0),
            "rebuild_ms": 1000 * t["restart_s"],
            "replay_ms": 1000 * t["replay_s"],
            "ok": bool(res["ok"]),
        }
    finally:
        for p in reversed(procs):
            _stop(p)
        with contextlib.suppress(Exception):
            lab.power_on("server")


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


KEYS = ("stall_ms", "detection_ms", "address_ms", "startup_ms", "rebuild_ms", "replay_ms")


def cell(topology: str, runs: int, restore: str, nbytes: int) -> dict[str, Any]:
    """`runs` power-offs on one lab of `topology`, and a few process crashes beside them."""
    from ftcp.lab import net

    lab = net.up(topology, net.unique_name("f"))
    work = Path(tempfile.mkdtemp(prefix="ftcp-bench-fo-"))
    try:
        lg = start_logger(lab, "logger", lab.ip("logger"), LOGGER_PORT, work / "log")
        try:
            logger = f"{lab.ip('logger')}:{LOGGER_PORT}"
            samples = [power_off_run(lab, logger, restore, nbytes, work) for _ in range(runs)]
        finally:
            _stop(lg)
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)
    crashes = [one_run(topology, nbytes, False, restore) for _ in range(max(3, runs // 4))]
    row: dict[str, Any] = {"topology": topology, "restore": restore, "runs": runs,
                           "logged_mb": nbytes / MB}  # fmt: skip
    for k in KEYS:
        xs = [s[k] for s in samples]
        row[k] = {"p50": statistics.median(xs), "p99": _pct(xs, 0.99), "max": max(xs)}
    row["stall_less_startup_ms"] = {
        "p99": _pct([s["stall_ms"] - s["startup_ms"] for s in samples], 0.99)
    }
    row["crash_stall_ms"] = {"p50": statistics.median(c["stall_ms"] for c in crashes)}
    row["ok"] = all(s["ok"] for s in samples) and all(c["ok"] for c in crashes)
    return row


def run(topologies: Sequence[str], runs: int, restore: str, nbytes: int) -> dict[str, Any]:
    rows = []
    for topo in topologies:
        row = cell(topo, runs, restore, nbytes)
        rows.append(row)
        print(_line(row), file=sys.stderr, flush=True)
    return {"rows": rows, "anchor": KEEPALIVED}


def _line(r: dict[str, Any]) -> str:
    def f(k: str) -> str:
        return f"{r[k]['p50']:6.1f}/{r[k]['p99']:6.1f}"

    return (
        f"{r['topology']:>8} {r['restore']:>9} {r['runs']:3d} runs  stall {f('stall_ms')} ms "
        f"(p50/p99): detection {f('detection_ms')}, address {f('address_ms')}, app "
        f"start-up {f('startup_ms')}, rebuild {f('rebuild_ms')}, replay {f('replay_ms')}; "
        f"stall less start-up p99 {r['stall_less_startup_ms']['p99']:6.1f} ms; "
        f"a process crash's stall p50 {r['crash_stall_ms']['p50']:6.1f} ms"
        + ("" if r["ok"] else "  FAILED")
    )


def render(doc: dict[str, Any]) -> str:
    head = (
        "host failover after a power-off of the primary (p50/p99, ms): the client-visible "
        f"stall, split; targets: detection <= {TARGET_DETECTION_MS:g} ms, stall p99 <= "
        f"{TARGET_STALL_P99_MS:g} ms + the application's start-up. Anchor: {doc['anchor']}\n"
    )
    return head + "\n".join(_line(r) for r in doc["rows"])
