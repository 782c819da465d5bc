"""The `ftcp` command."""

from __future__ import annotations

import sys

import click

from ftcp import __version__
from ftcp.bench.cli import bench
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
@click.option(
    "--ack-strategy",
    type=click.Choice(["basic", "lazy", "eager", "conditional"]),
    default="lazy",
    show_default=True,
)
@click.option("--restore", type=click.Choice(["handshake", "repair"]), default="handshake")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(**_: object) -> None:
    """Run COMMAND as a protected server (supervisor: SSW, NSW, recovery)."""
    not_yet("run", "failure-free operation and recovery issues")


@main.command()
def status() -> None:
    """Show protected connections and the logger link."""
    not_yet("status", "failure-free operation issue")


@main.command()
@click.option("--name", default="demo", show_default=True, help="Lab name to use.")
def demo(name: str) -> None:
    """Build a lab, run a protected transfer, show what happens, clean up."""
    from ftcp.demo import run_demo

    sys.exit(run_demo(name))


main.add_command(logger)
main.add_command(lab)
main.add_command(bench)
