"""`ftcp bench paper`: the paper's section V (Tables I-V, Figures 3-4) on the lab.

Workload (as in the paper): the client sends 1 MB to the server as fast as it
can over one TCP connection; the server discards it. Every run is captured on
the client's interface (`ftcp.bench.capture`) and reduced to the paper's
figures: throughput = slope of a least-squares fit of segment start sequence
number against time (95% CI, R²), latency = data segment sent -> ack covering
it received (mean, 95% CI), ack count.

Per topology, one lab is built, reused by every configuration and run, and
torn down at the end (also on failure or Ctrl-C). Within a configuration the
server is started once and serves every run.

Configurations (`CONFIGURATIONS`, in table order) are small objects: a name
and a `start(ctx) -> ServerHandle` that starts the server side in the lab
(listening on `ctx.port` at `ctx.server_ip`) and returns something with
`stop()`. `start` raises `NotMeasured(reason)` when it cannot run; such a row
is reported as *not measured* with the reason, never with invented numbers.

* Clean: the discard server, unwrapped. Clean64k (not in the paper): the same
  with SO_RCVBUF 64 KB, to separate the buffer's effect from the wrapping.
* Lazy, Lazy64k, Eager, Conditional: the discard server under
  `ftcp run --ack-strategy X` in the server host, with `ftcp logger` in the
  logger host (`protected_configuration`). Lazy64k sets SO_RCVBUF 64 KB.
  `ctx.logger_nagle` asks for Nagle on (the paper's default) or off (Table IV)
  on the logger's ack stream; the logger needs a `--nagle/--no-nagle` switch
  for that (`logger_nagle_switch()`), otherwise the Nagle-off rows are not
  measured.
* Table V (recovery) is measured by `RECOVERY_PROBE` (see `RecoveryContext`),
  by default `kill9_probe` (the `ftcp bench recovery` harness: kill -9 of the
  server application after a logged 1 MB upload), for the paper's handshake
  restore and, as extra rows not in the paper, `--restore repair`. 20 runs per
  cell as the paper (`--quick`: as many as the other tables, at most 3); if it
  is None, Table V is not measured.

Output: `report.md`, `results.json` (every raw run, with the sufficient
statistics the pooled figures are recomputed from), `fig3.png`, `fig4.png`
(and per-topology variants), and the client-side pcaps under `pcap/`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ftcp.bench import published as pub
from ftcp.lab.services import start_logger

if TYPE_CHECKING:
    from ftcp.lab.net import Lab

TRANSFER_BYTES = pub.TRANSFER_BYTES
KB = pub.KB
RCVBUF_64K = 64 * 1024
SERVER_PORT_BASE = 5600
LOGGER_PORT_BASE = 7100
RUN_TIMEOUT = 60.0  # seconds one 1 MB transfer may take (Lazy on 10-shared: ~5 s in the paper)
QUICK_RUNS = 3
FULL_RUNS = pub.RUNS
FIGURE_TOPOLOGY_PREFERENCE = ("10-shared", "10-10", "10-100")  # the paper's figures: 10 Shared
FTCP_CLI = "ftcp.cli"


class NotMeasured(Exception):
    """A configuration (or table) cannot be measured here; the message says why."""


# --- the workload (runs inside lab hosts: python -m ftcp.bench.paper serve|send) ----------


def serve(bind: str, port: int, rcvbuf: int | None) -> int:
    """Discard server: accept connections one after another, read each to EOF, close."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by accept
    srv.bind((bind, port))
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            while conn.recv(1 << 16):
                pass


def send(to: str, port: int, nbytes: int, timeout: float) -> dict[str, Any]:
    """Connect, send `nbytes` as fast as possible, half-close, wait for the server's EOF."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection((to, port), timeout=timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    data = bytes(nbytes)
    with s:
        t0 = time.monotonic()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 12):
            pass
        t1 = time.monotonic()
    return {"bytes": nbytes, "seconds": t1 - t0}


# --- configurations -------------------------------------------------------------------------


class ServerHandle(Protocol):
    def stop(self) -> None: ...

    def failure(self) -> str | None:
        """None while the server side is healthy, else why it is not."""
        ...


@dataclass
class RunContext:
    """What a configuration's `start` gets: the lab and where the server must listen."""

    lab: Lab
    topology: str
    port: int  # the server's TCP port (client-facing)
    logger_port: int  # a free port for a logger in the logger host
    work: Path  # scratch directory for this configuration (removed afterwards)
    logger_nagle: bool = True  # Nagle on the logger -> server stream (Table IV: False)

    @property
    def server_ip(self) -> str:
        return self.lab.ip("server", "front")


StartFn = Callable[[RunContext], ServerHandle]


@dataclass(frozen=True)
class Configuration:
    name: str
    start: StartFn
    protected: bool  # goes through FT-TCP (has a logger): has a Nagle-off variant
    in_paper: bool = True
    note: str = ""


@dataclass
class ProcHandle:
    """Processes started in the lab for one configuration, stopped in order."""

    procs: list[tuple[str, subprocess.Popen[Any]]]
    logs: dict[str, Path] = field(default_factory=dict)
    cleanup: list[Path] = field(default_factory=list)

    def failure(self) -> str | None:
        for name, p in self.procs:
            rc = p.poll()
            if rc is not None:
                return f"{name} exited with status {rc}{_tail(self.logs.get(name))}"
        return None

    def stop(self) -> None:
        for _name, p in self.procs:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for d in self.cleanup:
            shutil.rmtree(d, ignore_errors=True)


def _tail(path: Path | None, lines: int = 3) -> str:
    if path is None or not path.exists():
        return ""
    text = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return (": " + " | ".join(text[-lines:])[:400]) if text else ""


def _listening(lab: Lab, host: str, port: int) -> bool:
    r = lab.run(host, ["ss", "-Hltn", f"sport = :{port}"], check=False)
    return bool(r.stdout.strip())


def _serve_argv(ctx: RunContext, rcvbuf: int | None) -> list[str]:
    argv = [sys.executable, "-m", "ftcp.bench.paper", "serve", "--bind", ctx.server_ip]
    argv += ["--port", str(ctx.port)]
    if rcvbuf:
        argv += ["--rcvbuf", str(rcvbuf)]
    return argv


def clean_configuration(name: str = "Clean", rcvbuf: int | None = None, **kw: Any) -> Configuration:
    """The discard server on the server's unmodified TCP."""

    def start(ctx: RunContext) -> ServerHandle:
        log = ctx.work / "server.log"
        with open(log, "wb") as err:
            p = ctx.lab.python(
                "server", "ftcp.bench.paper", *_serve_argv(ctx, rcvbuf)[3:],
                stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip
        assert p.stdout is not None
        line = p.stdout.readline().decode().strip()
        if line != "ready":
            p.kill()
            p.wait()
            raise NotMeasured(f"the discard server did not start{_tail(log)}")
        return ProcHandle([("discard server", p)], {"discard server": log})

    return Configuration(name, start, protected=False, **kw)


_NAGLE_SWITCH: bool | None = None


def logger_nagle_switch() -> bool:
    """Whether `ftcp logger` has a `--nagle/--no-nagle` switch (for Table IV)."""
    global _NAGLE_SWITCH
    if _NAGLE_SWITCH is None:
        try:
            from ftcp.logger.cli import logger

            _NAGLE_SWITCH = any("--no-nagle" in p.secondary_opts for p in logger.params)
        except Exception:
            _NAGLE_SWITCH = False
    return _NAGLE_SWITCH


def ftcp_run_unavailable() -> str | None:
    """Why `ftcp run` cannot be used (None: it is there; whether it works shows at start)."""
    import importlib.util

    for mod in ("ftcp.supervisor", "ftcp.ssw.engine"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} does not exist yet"
        except Exception as e:  # a parent package failing to import
            return f"{mod} cannot be imported: {e}"
    return None


def protected_configuration(
    name: str, strategy: str, rcvbuf: int | None = None, **kw: Any
) -> Configuration:
    """The discard server under `ftcp run --ack-strategy <strategy>`, logger in the logger host."""

    def start(ctx: RunContext) -> ServerHandle:
        why = ftcp_run_unavailable()
        if why:
            raise NotMeasured(why)
        nagle_args: list[str] = []
        if logger_nagle_switch():
            nagle_args = ["--nagle" if ctx.logger_nagle else "--no-nagle"]
        elif not ctx.logger_nagle:
            raise NotMeasured("`ftcp logger` has no --nagle/--no-nagle switch yet")
        lab = ctx.lab
        logger_ip = lab.ip("logger")
        data = ctx.work / "logger-data"
        llog, rlog = ctx.work / "logger.log", ctx.work / "ftcp-run.log"
        try:
            lp = start_logger(
                lab, "logger", logger_ip, ctx.logger_port, data, log=llog, extra=nagle_args
            )
        except RuntimeError as e:
            raise NotMeasured(str(e)) from None
        argv = [
            "run", "--logger", f"{logger_ip}:{ctx.logger_port}", "--insecure",
            "--port", str(ctx.port), "--ack-strategy", strategy,
            "--iface", lab.ifname("server", "front"), "--state-dir", str(ctx.work / "state"),
            "--", *_serve_argv(ctx, rcvbuf),
        ]  # fmt: skip
        with open(rlog, "wb") as out:
            rp = lab.python("server", FTCP_CLI, *argv, stdout=out, stderr=subprocess.STDOUT)
        handle = ProcHandle(
            [("ftcp run", rp), ("ftcp logger", lp)],
            {"ftcp run": rlog, "ftcp logger": llog},
            [data],
        )
        deadline = time.monotonic() + 30
        while not _listening(lab, "server", ctx.port):
            bad = handle.failure()
            if bad or time.monotonic() > deadline:
                handle.stop()
                raise NotMeasured(bad or f"ftcp run did not listen on {ctx.port} in 30 s")
            time.sleep(0.1)
        return handle

    return Configuration(name, start, protected=True, **kw)


def default_configurations() -> list[Configuration]:
    return [
        clean_configuration("Clean"),
        protected_configuration("Lazy", "lazy"),
        protected_configuration("Lazy64k", "lazy", RCVBUF_64K),
        protected_configuration("Eager", "eager"),
        protected_configuration("Conditional", "conditional"),
        clean_configuration(
            "Clean64k",
            RCVBUF_64K,
            in_paper=False,
            note="not in the paper: Clean with SO_RCVBUF 64 KB, the buffer of Lazy64k",
        ),  # fmt: skip
    ]


CONFIGURATIONS: list[Configuration] = default_configurations()


# --- recovery (Table V) hook ----------------------------------------------------------------


RESTORES = ("handshake", "repair")  # the paper's rebuild (a replayed handshake) first
RESTORE_IN_PAPER = "handshake"


@dataclass
class RecoveryContext:
    """One Table V run: the probe protects a discard server, has the client send
    `transfer_bytes`, kills the server application (SIGKILL) once everything is
    logged, lets the supervisor recover it, and reports the timings."""

    lab: Lab
    setup: str  # "10-10", "10-100", "local" or "local-nice" (logger in the server host)
    logger_host: str  # "logger", or "server" for the local setups
    port: int
    logger_port: int
    work: Path
    transfer_bytes: int = TRANSFER_BYTES
    restore: str = RESTORE_IN_PAPER  # `ftcp run --restore`: "handshake" (paper) | "repair"
    logger_nice: int = 0  # the logger process's nice value ("local-nice": -10)


@dataclass(frozen=True)
class RecoverySample:
    restart_s: float  # death -> rebuilt kernel connection (without the app's start-up)
    replay_s: float  # log fetch + instream refill + the logged reads played back through NSW
    reads: int  # read calls replayed (avg read time = replay_s / reads)
    extra: dict[str, Any] = field(default_factory=dict)  # the probe's other figures


RecoveryProbe = Callable[[RecoveryContext], RecoverySample]


def kill9_probe(ctx: RecoveryContext) -> RecoverySample:
    """The default probe: `ftcp.bench.recovery.run_in_lab` (the harness of `ftcp bench
    recovery`): a server that reads the 1 MB upload under `ftcp run --restore
    <ctx.restore>`, kill -9 once it is all logged, the supervisor's own timings."""
    from ftcp.bench import recovery as rec

    r = rec.run_in_lab(
        ctx.lab, ctx.transfer_bytes, ctx.logger_host == "server", ctx.restore,
        ctx.port, ctx.logger_port, ctx.work, logger_nice=ctx.logger_nice,
    )  # fmt: skip
    if not r["ok"]:
        raise RuntimeError(
            "the recovered connection did not answer correctly"
            + (" (not rebuilt by TCP_REPAIR)" if ctx.restore == "repair" else "")
        )
    if r["reads"] < 1:
        raise RuntimeError("the restarted application reported no replayed reads")
    extra = {k: r[k] for k in ("fetch_ms", "startup_ms", "stall_ms", "total_ms",
                               "queued_mb", "original_reads")}  # fmt: skip
    return RecoverySample(r["restart_ms"] / 1e3, r["replay_ms"] / 1e3, r["reads"], extra)


RECOVERY_PROBE: RecoveryProbe | None = kill9_probe


def recovery_unavailable() -> str | None:
    if RECOVERY_PROBE is not None:
        return None
    why = "no recovery probe registered (ftcp.bench.paper.RECOVERY_PROBE is None)"
    try:
        import ftcp.supervisor as sup

        if "not implemented yet" in (sup.__doc__ or ""):
            why += "; `ftcp run` has no crash recovery yet"
    except Exception:
        why += "; ftcp.supervisor is not importable"
    return why


# --- the runner -----------------------------------------------------------------------------


@dataclass
class ConfigResult:
    name: str
    status: str = "pending"  # "measured" | "not measured"
    reason: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    in_paper: bool = True
    protected: bool = False
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "in_paper": self.in_paper,
            "protected": self.protected,
            "note": self.note,
            "summary": self.summary,
            "failures": self.failures,
            "runs": self.runs,
        }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled figures of one configuration from its runs' sufficient statistics."""
    from ftcp.bench.stats import MomentSums, SumStats, mean_ci

    fs = SumStats()
    ls = MomentSums()
    for r in runs:
        fs = fs.merge(SumStats.from_json(r["fit_sums"]))
        ls = ls.merge(MomentSums.from_json(r["latency_sums_s"]))
    fit = fs.fit()
    lat = ls.mean_ci()
    acks = [float(r["acks"]) for r in runs]
    tput = [float(r["throughput_kBps"]) for r in runs]
    out: dict[str, Any] = {
        "runs": len(runs),
        "throughput_Bps": fit.slope,
        "throughput_kBps": fit.slope / KB,
        "throughput_ci_kBps": fit.slope_ci / KB,
        "throughput_mbps": fit.slope * 8 / 1e6,
        "r2": fit.r2,
        "fit_points": fit.n,
        "latency_ms": lat.mean * 1e3,
        "latency_ci_ms": lat.ci * 1e3,
        "latency_sd_ms": lat.sd * 1e3,
        "latency_spread_ms": lat.spread * 1e3,
        "latency_samples": lat.n,
        "acks_per_run": sum(acks) / len(acks),
        "acks_total": int(sum(acks)),
        "run_throughput_kBps": {"min": min(tput), "max": max(tput)},
        "retransmitted": sum(int(r["retransmitted"]) for r in runs),
        "late_segments": sum(int(r.get("late_segments", 0)) for r in runs),
    }
    if len(runs) >= 2:
        m = mean_ci(tput)
        out["run_throughput_kBps"].update(mean=m.mean, ci=m.ci)
        a = mean_ci(acks)
        out["acks_per_run_ci"] = a.ci
    return out


def add_ratios(configs: dict[str, ConfigResult]) -> None:
    """Ratios to Clean measured in the same invocation, on the same topology."""
    clean = configs.get("Clean")
    base = clean.summary if clean is not None and clean.status == "measured" else None
    for c in configs.values():
        if c.summary is None:
            continue
        if base is None:
            c.summary["pct_of_clean"] = None
            c.summary["latency_x_clean"] = None
            c.summary["acks_x_clean"] = None
            continue
        c.summary["pct_of_clean"] = 100.0 * c.summary["throughput_Bps"] / base["throughput_Bps"]
        c.summary["latency_x_clean"] = c.summary["latency_ms"] / base["latency_ms"]
        c.summary["acks_x_clean"] = (
            c.summary["acks_per_run"] / base["acks_per_run"] if base["acks_per_run"] else None
        )


class Progress(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def describe(self, text: str) -> None: ...


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


def one_run(lab: Lab, port: int, pcap: Path, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    """One 1 MB transfer under a client-side capture; the run's metrics (JSON-ready)."""
    from ftcp.bench.capture import Capture, analyze_pcap

    cap = Capture(lab, "client", lab.ifname("client", "front"), port, pcap).start()
    try:
        tx = lab.python(
            "client", "ftcp.bench.paper", "send", "--to", lab.ip("server", "front"),
            "--port", str(port), "--bytes", str(TRANSFER_BYTES), "--timeout", str(timeout),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            out, err = tx.communicate(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            tx.kill()
            tx.communicate()
            raise NotMeasured(f"the 1 MB transfer did not finish in {timeout:g} s") from None
        if tx.returncode:
            why = (err or out or "").strip().splitlines()[-1:] or ["?"]
            raise NotMeasured(f"the client failed (status {tx.returncode}): {why[0][:200]}")
        sender = json.loads(out)
        time.sleep(0.1)  # the last acks and the FIN exchange reach the capture
    finally:
        stats = cap.stop()
    m = analyze_pcap(pcap, port)
    d = m.to_json(series=True)
    d["sender_seconds"] = sender["seconds"]
    d["pcap"] = str(pcap)
    d["capture"] = {
        "captured": stats.captured,
        "dropped_by_kernel": stats.dropped_by_kernel,
    }
    if m.bytes < TRANSFER_BYTES:
        raise NotMeasured(f"the capture holds {m.bytes} of {TRANSFER_BYTES} bytes")
    return d


def measure_configuration(
    lab: Lab,
    topology: str,
    cfg: Configuration,
    index: int,
    runs: int,
    out: Path,
    progress: Progress,
    logger_nagle: bool = True,
    label: str = "",
) -> ConfigResult:
    res = ConfigResult(
        cfg.name + label, in_paper=cfg.in_paper, protected=cfg.protected, note=cfg.note
    )
    tag = f"{topology}/{cfg.name}{label}"
    work = out / "work" / topology / f"{cfg.name}{label}"
    work.mkdir(parents=True, exist_ok=True)
    port = SERVER_PORT_BASE + index * 2 + (0 if logger_nagle else 1)
    ctx = RunContext(lab, topology, port, LOGGER_PORT_BASE + port - SERVER_PORT_BASE, work,
                     logger_nagle)  # fmt: skip
    progress.describe(f"{tag}: starting")
    try:
        handle = cfg.start(ctx)
    except NotMeasured as e:
        res.status, res.reason = "not measured", str(e)
        progress.advance(runs)
        shutil.rmtree(work, ignore_errors=True)
        return res
    done = 0
    try:
        for i in range(runs):
            progress.describe(f"{tag}: run {i + 1}/{runs}")
            pcap = out / "pcap" / topology / f"{cfg.name}{label}-{i + 1}.pcap"
            try:
                r = one_run(lab, port, pcap)
                r["run"] = i + 1
                r["pcap"] = str(pcap.relative_to(out))
                res.runs.append(r)
            except Exception as e:  # noqa: BLE001 - a failed run is data, reported
                why = handle.failure()
                res.failures.append(f"run {i + 1}: {e}" + (f" ({why})" if why else ""))
                if why or (not res.runs and len(res.failures) >= 2):  # gone, or never works
                    progress.advance(runs - i)
                    done = runs
                    break
            progress.advance()
            done += 1
    finally:
        if done < runs:
            progress.advance(runs - done)
        handle.stop()
        shutil.rmtree(work, ignore_errors=True)
    if len(res.runs) >= 1 and sum(int(r["segments"]) for r in res.runs) >= 3:
        res.status = "measured"
        res.summary = summarize(res.runs)
        if res.failures:
            res.reason = f"{len(res.failures)} of {runs} runs failed"
    else:
        res.status = "not measured"
        res.reason = res.failures[0] if res.failures else "no run completed"
    return res


def measure_topology(
    topology: str,
    configs: Sequence[Configuration],
    runs: int,
    out: Path,
    progress: Progress,
    nagle_off: bool = True,
) -> dict[str, Any]:
    from ftcp.lab import net

    lab = net.up(topology, "p" + secrets.token_hex(4)[:7])
    try:
        main: dict[str, ConfigResult] = {}
        for i, cfg in enumerate(configs):
            main[cfg.name] = measure_configuration(lab, topology, cfg, i, runs, out, progress)
        add_ratios(main)
        off: dict[str, ConfigResult] = {}
        if nagle_off:
            for i, cfg in enumerate(configs):
                if not cfg.protected or not cfg.in_paper:
                    continue
                if main[cfg.name].status != "measured":
                    off[cfg.name] = ConfigResult(
                        cfg.name, "not measured", f"{cfg.name} itself was not measured",
                        protected=True,
                    )  # fmt: skip
                    progress.advance(runs)
                    continue
                off[cfg.name] = measure_configuration(
                    lab, topology, cfg, i, runs, out, progress, logger_nagle=False,
                    label=" (Nagle off)",
                )  # fmt: skip
        return {
            "lab": lab.name,
            "topology": lab.topology.to_json(),
            "configs": {k: v.to_json() for k, v in main.items()},
            "nagle_off": {k: v.to_json() for k, v in off.items()},
        }
    finally:
        lab.down()


def recovery_setups(topologies: Sequence[str]) -> list[str]:
    """Table V rows for the topologies measured (Local rides the 10-100 lab)."""
    return [s for s in pub.RECOVERY_SETUPS if _local(s) or s in topologies]


def _local(setup: str) -> bool:
    """A Table V setup whose logger runs in the server's host (it rides the 10-100 lab)."""
    return setup.startswith("local")


def recovery_key(setup: str, restore: str) -> str:
    """`results.json` key of a Table V cell: the setup (the paper's restore) or
    "<setup> repair" (not in the paper)."""
    return setup if restore == RESTORE_IN_PAPER else f"{setup} {restore}"


def measure_recovery(
    runs: int,
    topologies: Sequence[str],
    out: Path,
    restores: Sequence[str] = RESTORES,
    progress: Progress | None = None,
    runs_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Table V: `runs` runs per (setup, restore) cell (`runs_of[restore]` if given)."""
    why = recovery_unavailable()
    setups = recovery_setups(topologies)
    keys = [(s, r) for s in setups for r in restores]
    if why is not None or RECOVERY_PROBE is None:
        return {
            recovery_key(s, r): {"status": "not measured", "reason": why, "samples": [],
                                 "setup": s, "restore": r}
            for s, r in keys
        }  # fmt: skip
    from ftcp.lab import net

    prog = progress or _NoProgress()
    probe = RECOVERY_PROBE
    result: dict[str, Any] = {}
    by_topo: dict[str, list[tuple[str, str]]] = {}
    for s, r in keys:  # one lab per topology: Local rides the 10-100 lab
        by_topo.setdefault("10-100" if _local(s) else s, []).append((s, r))
    for topo, cells in by_topo.items():
        lab = net.up(topo, "r" + secrets.token_hex(4)[:7])
        try:
            for setup, restore in cells:
                cell = len(result)
                key = recovery_key(setup, restore)
                samples: list[dict[str, Any]] = []
                failures: list[str] = []
                n = (runs_of or {}).get(restore, runs)
                for i in range(n):
                    prog.describe(f"Table V {key}: run {i + 1}/{n}")
                    work = out / "work" / "recovery" / f"{key.replace(' ', '-')}-{i + 1}"
                    work.mkdir(parents=True, exist_ok=True)
                    off = 100 + 40 * cell + i
                    ctx = RecoveryContext(
                        lab, setup, "server" if _local(setup) else "logger",
                        SERVER_PORT_BASE + off, LOGGER_PORT_BASE + off, work,
                        restore=restore, logger_nice=pub.LOGGER_NICE.get(setup, 0),
                    )  # fmt: skip
                    try:
                        smp = probe(ctx)
                        samples.append(
                            {"run": i + 1, "restart_s": smp.restart_s, "replay_s": smp.replay_s,
                             "reads": smp.reads, **smp.extra}
                        )  # fmt: skip
                    except Exception as e:  # noqa: BLE001 - a failed run is data, reported
                        failures.append(f"run {i + 1}: {e}"[:500])
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                        prog.advance()
                entry: dict[str, Any] = {"setup": setup, "restore": restore,
                                         "samples": samples, "failures": failures}  # fmt: skip
                if len(samples) >= 2:
                    entry.update(status="measured", summary=summarize_recovery(samples),
                                 reason=f"{len(failures)} of {n} runs failed" if failures
                                 else "")  # fmt: skip
                else:
                    entry.update(status="not measured", reason=(failures or ["too few runs"])[0])
                result[key] = entry
        finally:
            lab.down()
    return result


def summarize_recovery(samples: list[dict[str, Any]]) -> dict[str, float]:
    from ftcp.bench.stats import mean_ci

    restart = mean_ci([s["restart_s"] * 1e3 for s in samples])
    replay = mean_ci([s["replay_s"] for s in samples])
    read = mean_ci([s["replay_s"] * 1e3 / max(1, s["reads"]) for s in samples])
    out = {
        "restart_ms": restart.mean, "restart_ci_ms": restart.ci,
        "replay_s": replay.mean, "replay_ci_s": replay.ci,
        "read_ms": read.mean, "read_ci_ms": read.ci,
        "reads": sum(s["reads"] for s in samples) / len(samples),
    }  # fmt: skip
    for k in ("fetch_ms", "startup_ms", "stall_ms"):
        vals = [float(s[k]) for s in samples if s.get(k) is not None]
        if len(vals) == len(samples):
            m = mean_ci(vals)
            out[k], out[k.replace("_ms", "_ci_ms")] = m.mean, m.ci
    return out


# --- machine description ----------------------------------------------------------------------


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tcpdump = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True, timeout=10)
        tcpdump = (r.stdout or r.stderr).splitlines()[0].strip()
    return {
        "kernel": f"{platform.system()} {platform.release()}",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "tcpdump": tcpdump,
        "load_start": load_average(),
    }


# --- figures -----------------------------------------------------------------------------------


def representative_runs(cres: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, run) per measured configuration: the run nearest the median throughput;
    for a configuration whose runs differ by more than 20% also its fastest and slowest
    (the paper's "Lazy Good" / "Lazy Bad")."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name, c in cres.items():
        runs = [r for r in c["runs"] if r.get("ack_series")]
        if c["status"] != "measured" or not runs:
            continue
        by = sorted(runs, key=lambda r: r["throughput_kBps"])
        lo, hi = by[0], by[-1]
        if len(by) >= 2 and hi["throughput_kBps"] > 1.2 * lo["throughput_kBps"]:
            out += [(f"{name} good", hi), (f"{name} bad", lo)]
        else:
            out.append((name, by[len(by) // 2]))
    return out


_COLORS = {
    "Clean": "black", "Lazy": "tab:blue", "Lazy good": "tab:blue", "Lazy bad": "tab:cyan",
    "Lazy64k": "tab:purple", "Eager": "tab:red", "Conditional": "tab:green",
    "Clean64k": "tab:gray",
}  # fmt: skip


def _color(label: str) -> str | None:
    return _COLORS.get(label) or _COLORS.get(label.split()[0])


def draw_figures(doc: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """fig3 (acks vs time) and fig4 (first 200 ms), like the paper's Figures 3 and 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, list[str]] = {}
    topos = [t for t, v in doc["topologies"].items() if representative_runs(v["configs"])]
    if not topos:
        return made
    main_topo = next((t for t in FIGURE_TOPOLOGY_PREFERENCE if t in topos), topos[0])
    for topo in topos:
        reps = representative_runs(doc["topologies"][topo]["configs"])
        title = pub.TITLE_OF.get(topo, topo)
        names = []
        for fig_no, limit in ((3, None), (4, 0.2)):
            fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
            for label, run in reps:
                pts = run["ack_series"]
                if limit is not None:
                    pts = [p for p in pts if p[0] <= limit]
                if not pts:
                    continue
                t = [p[0] * (1e3 if limit else 1.0) for p in pts]
                a = [p[1] / KB for p in pts]
                color = _color(label)
                style = "--" if label.startswith("Clean64k") else "-"
                ax.step(t, a, where="post", label=label, linewidth=1.2, color=color,
                        linestyle=style)  # fmt: skip
                ax.plot(t, a, linestyle="none", marker=".", markersize=3, color=color)
            if limit is None:
                ax.set_xlabel("time since the client's SYN (s)")
                ax.set_title(f"{title}: acks vs. time (cf. the paper's Fig. 3)")
            else:
                ax.set_xlabel("time since the client's SYN (ms)")
                ax.set_xlim(0, limit * 1e3)
                ax.set_title(f"{title}: acks vs. time, first 200 ms (cf. the paper's Fig. 4)")
            ax.set_ylabel("stream-relative ack (KB)")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="upper left", fontsize="small")
            fig.tight_layout()
            fname = f"fig{fig_no}-{topo}.png"
            fig.savefig(out / fname)
            if topo == main_topo:
                fig.savefig(out / f"fig{fig_no}.png")
            plt.close(fig)
            names.append(fname)
        made[topo] = names
    doc["figures"] = {"main_topology": main_topo, "files": made}
    return made


# --- report ---------------------------------------------------------------------------------


NM = "not measured"


def _f(v: float | None, digits: int = 2) -> str:
    return NM if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _load(v: list[float] | None) -> str:
    return "?" if not v else " ".join(f"{x:.2f}" for x in v)


def _pm(v: float, e: float, digits: int = 2) -> str:
    return f"{v:.{digits}f} ± {e:.{digits}f}"


def _perf_table(topo: str, tdoc: dict[str, Any], notes: list[str]) -> list[str]:
    paper = pub.PERFORMANCE.get(topo, {})
    head = (
        "| Config | Throughput KB/s (ours ± 95% CI) | paper | % of Clean (ours) | paper "
        "| R² (ours) | Mbit/s (ours) | Avg. latency ms (ours ± 95% CI) | ± 1.96 sd (ours) "
        "| × Clean (ours) | paper | Acks/run (ours) | × Clean (ours) | paper | runs |"
    )
    lines = [head, "|" + "---|" * 15]
    losses: list[str] = []
    for name, c in tdoc["configs"].items():
        p = paper.get(name)
        pt = _pm(p.throughput_kBps, p.throughput_err_kBps) if p else "—"
        ppct = f"{p.pct_of_clean:.2f}%" if p else "—"
        plat = _pm(p.latency_ms, p.latency_err_ms) if p else "—"
        pack = f"{p.acks_per_run:.1f}" if p else "—"
        label = name if c["in_paper"] else f"{name}†"
        if c["status"] != "measured":
            notes.append(f"{pub.TITLE_OF.get(topo, topo)} {name}: not measured — {c['reason']}")
            row = [label, NM, pt, NM, ppct, NM, NM, NM, NM, NM, plat, NM, NM, pack, "0"]
        else:
            s = c["summary"]
            pct = f"{s['pct_of_clean']:.2f}%" if s.get("pct_of_clean") is not None else NM
            lx = s.get("latency_x_clean")
            ax = s.get("acks_x_clean")
            row = [
                label,
                _pm(s["throughput_kBps"], s["throughput_ci_kBps"]),
                pt,
                pct,
                ppct,
                f"{s['r2']:.4f}",
                f"{s['throughput_mbps']:.3f}",
                _pm(s["latency_ms"], s["latency_ci_ms"]),
                f"{s['latency_spread_ms']:.2f}",
                NM if lx is None else f"{lx:.2f}",
                plat,
                f"{s['acks_per_run']:.1f}",
                NM if ax is None else f"{ax:.2f}",
                pack,
                str(s["runs"]),
            ]
            if c["reason"]:
                notes.append(f"{pub.TITLE_OF.get(topo, topo)} {name}: {c['reason']}")
            lost = s.get("late_segments", 0) + s.get("retransmitted", 0)
            if lost:
                losses.append(
                    f"{name}: {s.get('late_segments', 0) / s['runs']:.1f} segments/run lost "
                    f"before the capture point, {s.get('retransmitted', 0) / s['runs']:.1f} "
                    "retransmitted on the wire"
                )
        lines.append("| " + " | ".join(row) + " |")
    if losses:
        lines += [
            "",
            "Losses (they lower R², and data waiting behind a hole counts in its latency): "
            + "; ".join(losses) + ".",
        ]  # fmt: skip
    return lines


def _nagle_table(doc: dict[str, Any], notes: list[str]) -> list[str]:
    lines = [
        "| Topology | Config | Nagle on KB/s (ours) | paper | Nagle off KB/s (ours) | paper "
        "| change (ours) | paper |",
        "|" + "---|" * 8,
    ]
    reasons: set[str] = set()
    for topo in ("10-100", "10-10", "10-shared"):  # the paper's row order
        tdoc = doc["topologies"].get(topo)
        if tdoc is None:
            continue
        for name in pub.CONFIGS:
            p = pub.NAGLE[topo][name]
            c = tdoc["configs"].get(name)
            on = c["summary"]["throughput_kBps"] if c and c["status"] == "measured" else None
            if name == "Clean":  # no logger: the same measurement on both sides, as in the paper
                off = on
            else:
                o = tdoc["nagle_off"].get(name)
                if o is not None and o["status"] == "measured":
                    off = o["summary"]["throughput_kBps"]
                else:
                    off = None
                    reasons.add(o["reason"] if o is not None else "not run")
            change = (
                f"{100.0 * (off - on) / on:+.1f}%" if on is not None and off is not None else NM
            )
            lines.append(
                f"| {pub.TITLE_OF[topo]} | {name} | {_f(on)} | {p.nagle_on_kBps:.2f} "
                f"| {_f(off)} | {p.nagle_off_kBps:.2f} | {change} | {p.change_pct:+.1f}% |"
            )
    for r in sorted(reasons):
        notes.append(f"Table IV, Nagle off: not measured — {r}")
    return lines


SETUP_NAMES = {"local": "Local", "local-nice": "Local, logger nice −10"}


def _recovery_table(doc: dict[str, Any], notes: list[str]) -> list[str]:
    lines = [
        "| Setup | Restore | Restart ms (ours ± 95% CI) | paper | Replay ms (ours ± 95% CI) "
        "| paper | Avg. read ms (ours ± 95% CI) | paper | reads/run (ours) | paper "
        "| of replay: log fetch ms (ours) | runs |",
        "|" + "---|" * 12,
    ]
    rec = doc["recovery"]
    for restore in RESTORES:
        for setup in pub.RECOVERY_SETUPS:
            e = rec.get(recovery_key(setup, restore))
            if e is None:
                continue
            p = pub.RECOVERY[setup]
            name = SETUP_NAMES.get(setup, setup)
            in_paper = restore == RESTORE_IN_PAPER
            if e["status"] == "measured":
                s = e["summary"]
                ours = [
                    _pm(s["restart_ms"], s["restart_ci_ms"]),
                    _pm(s["replay_s"] * 1e3, s["replay_ci_s"] * 1e3),
                    _pm(s["read_ms"], s["read_ci_ms"], 4),
                    f"{s['reads']:.1f}",
                    _pm(s["fetch_ms"], s["fetch_ci_ms"]) if "fetch_ms" in s else "—",
                ]
                n = str(len(e["samples"]))
                if e.get("reason"):
                    notes.append(f"Table V {name} ({restore}): {e['reason']}")
            else:
                ours = [NM] * 5
                n = "0"
                notes.append(f"Table V {name} ({restore}): not measured — {e['reason']}")
            if in_paper:
                paper = [
                    _pm(p.restart_ms, p.restart_err_ms),
                    _pm(p.replay_s * 1e3, p.replay_err_s * 1e3),
                    f"{p.read_ms:.3f} ± {p.read_err_ms:.4f}",
                    f"{p.replay_s / p.read_ms * 1e3:.0f}",
                ]
                label = restore
            else:
                paper = ["—"] * 4
                label = f"{restore}†"
            lines.append(
                f"| {name} | {label} | {ours[0]} | {paper[0]} | {ours[1]} | {paper[1]} "
                f"| {ours[2]} | {paper[2]} | {ours[3]} | {paper[3]} | {ours[4]} | {n} |"
            )
    return lines


RECOVERY_TEXT = """\
Per run (`ftcp.bench.paper.kill9_probe`, the harness of `ftcp bench recovery`): a server
under `ftcp run` reads a 1 MB upload (all of it logged: 1 MB of instream to refill and
the read results to replay), is killed with SIGKILL, and the supervisor restarts and
recovers it; the figures are the supervisor's own timestamps. {runs} runs per cell
(the paper: {paper_runs}); mean ± 95% CI (Student t).

* **Restart**: the application's death → rebuilt kernel connection (the replayed
  handshake completed, or, for `repair`, the accepted socket repaired in place):
  detection, waiting for the logger to acknowledge what was sent before the crash,
  planning, and the rebuild once the restarted application listens. It excludes the
  application's own start-up (spawn → listening: a Python interpreter here,
  "app start-up" below), the log transfer and `repair`'s filling of the receive
  queue (both counted in replay), as the paper's restart excludes the server's
  start-up.
* **Replay**: fetching the connection's logs from the logger (the "log fetch" column;
  over the 10 Mbit/s link in `10-10`, a loopback connection for Local) + refilling the
  logged instream into the new connection (SSW-injected client segments; `repair`
  puts it straight into the receive queue) + serving every logged read result
  through NSW until the last one is replayed. The instream streams into the rebuild
  as it arrives: where the transfer and the refill overlap, the time is counted once.
* **Average read time** = replay / reads, reads = read calls of the restarted
  application served from the log (our server reads with 64 KB `recv`s; the paper's
  numbers imply ~1,400 reads for 1 MB). The paper's "reads/run" is its replay time /
  its average read time.
* **Restore** `handshake` is the paper's rebuild (a SYN replayed with the client's
  ISN). `repair`† is not in the paper: the restarted application's connection is
  rebuilt with Linux `TCP_REPAIR` and the logged instream queued directly.
* **Local**: logger in the server's host (loopback), client on the 10-100 lab.
  **Local, logger nice −10**: the same with the logger's process 10 nice levels ahead
  of the rest of the host (`nice -n -10 ftcp logger ...`), as the README recommends
  for a logger sharing the server's host (so that a busy server does not delay its
  acknowledgements). The paper's values shown next to it are its Local ones.
* Client-visible stall (kill → answer to a 1-byte request sent right after the kill,
  includes the application's start-up and a client retransmission timeout):
  {stalls}.
"""


def _recovery_text(doc: dict[str, Any]) -> str:
    stalls = []
    for key, e in doc["recovery"].items():
        s = e.get("summary") or {}
        if "stall_ms" in s and "startup_ms" in s:
            stalls.append(f"{key} {s['stall_ms']:.0f} ms (app start-up {s['startup_ms']:.0f} ms)")
    of = doc.get("recovery_runs_of") or {}
    runs = doc.get("recovery_runs", doc["runs"])
    if of and len(set(of.values())) > 1:
        runs = ", ".join(f"{v} ({k})" for k, v in of.items())
    return RECOVERY_TEXT.format(
        runs=runs,
        paper_runs=pub.RECOVERY_RUNS,
        stalls="; ".join(stalls) or "not measured",
    )


METHODOLOGY = """\
* **Workload** (paper V-A): the client sends 1 MB (1,048,576 bytes) over one TCP
  connection as fast as it can (one `sendall`, then a half-close); the server reads
  and discards it. Runs per configuration: {runs} (the paper: 12).
* **Capture**: `tcpdump` on the client's interface, headers only (snaplen 96). A GSO
  super-packet that left the client's qdisc whole is split into MSS-sized segments
  sharing its timestamp.
* **Throughput**: least-squares fit of each data segment's stream-relative start
  sequence number (bytes) against its send time, pooled over all runs of a
  configuration (time measured from each run's first data segment), as the paper's
  one fit per configuration (its R² remark: {r2note}). Shown: the slope with the
  95% CI of the slope (Student t, n−2), R², KB = 1024 bytes. Only first transmissions
  are points; retransmissions are counted, not fitted.
* **Latency**: for every first-transmitted data segment, from the moment it left the
  client to the arrival of the first ack covering its last byte (retransmitted data:
  from its first transmission). Mean with the 95% CI of the mean. "± 1.96 sd" is the
  spread of individual samples; the paper's latency "error bounds" (e.g. 5.82 ± 3.39
  ms) are of that size rather than a CI of a mean over thousands of samples.
* **Ack count**: pure acks (no data, no SYN/FIN/RST) the client received, per run
  (the paper's counts are totals over 12 runs; "paper" shows them divided by 12).
* **Ratios** ("% of Clean", "× Clean") are against Clean measured in this same
  invocation on the same topology. The paper's Clean row is one measurement reused
  in Tables I–III.
* **Links**: the lab shapes links with `tbf` counting whole Ethernet frames (no
  preamble/FCS/IFG); a full 1448-byte segment is a 1514-byte frame, so TCP goodput
  tops out at 95.6% of 10 Mbit/s = {ceiling:.1f} KB/s. The paper's 10 Mbit/s
  PCMCIA client reached 1007.69 KB/s. `10-shared` is one userspace hub with one
  10 Mbit/s budget for all frames of all three hosts.
* **Queues in the lab** (`ftcp.lab.topology`): a host's own `tbf` stands for its NIC
  and holds a default transmit queue (1000 frames), so a sender is held back there,
  not made to lose frames, as on a real 10 Mbit/s NIC; a switch port queues about
  50 ms. (With a 50 ms host queue, Clean's ~900 KB autotuned window overflowed the
  client's own queue in slow start and a third of its runs stalled.) `10-shared`'s hub
  has one shared ~50 ms queue and no host-side queue: a sender that outruns it loses
  frames there (after the client's capture point: "retransmitted on the wire").
* **Receive windows**: under `ftcp run` the server kernel's receive buffer does not
  autotune past its initial size (window ~80 KB): the kernel's own choice, passed to
  the client unchanged (see the report in `docs/benchmarks/paper/`).
"""


def render_report(doc: dict[str, Any]) -> str:
    notes: list[str] = []
    L = _report_head(doc)
    for topo in pub.TOPOLOGIES:
        tdoc = doc["topologies"].get(topo)
        if tdoc is None:
            continue
        L.append(
            f"## Table {pub.TABLE_OF[topo]} — {pub.TITLE_OF[topo]} performance "
            f"(`{topo}`: {tdoc['topology']['summary']})"
        )
        L.append("")
        L += _perf_table(topo, tdoc, notes)
        L.append("")
        L.append("† not in the paper: Clean with SO_RCVBUF 64 KB (the buffer of Lazy64k).")
        L.append("")
    if doc["topologies"]:
        L.append("## Table IV — logger Nagle disabled")
        L.append("")
        L.append(
            "Throughput (KB/s) with Nagle's algorithm on / off on the logger's ack stream "
            "(logger → server). Clean has no logger: the same measurement both sides, as in "
            "the paper."
        )
        L.append("")
        L += _nagle_table(doc, notes)
        L.append("")
    L.append("## Table V — recovery")
    L.append("")
    L.append(_recovery_text(doc))
    L += _recovery_table(doc, notes)
    L.append("")
    L.append("† not in the paper: rebuilt with `TCP_REPAIR` instead of a replayed handshake.")
    L.append("")
    L += _figures_section(doc)
    L.append("## Not measured, and why")
    L.append("")
    if notes:
        L += [f"* {n}" for n in notes]
    else:
        L.append("Everything was measured.")
    L.append("")
    L.append("Raw runs (every run's fit sums, latency sums, ack counts, ack series): "
             "`results.json`; client-side captures: `pcap/`.")  # fmt: skip
    L.append("")
    return "\n".join(L)


def _report_head(doc: dict[str, Any]) -> list[str]:
    """Title, what kind of run, the machine, the methodology."""
    L: list[str] = []
    L.append("# FT-TCP, section V — measured here vs. published")
    L.append("")
    if doc["quick"]:
        L.append(
            f"**Quick run** (`--quick`): {doc['runs']} runs per configuration instead of the "
            f"paper's {pub.RUNS}; topologies: {', '.join(doc['topologies']) or 'none'}. "
            "Confidence intervals are correspondingly wider; do not quote these as final."
        )
        L.append("")
    if doc.get("interrupted"):
        L.append("**Interrupted**: the run was stopped before every measurement finished.")
        L.append("")
    L.append(f'Reference for every "paper" value: {pub.CITATION}')
    L.append("")
    m = doc["machine"]
    L += [
        f"Date: {doc['date']}. Command: `{doc['command']}`. Wall time: {doc['wall_s']:.0f} s.",
        "",
        "| machine | |",
        "|---|---|",
        f"| kernel | {m['kernel']} |",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| Python | {m['python']} |",
        f"| capture | {m['tcpdump']} |",
        f"| load average (1/5/15 min) at start / end | {_load(m.get('load_start'))} / "
        f"{_load(m.get('load_end'))} (other work ran on the machine concurrently) |",
        f"| paper's machines | {pub.PAPER_MACHINES} |",
        "",
        "## Methodology",
        "",
        METHODOLOGY.format(
            runs=doc["runs"],
            r2note=pub.R2_NOTE,
            ceiling=10e6 / 8 * 1448 / 1514 / KB,
        ),  # fmt: skip
    ]
    return L


def _figures_section(doc: dict[str, Any]) -> list[str]:
    figs = doc.get("figures")
    if not figs or not figs.get("files"):
        return []
    main = figs["main_topology"]
    L = [
        "## Figures 3 and 4",
        "",
        f"Stream-relative acks received by the client vs. time since its SYN, one "
        f"representative run (median throughput) per configuration, on "
        f"`{main}` (the paper's figures are for 10 Shared).",
        "",
        "![Figure 3](fig3.png)",
        "",
        "![Figure 4](fig4.png)",
        "",
    ]
    others = [f for t, fs in figs["files"].items() if t != main for f in fs]
    if others:
        L.append("Other topologies: " + ", ".join(f"[{f}]({f})" for f in others) + ".")
        L.append("")
    return L


# --- entry point ----------------------------------------------------------------------------


def _run_counts(
    topologies: Sequence[str] | None,
    runs: int | None,
    quick: bool,
    recovery_runs: int | None,
    repair_runs: int | None,
) -> tuple[list[str], int, int, dict[str, int]]:
    """The topologies, runs per configuration, runs per Table V cell and per restore
    path, checked; and that the machine can run the benchmark."""
    from ftcp.errors import UserError
    from ftcp.lab import net
    from ftcp.lab.topology import get_topology

    topos = list(dict.fromkeys(topologies or pub.TOPOLOGIES))
    for t in topos:
        get_topology(t)
        if t not in pub.TOPOLOGIES:
            raise UserError(
                f"the paper has no table for topology '{t}' (use 10-10, 10-shared, 10-100)"
            )
    nruns = runs if runs is not None else (QUICK_RUNS if quick else FULL_RUNS)
    if nruns < 1:
        raise UserError("--runs must be at least 1")
    # Table V: the paper's 20 runs per cell (--quick: as many as the other tables)
    rruns = recovery_runs if recovery_runs is not None else (
        min(nruns, QUICK_RUNS) if quick else pub.RECOVERY_RUNS
    )  # fmt: skip
    runs_of = {r: rruns for r in RESTORES}
    if repair_runs is not None:
        runs_of["repair"] = repair_runs
    net.require_root()
    if shutil.which("tcpdump") is None:
        raise UserError("tcpdump is not installed (the paper's methodology needs a capture)")
    return topos, nruns, rruns, runs_of


def run(
    topologies: Sequence[str] | None = None,
    runs: int | None = None,
    quick: bool = False,
    out: Path = Path("bench-out/paper"),
    configs: Sequence[Configuration] | None = None,
    command: str = "ftcp bench paper",
    show_progress: bool = True,
    recovery_runs: int | None = None,
    repair_runs: int | None = None,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    topos, nruns, rruns, runs_of = _run_counts(topologies, runs, quick, recovery_runs, repair_runs)
    cfgs = list(configs if configs is not None else CONFIGURATIONS)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    doc: dict[str, Any] = {
        "bench": "paper",
        "version": 1,
        "reference": pub.CITATION,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "quick": quick,
        "runs": nruns,
        "recovery_runs": rruns,
        "recovery_runs_of": runs_of,
        "transfer_bytes": TRANSFER_BYTES,
        "kb": KB,
        "machine": machine(),
        "logger_nagle_switch": logger_nagle_switch(),
        "topologies": {},
        "recovery": {},
        "interrupted": False,
    }
    n_off = sum(1 for c in cfgs if c.protected and c.in_paper)
    total = len(topos) * (len(cfgs) + n_off) * nruns
    total += len(recovery_setups(topos)) * sum(runs_of.values())
    console = Console(stderr=True)

    class _Rich:
        def __init__(self, p: RichProgress) -> None:
            self.p = p
            self.task = p.add_task("starting", total=total)

        def advance(self, n: int = 1) -> None:
            self.p.advance(self.task, n)

        def describe(self, text: str) -> None:
            self.p.update(self.task, description=text)

    columns = (
        TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    try:
        with RichProgress(*columns, console=console, disable=not show_progress) as rp:
            prog: Progress = _Rich(rp)
            for topo in topos:
                prog.describe(f"{topo}: building the lab")
                doc["topologies"][topo] = measure_topology(topo, cfgs, nruns, out, prog)
            prog.describe("recovery (Table V)")
            doc["recovery"] = measure_recovery(rruns, topos, out, RESTORES, prog, runs_of)
    except KeyboardInterrupt:
        doc["interrupted"] = True
        console.print("interrupted: writing what was measured")
    finally:
        shutil.rmtree(out / "work", ignore_errors=True)
    doc["wall_s"] = time.monotonic() - t_start
    doc["machine"]["load_end"] = load_average()
    if not doc["recovery"]:
        doc["recovery"] = {
            recovery_key(s, r): {"status": "not measured", "reason": "interrupted",
                                 "samples": [], "setup": s, "restore": r}
            for s in recovery_setups(topos) for r in RESTORES
        }  # fmt: skip
    draw_figures(doc, out)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "report.md").write_text(render_report(doc))
    console.print(f"wrote {out / 'report.md'}, {out / 'results.json'} and the figures")
    if doc["interrupted"]:
        raise KeyboardInterrupt
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftcp.bench.paper")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rcvbuf", type=int, default=None)
    c = sub.add_parser("send")
    c.add_argument("--to", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--bytes", type=int, default=TRANSFER_BYTES)
    c.add_argument("--timeout", type=float, default=RUN_TIMEOUT)
    b = sub.add_parser("bench", help="`ftcp bench paper` with Table V's run counts set")
    b.add_argument("--out", type=Path, default=Path("bench-out/paper"))
    b.add_argument("--runs", type=int, default=None)
    b.add_argument("--quick", action="store_true")
    b.add_argument("--topology", action="append", default=None)
    b.add_argument("--recovery-runs", type=int, default=None)
    b.add_argument("--repair-runs", type=int, default=None)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        return serve(a.bind, a.port, a.rcvbuf)
    if a.cmd == "bench":
        cmd = ["python", "-m", "ftcp.bench.paper", "bench"] + (["--quick"] if a.quick else [])
        for opt, v in (("--runs", a.runs), ("--recovery-runs", a.recovery_runs),
                       ("--repair-runs", a.repair_runs)):  # fmt: skip
            cmd += [] if v is None else [opt, str(v)]
        cmd += [x for t in a.topology or () for x in ("--topology", t)]
        run(a.topology, a.runs, a.quick, a.out, command=" ".join(cmd),
            recovery_runs=a.recovery_runs, repair_runs=a.repair_runs)  # fmt: skip
        return 0
    print(json.dumps(send(a.to, a.port, a.bytes, a.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
