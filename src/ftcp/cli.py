"""The `ftcp` command."""

from __future__ import annotations

import sys

import click

from ftcp import __version__
from ftcp.bench.cli import bench
from ftcp.core import seq
from ftcp.errors import UserError
from ftcp.lab.cli import lab
from ftcp.logger.cli import logger


class FtcpGroup(click.Group):
    """Turns a `UserError` anywhere below into one line and exit status 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.secho(f"ftcp: {e}", err=True, fg="red")
            sys.exit(2)


def not_yet(what: str, issue: str) -> None:
    click.secho(f"ftcp {what}: not implemented yet ({issue}); see docs/STATUS.md", err=True)
    sys.exit(3)


@click.group(cls=FtcpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ftcp")
def main() -> None:
    """Fault-tolerant TCP for unmodified servers.

    Run a logger on another machine (`ftcp logger`), then run your server as
    `ftcp run --logger HOST:PORT --port PORT -- your-server ...`: a kill -9 of
    the server goes unnoticed by its clients.
    """


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--logger", "logger_addr", metavar="HOST:PORT", help="Logger to log to.")
@click.option("--port", type=int, help="TCP port of the server to protect.")
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Shared logger secret.")
@click.option("--insecure", is_flag=True, help="Talk to a logger that runs without a secret.")
@click.option(
    "--ack-strategy",
    type=click.Choice(["basic", "lazy", "eager", "conditional"]),
    default="lazy",
    show_default=True,
)
@click.option(
    "--restore",
    type=click.Choice(["repair", "handshake"]),
    default="repair",
    show_default=True,
    help="How a crashed connection is rebuilt: repair = TCP_REPAIR in place (exact sequence "
    "numbers and options, nothing to translate afterwards; the faster), handshake = the "
    "paper's fabricated handshake, then every segment translated. A repair that fails "
    "before touching the socket falls back to the handshake.",
)
@click.option(
    "--max-restarts",
    type=int,
    default=5,
    show_default=True,
    help="Restarts in a row after crashes before giving up (the clients are then reset).",
)
@click.option(
    "--on-divergence",
    type=click.Choice(["continue", "close"]),
    default="continue",
    show_default=True,
    help="When replay regenerates a different outstream: report and go on, or reset.",
)
@click.option(
    "--boost",
    type=click.IntRange(0, 39),
    default=10,
    show_default=True,
    help="Nice levels the supervisor's event loop runs ahead of the application while it "
    "recovers from a crash (0: none): the log transfer then does not wait for the restarted "
    "application's start-up.",
)
@click.option("--iface", help="Client-facing interface (default: from the routing table).")
@click.option("--queue-num", type=int, help="NFQUEUE number (default: the port).")
@click.option(
    "--state-dir",
    default="/run/ftcp",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where rules state, the agent socket and the status file live.",
)
@click.option("--app-id", help="Application id at the logger (default: port-PORT).")
@click.option(
    "--vip",
    metavar="ADDR/PREFIX",
    help="Host failover: the service address. This host holds it (on --iface) while it "
    "holds the application's lease at the logger, and a standby takes it over if this "
    "host dies.",
)
@click.option(
    "--standby",
    is_flag=True,
    help="Host failover: run as the standby of the host that holds the lease (same "
    "--vip, --port, --app-id, another host on the same L2 segment); nothing runs until "
    "it takes over.",
)
@click.option("--ack-trace", type=click.Path(dir_okay=False), hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    logger_addr: str | None,
    port: int | None,
    secret_file: str | None,
    insecure: bool,
    ack_strategy: str,
    restore: str,
    max_restarts: int,
    on_divergence: str,
    boost: int,
    iface: str | None,
    queue_num: int | None,
    state_dir: str,
    app_id: str | None,
    vip: str | None,
    standby: bool,
    ack_trace: str | None,
    verbose: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a protected server (supervisor: SSW, NSW, recovery)."""
    import logging

    from ftcp.logger.cli import parse_hostport, read_secret
    from ftcp.supervisor import RunConfig
    from ftcp.supervisor import run as run_supervisor

    if not logger_addr:
        raise UserError("--logger HOST:PORT is required")
    if standby and not vip:
        raise UserError("--standby needs --vip (the service address it would take over)")
    if port is None:
        raise UserError("--port is required")
    host, lport = parse_hostport(logger_addr)
    if secret_file:
        secret: bytes | None = read_secret(secret_file)
    elif insecure:
        secret = None
    else:
        raise UserError("give --secret-file (or --insecure for a logger without a secret)")
    cmd = list(command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s ftcp-run %(levelname)s: %(message)s",
    )
    cfg = RunConfig(
        logger_host=host,
        logger_port=lport,
        port=port,
        command=cmd,
        secret=secret,
        ack_strategy=ack_strategy,
        restore=restore,
        max_restarts=max_restarts,
        on_divergence=on_divergence,
        boost=boost,
        iface=iface,
        queue_num=queue_num,
        state_dir=state_dir,
        app_id=app_id,
        ack_trace=ack_trace,
        vip=vip,
        standby=standby,
    )
    sys.exit(run_supervisor(cfg))


@main.command()
@click.option(
    "--state-dir",
    default="/run/ftcp",
    show_default=True,
    type=click.Path(file_okay=False),
    help="State directory of the supervisors to show.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(state_dir: str, as_json: bool) -> None:
    """Show protected connections and the logger link."""
    import json

    from ftcp.supervisor import read_status

    docs = read_status(state_dir)
    if as_json:
        click.echo(json.dumps(docs, indent=1))
        return
    if not docs:
        click.echo("no ftcp supervisor running")
        return
    for d in docs:
        ok = "up" if d.get("logger_ok") else "DOWN"
        click.echo(
            f"port {d['port']} on {d['iface']}: supervisor pid {d['pid']}, app pid "
            f"{d.get('app_pid')}, ack strategy {d['ack_strategy']}, logger {d['logger']} ({ok})"
        )
        lk = d.get("logger_link")
        if lk and not lk.get("up"):
            import time

            since = lk.get("down_since") or time.time()
            click.echo(
                f"  logger link: down since {time.strftime('%H:%M:%S', time.localtime(since))}"
                f" ({time.time() - since:.1f} s): {lk.get('reason')}; "
                f"{lk.get('reconnect_attempts')} reconnect attempt(s)"
                f"{'; last: ' + lk['last_error'] if lk.get('last_error') else ''}"
            )
            if lk.get("history_lost"):
                click.echo(f"  logger REFUSED: {lk['history_lost']}")
        if lk:
            paused = ", queue intake PAUSED" if lk.get("intake_paused") else ""
            click.echo(
                f"  logger buffer: {lk.get('unacked_bytes')} bytes, {lk.get('unacked_records')}"
                f" record(s) unacknowledged{paused}"
                f"; {lk.get('reconnects')} reconnect(s) so far"
            )
        fo = d.get("failover")
        if fo:
            left = fo.get("lease_left_s")
            click.echo(
                f"  failover: {fo['role']} of {fo['vip']}, lease epoch {fo.get('epoch')}"
                + (f", {1000 * left:.0f} ms left" if left is not None else "")
                + (f", LOST: {fo['lost']}" if fo.get("lost") else "")
            )
        rec = d.get("recovery")
        if rec:
            click.echo(
                f"  crashes {rec['crashes']}, recoveries {rec['recoveries']}"
                f"{' (recovering now)' if rec['recovering'] else ''}"
                f"{', GAVE UP' if rec['gave_up'] else ''}, divergences {rec['divergences']}"
                f"{', WAITING FOR THE LOGGER' if rec.get('waiting_for_logger') else ''}"
            )
            for dv in rec.get("divergence_list", []):
                click.echo(
                    f"  DIVERGENCE conn #{dv['conn_id']} at byte {dv['offset']}: {dv['detail']}"
                )
        conns = d.get("connections", [])
        click.echo(f"  {len(conns)} connection(s)")
        for c in conns:
            click.echo(
                f"  #{c['conn_id']} {c['client']} {c['state']} logged={c.get('logged_bytes')} B "
                f"lag={c.get('unlogged_bytes')} B unstable_reads={c['unstable_reads']} "
                f"stable_seq={c['stable_seq']} server_seq={c['server_seq']}"
            )
            r = c.get("refill")
            if r:  # a rebuilt connection still being refilled from the log
                left = seq.usub(r["target"], r["kernel_ack"])
                shut = r["kernel_window_edge"] == r["kernel_ack"]
                click.echo(
                    f"    refill: {left} B of the log still to go into the rebuilt kernel"
                    f"{' (its window is shut)' if shut else ''}"
                )


@main.command()
@click.option("--name", default="demo", show_default=True, help="Lab name to use.")
@click.option(
    "--failover",
    is_flag=True,
    help="Power the server's host off mid-transfer instead: a standby host takes over.",
)
def demo(name: str, failover: bool) -> None:
    """Build a lab, run a protected transfer, show what happens, clean up."""
    from ftcp.demo import run_demo

    sys.exit(run_demo(name, failover=failover))


main.add_command(logger)
main.add_command(lab)
main.add_command(bench)


if __name__ == "__main__":
    main()
