"""`ftcp demo`: a transfer in the lab, shown live and verified end to end.

Today the demo builds the `10-100` lab, runs an upload and a download at once
over one TCP connection between the client and server hosts, shows progress,
and compares SHA-256 of the full streams in both directions. It then says
plainly what is not protected yet: the protected datapath and crash recovery
are later milestones (docs/STATUS.md), and this demo grows with them.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ftcp.errors import UserError

NBYTES = 3 * 1024 * 1024
PORT = 8080
TOPOLOGY = "10-100"


def _table(topology: str, rows: dict[str, dict[str, Any]], nbytes: int) -> Table:
    t = Table(title=f"ftcp demo — lab topology {topology}, one connection, both directions")
    t.add_column("end")
    t.add_column("sent", justify="right")
    t.add_column("received", justify="right")
    t.add_column("elapsed", justify="right")
    for end in ("client", "server"):
        r = rows.get(end, {})
        sent = r.get("sent", 0)
        recv = r.get("received", 0)
        t.add_row(
            end,
            f"{sent / 2**20:6.2f} / {nbytes / 2**20:.0f} MiB",
            f"{recv / 2**20:6.2f} / {nbytes / 2**20:.0f} MiB",
            f"{r.get('t', 0.0):5.1f} s",
        )
    return t


def _read_lines(p: subprocess.Popen, rows: dict[str, dict[str, Any]], end: str) -> None:
    assert p.stdout is not None
    for line in p.stdout:
        try:
            rows[end] = json.loads(line)
        except json.JSONDecodeError:
            continue


def run_demo(name: str, nbytes: int = NBYTES, topology: str = TOPOLOGY) -> int:
    import threading

    from ftcp.lab import up

    console = Console()
    console.print(f"[bold]building lab[/bold] {name!r} ({topology}) …")
    lab = up(topology, name)
    try:
        srv = lab.python(
            "server", "ftcp.demo_peer", "server", "--addr", lab.ip("server"),
            "--port", str(PORT), "--bytes", str(nbytes), "--seed", "2",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert srv.stdout is not None
        first = srv.stdout.readline()
        if '"ready"' not in first:
            raise UserError(f"demo server did not start: {first.strip()!r}")
        cli = lab.python(
            "client", "ftcp.demo_peer", "client", "--addr", lab.ip("server"),
            "--port", str(PORT), "--bytes", str(nbytes), "--seed", "1",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        rows: dict[str, dict[str, Any]] = {}
        readers = [
            threading.Thread(target=_read_lines, args=(p, rows, end), daemon=True)
            for p, end in ((cli, "client"), (srv, "server"))
        ]
        for r in readers:
            r.start()
        deadline = time.monotonic() + 120
        with Live(_table(topology, rows, nbytes), console=console, refresh_per_second=8) as live:
            while any(r.is_alive() for r in readers) and time.monotonic() < deadline:
                live.update(_table(topology, rows, nbytes))
                time.sleep(0.1)
            live.update(_table(topology, rows, nbytes))
        cli.wait(timeout=10)
        srv.wait(timeout=10)
        c, s = rows.get("client", {}), rows.get("server", {})
        ok = (
            c.get("kind") == "done"
            and s.get("kind") == "done"
            and not c.get("error")
            and not s.get("error")
            and c["sent"] == s["received"] == nbytes
            and s["sent"] == c["received"] == nbytes
            and c["sha256_sent"] == s["sha256_received"]
            and s["sha256_sent"] == c["sha256_received"]
        )
        if ok:
            console.print(f"upload   sha256 {c['sha256_sent'][:16]}… [green]matches[/green]")
            console.print(f"download sha256 {s['sha256_sent'][:16]}… [green]matches[/green]")
        else:
            console.print(f"[red]verification failed[/red]: client={c} server={s}")
        console.print(
            "[yellow]Not protected yet:[/yellow] this transfer ran over plain TCP. The "
            "protected datapath (`ftcp run`) and crash recovery (kill -9 of the server "
            "going unnoticed) are later milestones; see docs/STATUS.md."
        )
        return 0 if ok else 1
    finally:
        lab.down()
        console.print(f"lab {name!r} removed")
