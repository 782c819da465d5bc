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
            if line.startswith("ftcp run: recovered"):
                st.recovered += 1
                st.event(f"[ftcp] {line[len('ftcp run: ') :].strip()}", style="green")
            elif line.startswith("ftcp run: the application died"):
                st.event(f"[ftcp] {line[len('ftcp run: ') :].strip()}", style="yellow")
            elif "giving up" in line or "DIVERGENCE" in line or "Traceback" in line:
                st.event(f"[ftcp] {line.strip()}", style="bold red")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def run_demo(name: str, nbytes: int = NBYTES, topology: str = TOPOLOGY) -> int:
    from ftcp.lab import up

    console = Console()
    console.print(f"[bold]building lab[/bold] {name!r} ({topology}) …")
    lab = up(topology, name)
    tmp = Path(tempfile.mkdtemp(prefix="ftcp-demo-"))
    st = _State()
    procs: list[subprocess.Popen] = []
    try:
        ftcp = _start_server(lab, tmp, nbytes, st, procs)
        cli = lab.python(
            "client", "ftcp.demo_peer", "client", "--addr", lab.ip("server"),
            "--port", str(PORT), "--bytes", str(nbytes), "--seed", "1",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(cli)
        killed = _watch(console, topology, st, nbytes, ftcp, cli)
        good = _verdict(console, st, nbytes, killed, tmp)
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


def _start_server(
    lab: Lab, tmp: Path, nbytes: int, st: _State, procs: list[subprocess.Popen]
) -> subprocess.Popen:
    """A logger, and the demo's server under `ftcp run`, once it is ready."""
    lip = lab.ip("logger")
    try:
        procs.append(start_logger(lab, "logger", lip, LOGGER_PORT, tmp / "log"))
    except RuntimeError as e:
        raise UserError(f"demo {e}") from None
    ftcp = lab.popen(
        "server",
        [sys.executable, "-c", "from ftcp.cli import main; main()", "run",
         "--logger", f"{lip}:{LOGGER_PORT}", "--insecure", "--port", str(PORT),
         "--state-dir", str(tmp / "state"), "--",
         sys.executable, "-m", "ftcp.demo_peer", "server", "--addr", lab.ip("server"),
         "--port", str(PORT), "--bytes", str(nbytes), "--seed", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    procs.append(ftcp)
    assert ftcp.stdout is not None
    first = ftcp.stdout.readline()
    if '"ready"' not in first:
        raise UserError(f"demo server did not start under ftcp run: {first.strip()!r}")
    st.event(f"logger on {lip}:{LOGGER_PORT}; server protected by `ftcp run` on port {PORT}")
    threading.Thread(target=_read_ftcp, args=(ftcp, st, tmp / "ftcp.err"), daemon=True).start()
    return ftcp


def _watch(
    console: Console,
    topology: str,
    st: _State,
    nbytes: int,
    ftcp: subprocess.Popen,
    cli: subprocess.Popen,
) -> int:
    """The live display while the transfer runs, killing the server at `KILL_AT`;
    how many times it was killed."""
    readers = [
        threading.Thread(target=_read_json, args=(p, st, end), daemon=True)
        for p, end in ((cli, "client"), (ftcp, "server"))
    ]
    for r in readers:
        r.start()
    kills = list(KILL_AT)
    deadline = time.monotonic() + 150
    with Live(_table(topology, st, nbytes), console=console, refresh_per_second=8) as live:
        while readers[0].is_alive() and time.monotonic() < deadline:
            got = st.rows.get("client", {}).get("received", 0)
            if kills and got >= kills[0] * nbytes:
                kills.pop(0)
                kids = children(ftcp.pid)
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
    return len(KILL_AT) - len(kills)


def _verdict(console: Console, st: _State, nbytes: int, killed: int, tmp: Path) -> bool:
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
        console.print(
            "The client never saw a reset, a lost byte or a duplicated byte: both "
            "kill -9s were masked."
        )
    else:
        console.print(f"[red]verification failed[/red]: client={c} server={s}")
        console.print(f"ftcp run's log: {tmp / 'ftcp.err'}")
    return ok and killed == st.recovered == len(KILL_AT)
