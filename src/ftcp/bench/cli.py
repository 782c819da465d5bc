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
@click.option(
    "--out",
    "out_dir",
    default="bench-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for logger.json.",
)
@click.option("--seconds", default=3.0, show_default=True, help="Duration of each run.")
@click.option(
    "--sync",
    "policies",
    multiple=True,
    type=click.Choice(["always", "batch", "none"]),
    help="Sync policies to run (default: all three).",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a cProfile of each logger process into this directory.",
)
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
@click.option(
    "--out",
    "out_dir",
    default="bench-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for normal.json.",
)
@click.option(
    "--topology",
    "topologies",
    multiple=True,
    metavar="T",
    type=click.Choice(["10-10", "10-shared", "10-100", "1g-10g", "unshaped"]),
    help="Topology (repeatable; default: all five).",
)
@click.option(
    "--ack-strategy",
    "strategies",
    multiple=True,
    type=click.Choice(["basic", "lazy", "eager", "conditional"]),
    help="Ack strategy to protect with (repeatable; default: all four).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="One run per bulk cell, smaller large transfers (8/2 MiB), 1 s request/response.",
)
@click.option(
    "--logger-nagle/--no-logger-nagle",
    "logger_nagle",
    default=None,
    help="Pass --nagle/--no-nagle to the logger (default: the logger's own default).",
)
def bench_normal(
    out_dir: str,
    topologies: tuple[str, ...],
    strategies: tuple[str, ...],
    quick: bool,
    logger_nagle: bool | None,
) -> None:
    """Clean vs protected, per ack strategy: throughput, RTT, acks, request/response."""
    from pathlib import Path

    from ftcp.bench import normal

    doc = normal.run(
        list(dict.fromkeys(topologies)) or list(normal.TOPOLOGIES),
        list(dict.fromkeys(strategies)) or list(normal.STRATEGIES),
        Path(out_dir),
        quick=quick,
        progress=lambda what: click.echo(f"measuring {what}", err=True),
        logger_nagle=logger_nagle,
    )
    click.echo(normal.render(doc))
    click.echo(f"wrote {Path(out_dir) / 'normal.json'}")


@bench.command("recovery")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs per configuration.")
@click.option("--size", "sizes", type=int, multiple=True, metavar="MB",
              help="Logged MiB for the bytes sweep (repeatable; default 1 4 16 64).")
@click.option("--restore", "restores", multiple=True, type=click.Choice(["handshake", "repair"]),
              help="Restore path(s) to measure (default: handshake).")
@click.option("--out", "out_dir", default="bench-out", show_default=True,
              type=click.Path(file_okay=False))
def bench_recovery(
    runs: int, sizes: tuple[int, ...], restores: tuple[str, ...], out_dir: str
) -> None:
    """Restart and replay time after kill -9 (the paper's Table V)."""
    import json
    from pathlib import Path

    from ftcp.bench.recovery import render, run

    doc = run(runs, list(sizes) or [1, 4, 16, 64], list(restores) or ["handshake"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "recovery.json").write_text(json.dumps(doc, indent=1))
    click.echo(render(doc))
    click.echo(f"wrote {Path(out_dir) / 'recovery.json'}")


@bench.command("failover")
@click.option("--runs", type=int, default=20, show_default=True, help="Power-offs per topology.")
@click.option("--topology", "topologies", multiple=True, metavar="T",
              help="Topology (repeatable; default: 10-100 and 1g-10g).")  # fmt: skip
@click.option("--restore", type=click.Choice(["repair", "handshake"]), default="repair",
              show_default=True)  # fmt: skip
@click.option("--size", type=int, default=1, show_default=True, metavar="MB",
              help="Logged MiB before the power-off.")  # fmt: skip
@click.option("--out", "out_dir", default="bench-out", show_default=True,
              type=click.Path(file_okay=False))  # fmt: skip
def bench_failover(
    runs: int, topologies: tuple[str, ...], restore: str, size: int, out_dir: str
) -> None:
    """Host failover: the client-visible stall of a power-off of the primary, split."""
    import json
    from pathlib import Path

    from ftcp.bench.failover import render, run

    doc = run(topologies or ("10-100", "1g-10g"), runs, restore, size << 20)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "failover.json").write_text(json.dumps(doc, indent=1))
    click.echo(render(doc))
    click.echo(f"wrote {Path(out_dir) / 'failover.json'}")


@bench.command("paper")
@click.option("--runs", type=int, default=None,
              help="Runs per configuration (default: 12, the paper's; 3 with --quick).")
@click.option("--quick", is_flag=True, help="Fewer runs (3); the report says it was quick.")
@click.option("--out", "out_dir", default="bench-out/paper", show_default=True,
              type=click.Path(file_okay=False),
              help="Directory for report.md, results.json, the figures and the captures.")
@click.option("--topology", "topologies", multiple=True, metavar="T",
              type=click.Choice(["10-10", "10-shared", "10-100"]),
              help="Topology to measure (repeatable; default: all three of the paper).")
def bench_paper(
    runs: int | None, quick: bool, out_dir: str, topologies: tuple[str, ...]
) -> None:
    """The paper's section V, side by side with the published numbers."""
    import shlex
    from pathlib import Path

    from ftcp.bench import paper

    args = ["ftcp", "bench", "paper"] + (["--quick"] if quick else [])
    args += [] if runs is None else ["--runs", str(runs)]
    args += [a for t in topologies for a in ("--topology", t)] + ["--out", out_dir]
    command = shlex.join(args)
    paper.run(
        list(topologies) or None, runs=runs, quick=quick, out=Path(out_dir), command=command
    )
