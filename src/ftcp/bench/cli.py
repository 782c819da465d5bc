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
@click.option("--out", "out_dir", default="bench-out", show_default=True, help="Output directory.")
@click.option("--seconds", default=5.0, show_default=True, help="Length of each stream.")
@click.option(
    "--topology",
    "topologies",
    multiple=True,
    metavar="T",
    help="Topology to measure (repeatable; default: all).",
)
@click.option(
    "--tool",
    type=click.Choice(["auto", "iperf3", "python"]),
    default="auto",
    show_default=True,
    help="Traffic generator (auto: iperf3 when installed).",
)
def bench_lab(out_dir: str, seconds: float, topologies: tuple[str, ...], tool: str) -> None:
    """Goodput of one TCP stream on each lab topology vs its configured rate."""
    from pathlib import Path

    from ftcp.bench import lab as bench_lab_mod

    bench_lab_mod.run(list(topologies) or bench_lab_mod.ALL, seconds, Path(out_dir), tool=tool)


@bench.command("logger")
@click.option("--out", "out_dir", default="bench-out", show_default=True,
              type=click.Path(file_okay=False), help="Directory for logger.json.")
@click.option("--seconds", default=3.0, show_default=True, help="Duration of each run.")
@click.option("--sync", "policies", multiple=True, type=click.Choice(["always", "batch", "none"]),
              help="Sync policies to run (default: all three).")
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False), default=None,
              help="Write a cProfile of each logger process into this directory.")
def bench_logger(
    out_dir: str, seconds: float, policies: tuple[str, ...], profile_dir: str | None
) -> None:
    """Logger records/s, MB/s and ack latency per sync policy."""
    from pathlib import Path

    from ftcp.bench.logger import render, run_bench

    prof = Path(profile_dir) if profile_dir else None
    if prof is not None:
        prof.mkdir(parents=True, exist_ok=True)
    doc = run_bench(
        Path(out_dir) / "logger.json",
        seconds=seconds,
        policies=policies or ("always", "batch", "none"),
        profile_dir=prof,
    )
    render(doc)
    click.echo(f"wrote {Path(out_dir) / 'logger.json'}")


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
