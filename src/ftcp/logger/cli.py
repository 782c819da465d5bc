"""`ftcp logger` (placeholder until the logger lands)."""

import sys

import click


@click.command()
def logger() -> None:
    """Run the logger daemon."""
    click.secho("ftcp logger: not implemented yet; see docs/STATUS.md", err=True)
    sys.exit(3)
