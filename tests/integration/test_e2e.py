"""End to end: unmodified servers under `ftcp run`, real clients, a real logger (lab).

All on the `unshaped` lab (one lab for the module), plus one transfer on `10-100`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from ithelpers import (
    FTCP,
    Capture,
    Env,
    Protected,
    check_ack_clamping,
    client_app,
    echo_server,
    free_rules,
    nice_of,
    start_env,
)

pytestmark = pytest.mark.root

MB = 1 << 20


def test_echo_bulk_both_directions_byte_exact_and_acks_clamped(unshaped: Env) -> None:
    """20 MB client→server and its echo server→client at once; invariant 1 from a capture."""
    lab = unshaped.lab
    port = unshaped.next_port()
    with echo_server(unshaped, port) as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        r = client_app(lab, "bulk", lab.ip("server"), port, 20 * MB)
        cap.stop()
        assert r["recv"] == r["sent"] == 20 * MB
        assert r["recv_sha"] == r["sent_sha"]
    assert srv.proc.returncode == 0, srv.err()
    n = check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)
    assert n > 100


def test_many_small_exchanges_and_concurrent_connections(unshaped: Env) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    with echo_server(unshaped, port, strategy="lazy") as srv:
        cap = Capture(lab, srv.dir / "client.pcap", port)
        r = client_app(lab, "small", lab.ip("server"), port, 300, 100)
        assert r["ok"] == r["count"] == 300
        r = client_app(lab, "concurrent", lab.ip("server"), port, 24, 40, 2000)
        assert not r["errors"]
        assert r["ok"] == r["count"] == 24 * 40
        cap.stop()
    check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)


def test_http_server_download_with_curl(unshaped: Env) -> None:
    """`python3 -m http.server` protected; curl downloads 8 MB byte-exact."""
    lab = unshaped.lab
    port = unshaped.next_port()
    root = unshaped.tmp / f"www-{port}"
    root.mkdir()
    data = os.urandom(8 * MB)
    (root / "blob.bin").write_bytes(data)
    cmd = [sys.executable, "-m", "http.server", str(port), "--directory", str(root)]
    with Protected(unshaped, port, cmd) as srv:
        out = unshaped.tmp / f"got-{port}.bin"
        url = f"http://{lab.ip('server')}:{port}/blob.bin"
        for _ in range(2):  # two connections in a row
            out.unlink(missing_ok=True)
            r = lab.run("client", ["curl", "-sS", "--max-time", "60", "-o", str(out), url])
            assert r.returncode == 0, r.stderr
            assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert free_rules(lab)
    assert "Traceback" not in srv.err(), srv.err()


def test_exit_status_is_forwarded_and_rules_removed(unshaped: Env) -> None:
    port = unshaped.next_port()
    p = Protected(unshaped, port, [sys.executable, "-c", "import sys; sys.exit(7)"], wait=False)
    assert p.proc.wait(30) == 7, p.err()
    assert free_rules(unshaped.lab)


def test_sigterm_stops_everything(unshaped: Env) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    srv = echo_server(unshaped, port)
    assert any(
        f"--dport {port}" in r for r in lab.run("server", ["iptables", "-S"]).stdout.splitlines()
    )
    assert srv.stop() == 0, srv.err()
    assert free_rules(lab)
    assert not any(srv.dir.joinpath("state").glob("*.json"))


def test_the_supervisor_shares_the_cpu_outside_a_recovery(unshaped: Env) -> None:
    """The application keeps the nice value `ftcp run` was started with, and so does
    the supervisor's event loop until a crash (`--boost` applies during a recovery:
    tests/recovery/test_recovery_boost.py)."""
    port = unshaped.next_port()
    with echo_server(unshaped, port) as srv:
        chain = [srv.proc.pid]  # `ftcp run` (the lab's `ip netns exec` execs it), the app
        while kids := [
            k for t in Path(f"/proc/{chain[-1]}/task").iterdir()  # a child is its thread's
            for k in (t / "children").read_text().split()
        ]:  # fmt: skip
            assert len(kids) == 1, kids
            chain.append(int(kids[0]))
        assert len(chain) == 2, chain
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert [nice_of(p) for p in chain] == [mine, mine]


def test_logger_unreachable_is_one_clear_error(unshaped: Env) -> None:
    lab = unshaped.lab
    port = unshaped.next_port()
    dead = f"{lab.ip('logger')}:{7999}"  # nothing listens there
    r = lab.run(
        "server",
        [
            *FTCP,
            "run",
            "--logger",
            dead,
            "--insecure",
            "--port",
            str(port),
            "--state-dir",
            str(unshaped.tmp / "state-dead"),
            "--",
            sys.executable,
            "-c",
            "print('must not run')",
        ],  # fmt: skip
        check=False,
        timeout=30,
    )
    assert r.returncode != 0
    assert "must not run" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot reach the logger" in lines[0], r.stderr
    assert free_rules(lab)


def test_shaped_10_100_echo(lab_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory("10-100")
    env = start_env(lab, tmp_path)
    try:
        port = env.next_port()
        with echo_server(env, port) as srv:
            cap = Capture(lab, srv.dir / "client.pcap", port)
            r = client_app(lab, "bulk", lab.ip("server"), port, 2 * MB)
            cap.stop()
            assert r["recv"] == r["sent"] == 2 * MB
            assert r["recv_sha"] == r["sent_sha"]
        check_ack_clamping(cap.path, srv.trace, lab.ip("server"), port)
    finally:
        env.close()
