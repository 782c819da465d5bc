"""`ftcp lab up|exec|list|down`."""

from __future__ import annotations

import subprocess
import sys

import click
from rich.console import Console
from rich.table import Table

from ftcp.errors import UserError
from ftcp.lab import net
from ftcp.lab.net import Lab
from ftcp.lab.topology import TOPOLOGIES, get_topology, validate_host, validate_name


def _rate(bits: int | None) -> str:
    if bits is None:
        return "line rate"
    for unit, div in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= div:
            return f"{bits / div:g} {unit}"
    return f"{bits} bit/s"


def _table(labs: list[Lab], title: str) -> Table:
    t = Table(title=title)
    for col in ("name", "topology", "hosts (netns)", "addresses", "links"):
        t.add_column(col)
    for lab in labs:
        topo = lab.topology
        hosts = "\n".join(f"{h}: {lab.netns(h)}" for h in topo.hosts)
        addrs = "\n".join(
            f"{h}: " + ", ".join(f"{s} {lab.ip(h, s)}" for s in topo.segments_of(h))
            for h in topo.hosts
        )
        if topo.hub is not None:
            hub = topo.hub
            alive = net.proc_starttime(hub_pid := lab.hub_pid or 0) == lab.state.hub_starttime
            links = f"one shared hub {_rate(hub.rate_bit)}\n(pid {hub_pid}, " + (
                "running)" if alive else "NOT running)"
            )
            if hub.delay_s or hub.loss:
                links += f"\ndelay {hub.delay_s * 1000:g} ms, loss {hub.loss:g} (seed {hub.seed})"
        else:
            links = "\n".join(f"{s.name}: {_rate(s.rate_bit)}" for s in topo.segments)
        name = lab.name if lab.state.status == "up" else f"{lab.name} ({lab.state.status})"
        t.add_row(name, topo.name, hosts, addrs, links)
    return t


@click.group()
def lab() -> None:
    """Network-namespace lab: hosts client, server, logger, backup."""


@lab.command()
@click.argument("topology", metavar="TOPOLOGY")
@click.option("--name", default="lab", show_default=True, help="Lab name (1-8 of a-z0-9).")
@click.option("--delay-ms", type=float, default=None, help="Hub topologies: one-way delay.")
@click.option("--loss", type=float, default=None, help="Hub topologies: frame loss probability.")
@click.option("--seed", type=int, default=None, help="Hub topologies: loss seed.")
def up(
    topology: str, name: str, delay_ms: float | None, loss: float | None, seed: int | None
) -> None:
    """Build a lab. TOPOLOGY is one of: 10-10, 10-shared, 10-100, 1g-10g, unshaped."""
    topo = get_topology(topology)
    validate_name(name)
    changes = {
        k: v
        for k, v in (
            ("delay_s", None if delay_ms is None else delay_ms / 1000),
            ("loss", loss),
            ("seed", seed),
        )
        if v is not None
    }
    if changes:
        if loss is not None and not 0 <= loss < 1:
            raise UserError("--loss must be in [0, 1)")
        topo = topo.with_hub(**changes)
    made = net.up(topo, name)
    Console().print(_table([made], f"lab '{name}' is up"))


@lab.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("name")
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in HOST of lab NAME; exit with its status."""
    if command[:1] == ("--",):
        command = command[1:]
    if not command:
        raise UserError("no command given: ftcp lab exec NAME HOST -- CMD...")
    made = net.load(name)
    validate_host(made.topology, host)
    net.require_root()
    try:
        rc = subprocess.run(made.argv(host, command)).returncode
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc if rc >= 0 else 128 - rc)


@lab.command("list")
def list_() -> None:
    """Show the labs this machine has (from their state files)."""
    labs = net.labs()
    if not labs:
        click.echo(f"no labs (state dir {net.state_dir()})")
        return
    Console().print(_table(labs, "labs"))


@lab.command()
@click.argument("name")
def down(name: str) -> None:
    """Remove lab NAME: exactly the namespaces and processes it made (idempotent)."""
    if net.down(name):
        click.echo(f"lab '{name}' is down")
    else:
        click.echo(f"no lab '{name}': nothing to do")


@lab.command()
def topologies() -> None:
    """List the named topologies."""
    t = Table(title="topologies (rates count whole Ethernet frames)")
    for col in ("name", "front (client-server)", "back (server-logger)", "summary"):
        t.add_column(col)
    for topo in TOPOLOGIES.values():
        if topo.hub is not None:
            front = back = f"shared hub {_rate(topo.hub.rate_bit)}"
        else:
            front, back = (_rate(topo.segment(s).rate_bit) for s in ("front", "back"))
        t.add_row(topo.name, front, back, topo.summary)
    Console().print(t)
