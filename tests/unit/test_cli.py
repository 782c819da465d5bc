"""The CLI surface: every planned command is there, stubs say so plainly."""

from click.testing import CliRunner

from ftcp.cli import main

PLANNED = ["logger", "run", "status", "lab", "demo", "bench"]


def test_help_lists_the_whole_planned_surface() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for cmd in PLANNED:
        assert f"  {cmd} " in out, cmd


def test_bench_lists_every_benchmark() -> None:
    out = CliRunner().invoke(main, ["bench", "--help"]).output
    for b in ["lab", "logger", "normal", "recovery", "paper"]:
        assert f"  {b} " in out, b


def test_bench_recovery_is_documented() -> None:
    r = CliRunner().invoke(main, ["bench", "recovery", "--help"])
    assert r.exit_code == 0
    assert "Table V" in r.output and "--restore" in r.output


def test_version() -> None:
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "ftcp" in r.output
