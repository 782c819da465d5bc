"""`ftcp demo`: a protected transfer in the lab, the server kill -9'd twice, shown live.

The demo builds the `10-100` lab and runs, each in its own host:

* a logger (`python -m ftcp.logger`) in the logger host;
* the demo server (`ftcp.demo_peer server`, an ordinary socket program) under
  `ftcp run` in the server host;
* the demo client in the client host: one TCP connection carrying an upload
  and a download at the same time.

While the transfer runs the server process is killed with SIGKILL twice. The
live display shows both ends' progress, each crash, how long the client saw
nothing arrive (the stall) and the recovery `ftcp run` reports. At the end
the SHA-256 of the full streams in both directions are compared.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ftcp.appproc import children
from ftcp.errors import UserError
from ftcp.lab.net import Lab
from ftcp.lab.services import start_logger

NBYTES = 6 * 1024 * 1024
PORT = 8080
LOGGER_PORT = 7007
TOPOLOGY = "10-100"
KILL_AT = (0.3, 0.65)  # fractions of the download at which the server is killed


class _State:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.events: list[Text] = []
        self.lock = threading.Lock()
        self.last_rx = time.monotonic()
        self.last_rx_bytes = 0
        self.max_stall = 0.0
        self.stalls: list[float] = []
        self.recovered = 0
        self.standby_ready = threading.Event()

    def event(self, msg: str, style: str = "") -> None:
        with self.lock:
            self.events.append(Text(f"{time.strftime('%H:%M:%S')}  {msg}", style=style))


def _table(topology: str, st: _State, nbytes: int) -> Group:
    t = Table(title=f"ftcp demo — lab {topology}: one protected connection, both directions")
    t.add_column("end")
    t.add_column("sent", justify="right")
    t.add_column("received", justify="right")
    t.add_column("elapsed", justify="right")
    for end in ("client", "server"):
        r = st.rows.get(end, {})
        t.add_row(
            end if end == "client" else "server (under ftcp run)",
            f"{r.get('sent', 0) / 2**20:6.2f} / {nbytes / 2**20:.0f} MiB",
            f"{r.get('received', 0) / 2**20:6.2f} / {nbytes / 2**20:.0f} MiB",
            f"{r.get('t', 0.0):5.1f} s",
        )
    stall = time.monotonic() - st.last_rx
    done = st.rows.get("client", {}).get("kind") == "done"
    status = Text("client: done" if done else "client: receiving", style="green")
    if stall > 0.3 and st.rows.get("client", {}).get("kind") != "done":
        status = Text(f"client: stalled {stall:4.1f} s (server down, connection held)", "yellow")
    with st.lock:
        events = st.events[-8:]
    return Group(t, status, *events)


def _read_json(p: subprocess.Popen, st: _State, end: str) -> None:
    assert p.stdout is not None
    for line in p.stdout:
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if d.get("kind") == "ready":
            continue
        with st.lock:
            if end == "client" and d.get("received", 0) > st.last_rx_bytes:
                now = time.monotonic()
                gap = now - st.last_rx
                if gap > 0.5:
                    st.stalls.append(gap)
                st.last_rx, st.last_rx_bytes = now, d["received"]
            st.rows[end] = d


def _read_ftcp(p: subprocess.Popen, st: _State, log: Path) -> None:
    assert p.stderr is not None
    with open(log, "w") as f:
        for line in p.stderr:
            f.write(line)
            f.flush()
            msg = f"[ftcp] {line[len('ftcp run: ') :].strip()}"
            if line.startswith("ftcp run: recovered"):
                st.recovered += 1
                st.event(msg, style="green")
            elif line.startswith(("ftcp run: the application died", "ftcp run: taking over")):
                st.event(msg, style="yellow")
            elif "waiting for the lease" in line:
                st.standby_ready.set()
                st.event(msg)
            elif line.startswith("ftcp run: holding the lease"):
                st.event(msg, style="green")
            elif "giving up" in line or "DIVERGENCE" in line or "Traceback" in line:
                st.event(f"[ftcp] {line.strip()}", style="bold red")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def run_demo(
    name: str, nbytes: int = NBYTES, topology: str = TOPOLOGY, failover: bool = False
) -> int:
    """The demo (module docstring); `failover`: the server's host is powered off once
    instead, and a standby host takes over the service address."""
    from ftcp.lab import up

    console = Console()
    console.print(f"[bold]building lab[/bold] {name!r} ({topology}) …")
    lab = up(topology, name)
    tmp = Path(tempfile.mkdtemp(prefix="ftcp-demo-"))
    st = _State()
    procs: list[subprocess.Popen] = []
    try:
        vip = _vip(lab) if failover else None
        ftcps = [_start_server(lab, tmp, nbytes, st, procs, "server", vip)]
        if vip is not None:
            ftcps.append(_start_server(lab, tmp, nbytes, st, procs, "backup", vip))
        addr = str(vip.ip) if vip is not None else lab.ip("server")
        cli = lab.python(
            "client", "ftcp.demo_peer", "client", "--addr", addr,
            "--port", str(PORT), "--bytes", str(nbytes), "--seed", "1",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(cli)
        kills = KILL_AT[:1] if failover else KILL_AT
        killed = _watch(console, topology, st, nbytes, ftcps, cli, kills, lab if failover else None)
        good = _verdict(console, st, nbytes, killed, tmp, len(kills))
        if good:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0 if good else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        lab.down()
        console.print(f"lab {name!r} removed")


def _vip(lab: Lab) -> ipaddress.IPv4Interface:
    net = ipaddress.ip_network(lab.subnet("front"))
    return ipaddress.IPv4Interface(f"{net.network_address + 9}/{net.prefixlen}")


def _start_server(
    lab: Lab,
    tmp: Path,
    nbytes: int,
    st: _State,
    procs: list[subprocess.Popen],
    host: str = "server",
    vip: ipaddress.IPv4Interface | None = None,
) -> subprocess.Popen:
    """The demo's server under `ftcp run` in `host` (and, the first time, a logger),
    once it is ready. With `vip`: the server host is the primary, the backup host the
    standby (ready once it waits for the lease)."""
    lip = lab.ip("logger")
    if host == "server":
        try:
            procs.append(start_logger(lab, "logger", lip, LOGGER_PORT, tmp / "log"))
        except RuntimeError as e:
            raise UserError(f"demo {e}") from None
    failover: list[str] = []
    if vip is not None:
        failover = ["--vip", vip.with_prefixlen, "--iface", lab.ifname(host, "front")]
        failover += ["--standby"] if host == "backup" else []
    ftcp = lab.popen(
        host,
        [sys.executable, "-c", "from ftcp.cli import main; main()", "run",
         "--logger", f"{lip}:{LOGGER_PORT}", "--insecure", "--port", str(PORT),
         "--state-dir", str(tmp / f"state-{host}"), *failover, "--",
         sys.executable, "-m", "ftcp.demo_peer", "server",
         "--addr", "0.0.0.0" if vip is not None else lab.ip("server"),
         "--port", str(PORT), "--bytes", str(nbytes), "--seed", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    procs.append(ftcp)
    log = tmp / f"ftcp-{host}.err"
    if host == "backup":  # the standby starts nothing: ready once it waits for the lease
        threading.Thread(target=_read_ftcp, args=(ftcp, st, log), daemon=True).start()
        if not st.standby_ready.wait(20):
            raise UserError(f"the demo's standby did not start: see {log}")
        return ftcp
    assert ftcp.stdout is not None
    first = ftcp.stdout.readline()
    if '"ready"' not in first:
        raise UserError(f"demo server did not start under ftcp run: {first.strip()!r}")
    where = f"; service address {vip}, standby in the backup host" if vip is not None else ""
    st.event(f"logger on {lip}:{LOGGER_PORT}; server protected by `ftcp run` on port {PORT}{where}")
    threading.Thread(target=_read_ftcp, args=(ftcp, st, log), daemon=True).start()
    return ftcp


def _watch(
    console: Console,
    topology: str,
    st: _State,
    nbytes: int,
    ftcps: list[subprocess.Popen],
    cli: subprocess.Popen,
    kill_at: tuple[float, ...],
    power_off: Lab | None,
) -> int:
    """The live display while the transfer runs, killing the server at `kill_at`
    (`power_off`: powering its host off instead); how many times it was killed."""
    readers = [
        threading.Thread(target=_read_json, args=(p, st, end), daemon=True)
        for p, end in ((cli, "client"), *((f, "server") for f in ftcps))
    ]
    for r in readers:
        r.start()
    kills = list(kill_at)
    deadline = time.monotonic() + 150
    with Live(_table(topology, st, nbytes), console=console, refresh_per_second=8) as live:
        while readers[0].is_alive() and time.monotonic() < deadline:
            got = st.rows.get("client", {}).get("received", 0)
            if kills and got >= kills[0] * nbytes and power_off is not None:
                kills.pop(0)
                power_off.power_off("server")
                st.event(
                    f"POWER-OFF of the server host at {got / 2**20:.2f} MiB received by the "
                    "client (links cut, every process killed)",
                    style="bold red",
                )
            elif kills and got >= kills[0] * nbytes:
                kills.pop(0)
                kids = children(ftcps[0].pid)
                for pid in kids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                st.event(
                    f"kill -9 of the server (pid {kids[0] if kids else '?'}) "
                    f"at {got / 2**20:.2f} MiB received by the client",
                    style="bold red",
                )
            live.update(_table(topology, st, nbytes))
            time.sleep(0.05)
        cli.wait(timeout=10)
        end = time.monotonic() + 10
        while st.rows.get("server", {}).get("kind") != "done" and time.monotonic() < end:
            time.sleep(0.05)
        live.update(_table(topology, st, nbytes))
    console.print()
    return len(kill_at) - len(kills)


def _verdict(
    console: Console, st: _State, nbytes: int, killed: int, tmp: Path, kills: int
) -> bool:
    """Both streams' hashes compared, every kill recovered: say so."""
    c, s = st.rows.get("client", {}), st.rows.get("server", {})
    ok = (
        c.get("kind") == "done"
        and s.get("kind") == "done"
        and not c.get("error")
        and not s.get("error")
        and c["sent"] == nbytes == c["received"]
        and c["sha256_sent"] == s["sha256_received"]
        and s["sha256_sent"] == c["sha256_received"]
    )
    console.print(
        f"server killed {killed} time(s), recovered {st.recovered} time(s); client stalls: "
        + (", ".join(f"{x:.2f} s" for x in st.stalls) or "none over 0.5 s")
    )
    if ok:
        console.print(f"upload   sha256 {c['sha256_sent'][:16]}… [green]matches[/green]")
        console.print(f"download sha256 {s['sha256_sent'][:16]}… [green]matches[/green]")
        what = "the power-off was" if kills == 1 else f"all {kills} kill -9s were"
        console.print(
            f"The client never saw a reset, a lost byte or a duplicated byte: {what} masked."
        )
    else:
        console.print(f"[red]verification failed[/red]: client={c} server={s}")
        console.print(f"ftcp run's logs: {tmp}/ftcp-*.err")
    return ok and killed == st.recovered == kills
