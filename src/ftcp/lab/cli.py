"""`ftcp lab ...` (placeholder until the lab lands)."""

import click


@click.group()
def lab() -> None:
    """Network-namespace lab: hosts client, server, logger, backup."""
