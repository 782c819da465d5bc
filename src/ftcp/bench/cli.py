"""`ftcp bench ...`."""

from __future__ import annotations

import sys

import click


@click.group()
def bench() -> None:
    """Benchmarks (tables on screen, JSON on disk)."""


def _not_yet(what: str) -> None:
    click.secho(f"ftcp bench {what}: not implemented yet; see docs/STATUS.md", err=True)
    sys.exit(3)


@bench.command("lab")
def bench_lab() -> None:
    """Goodput of one TCP stream on each lab topology vs its configured rate."""
    _not_yet("lab")


@bench.command("logger")
def bench_logger() -> None:
    """Logger records/s, MB/s and ack latency per sync policy."""
    _not_yet("logger")


@bench.command("normal")
def bench_normal() -> None:
    """Clean vs protected throughput and latency, each ack strategy, each topology."""
    _not_yet("normal")


@bench.command("recovery")
def bench_recovery() -> None:
    """Restart and replay time after kill -9 (the paper's Table V)."""
    _not_yet("recovery")


@bench.command("paper")
def bench_paper() -> None:
    """The paper's section V, side by side with the published numbers."""
    _not_yet("paper")
