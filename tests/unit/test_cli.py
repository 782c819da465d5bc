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


def test_status_shows_a_refill_under_way(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A rebuilt connection still being refilled: how much is left, and a shut window."""
    import json
    import os

    conn = {
        "conn_id": 7, "client": "10.0.0.1:4000", "state": "REPLAYING", "stable_seq": 1,
        "server_seq": 2, "unstable_reads": 0, "unlogged_bytes": 0, "logged_bytes": 500,
        "finished": False,
        "refill": {
            "kernel_ack": 0xFFFFFF00, "kernel_window_edge": 0xFFFFFF00, "injected_to": 0xFFFFFF00,
            "target": 0x100, "client_sent_to": 0x100, "kernel_una": 5, "kernel_snd_nxt": 9,
        },
    }  # fmt: skip
    doc = {
        "pid": os.getpid(), "port": 80, "iface": "eth0", "app_pid": 1, "ack_strategy": "lazy",
        "logger": "127.0.0.1:7007", "logger_ok": True,
        "connections": [conn, {**conn, "refill": None}],
    }  # fmt: skip
    (tmp_path / "status-1.json").write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["status", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert r.output.count("refill:") == 1
    assert "refill: 512 B of the log still to go into the rebuilt kernel (its window is shut)" in (
        r.output
    )
