"""Crash suite: unmodified servers killed (-9) at seeded random moments, clients unaware.

Pass = the client exits 0, full-stream hashes match both ways, the client-side
capture shows no RST, no FIN before the client's own, no gap in the outstream,
and no ack beyond what was logged at the time (invariant 1, from the ack trace).

The default run is a fast subset; `FTCP_FULL_CRASH_SUITE=1` runs >= 50 kill points
per workload.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from crashlib import (
    CRASHAPPS,
    finish_client,
    kill_app,
    recovered_count,
    run_client,
    verify,
)
from ithelpers import APPS, Capture, Env, Protected, wait_until

pytestmark = pytest.mark.root

FULL = os.environ.get("FTCP_FULL_CRASH_SUITE") == "1"
MB = 1 << 20


@dataclass
class Workload:
    name: str
    server: Callable[[Env, int], list[str]]
    client: Callable[[Env, int], subprocess.Popen[Any]]
    check: Callable[[Env, int, subprocess.Popen[Any]], None]
    duration: float  # seconds a failure-free run takes, roughly
    server_closes: bool = False  # the application closes first (its FIN is legitimate)


def _duplex_client(env: Env, port: int) -> subprocess.Popen[Any]:
    return run_client(env, ["duplex", env.server_ip, port, 3 * MB, 16384, 0.008])


def _duplex_check(env: Env, port: int, p: subprocess.Popen[Any]) -> None:
    r = finish_client(p)
    assert r["ok"] and r["recv"] == r["sent"], r


def _reqresp_client(env: Env, port: int) -> subprocess.Popen[Any]:
    return run_client(env, ["reqresp", env.server_ip, port, 300, 20000, 0.006])


def _reqresp_check(env: Env, port: int, p: subprocess.Popen[Any]) -> None:
    r = finish_client(p)
    assert r["ok"], r


def _blob(env: Env) -> Any:
    root = env.tmp / "www"
    blob = root / "blob.bin"
    if not blob.exists():
        root.mkdir(exist_ok=True)
        blob.write_bytes(random.Random(1).randbytes(24 * MB))
    return root


def _http_server(env: Env, port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--directory", str(_blob(env))]


def _curl_client(env: Env, port: int) -> subprocess.Popen[Any]:
    out = env.tmp / f"got-{port}.bin"
    out.unlink(missing_ok=True)
    url = f"http://{env.server_ip}:{port}/blob.bin"
    return env.lab.popen(
        "client",
        ["curl", "-sS", "--limit-rate", "8M", "--max-time", "90", "-o", str(out), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _curl_check(env: Env, port: int, p: subprocess.Popen[Any]) -> None:
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    got = (env.tmp / f"got-{port}.bin").read_bytes()
    want = (_blob(env) / "blob.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), (len(got), len(want))


WORKLOADS = {
    "echo": Workload(
        "echo",
        lambda env, port: [sys.executable, APPS, "echo-server", str(port)],
        _duplex_client,
        _duplex_check,
        1.8,
    ),
    "http": Workload("http", _http_server, _curl_client, _curl_check, 3.0, server_closes=True),
    "socat": Workload(
        "socat",
        lambda env, port: ["socat", f"TCP-LISTEN:{port},fork,reuseaddr", "EXEC:cat"],
        _duplex_client,
        _duplex_check,
        1.8,
    ),
    "asyncio": Workload(
        "asyncio",
        lambda env, port: [sys.executable, CRASHAPPS, "asyncio-server", str(port)],
        _reqresp_client,
        _reqresp_check,
        2.0,
    ),
}

SYSCTLS = {
    "defaults": {},
    "no-ts": {"net.ipv4.tcp_timestamps": "0"},
    "no-sack": {"net.ipv4.tcp_sack": "0"},
    "no-wscale": {"net.ipv4.tcp_window_scaling": "0"},
}


def _sysctl(env: Env, values: dict[str, str]) -> dict[str, str]:
    old = {}
    for k, v in values.items():
        old[k] = env.lab.run("client", ["sysctl", "-n", k]).stdout.strip()
        env.lab.run("client", ["sysctl", "-qw", f"{k}={v}"])
    return old


def scenario(
    env: Env,
    wl: Workload,
    kind: str,
    seed: int,
    sysctls: str = "defaults",
    restore: str = "handshake",
) -> None:
    """One run of `wl` with the application killed as `kind` says, at a seeded moment,
    recovered by `ftcp run --restore RESTORE`."""
    rng = random.Random(seed)
    lab = env.lab
    port = env.next_port()
    old = _sysctl(env, SYSCTLS[sysctls])
    try:
        with Protected(env, port, wl.server(env, port), extra=["--restore", restore]) as srv:
            cap = Capture(lab, srv.dir / "client.pcap", port)
            if kind == "none":
                cl = wl.client(env, port)
                kills = 0
            elif kind == "handshake":
                cl = wl.client(env, port)
                time.sleep(rng.uniform(0.0, 0.25))
                kills = 1
                kill_app(srv)
            else:
                cl = wl.client(env, port)
                time.sleep(rng.uniform(0.15, 0.85) * wl.duration)
                if kind == "logger-blocked":
                    env.logger.send_signal(signal.SIGSTOP)
                    try:
                        time.sleep(rng.uniform(0.05, 0.3))
                        kill_app(srv)
                        time.sleep(rng.uniform(0.05, 0.3))
                    finally:
                        env.logger.send_signal(signal.SIGCONT)
                    kills = 1
                elif kind == "double":
                    kill_app(srv)
                    time.sleep(rng.uniform(0.03, 0.2))
                    kill_app(srv)
                    kills = 2
                else:
                    kill_app(srv)
                    kills = 1
            wait_until(
                lambda: recovered_count(srv) >= min(kills, 1), 40, f"recovery\n{srv.err()[-3000:]}"
            )
            wl.check(env, port, cl)
            assert "giving up" not in srv.err(), srv.err()
        verify(env, srv, cap, port, wl.server_closes)
        assert "Traceback" not in srv.err(), srv.err()
        assert srv.err().count("died from signal") >= kills or kind == "double", srv.err()
        if restore == "repair":  # every rebuilt connection was repaired, none fell back
            err = srv.err()
            assert "TCP_REPAIR step" not in err, err
            for n, m in re.findall(r"recovered (\d+) connection\(s\) \((\d+) by TCP_REPAIR\)", err):
                assert n == m, err
    finally:
        _sysctl(env, old)


FAST = [
    ("http", "none", 10, "defaults"),
    ("echo", "mid", 1, "defaults"),
    ("echo", "handshake", 2, "defaults"),
    ("echo", "double", 3, "defaults"),
    ("echo", "logger-blocked", 4, "defaults"),
    ("echo", "mid", 5, "no-ts"),
    ("echo", "mid", 6, "no-sack"),
    ("echo", "mid", 7, "no-wscale"),
    ("http", "mid", 11, "defaults"),
    ("http", "handshake", 12, "defaults"),
    ("socat", "mid", 21, "defaults"),
    ("asyncio", "mid", 31, "defaults"),
    ("asyncio", "double", 32, "no-ts"),
]

FULL_CASES = [
    (wl, kind, 1000 * i + zlib.crc32(wl.encode()) % 997, sc)
    for wl in WORKLOADS
    for i, (kind, sc) in enumerate(
        (k, s)
        for k in ("mid", "mid", "handshake", "double", "logger-blocked")
        for s in SYSCTLS
        for _ in range(3)
    )
]


@pytest.mark.parametrize(("wl", "kind", "seed", "sysctls"), FAST)
def test_crash(unshaped: Env, wl: str, kind: str, seed: int, sysctls: str) -> None:
    scenario(unshaped, WORKLOADS[wl], kind, seed, sysctls)


# `--restore repair` (TCP_REPAIR rebuild in place): the same checks, on a subset
REPAIR_FAST = [
    ("echo", "mid", 1, "defaults"),
    ("echo", "handshake", 2, "defaults"),
    ("echo", "double", 3, "defaults"),
    ("echo", "mid", 5, "no-ts"),
    ("echo", "mid", 7, "no-wscale"),
    ("http", "mid", 11, "defaults"),
    ("http", "handshake", 12, "defaults"),
    ("asyncio", "mid", 31, "defaults"),
]


@pytest.mark.parametrize(("wl", "kind", "seed", "sysctls"), REPAIR_FAST)
def test_crash_repair(unshaped: Env, wl: str, kind: str, seed: int, sysctls: str) -> None:
    scenario(unshaped, WORKLOADS[wl], kind, seed, sysctls, restore="repair")


# The full suite is collected only when asked for: CI fails on any skipped root
# test, and these are not skipped cases but a longer run chosen by the caller.
if FULL:

    @pytest.mark.parametrize("restore", ["handshake", "repair"])
    @pytest.mark.parametrize(("wl", "kind", "seed", "sysctls"), FULL_CASES)
    def test_crash_full(
        unshaped: Env, wl: str, kind: str, seed: int, sysctls: str, restore: str
    ) -> None:
        scenario(unshaped, WORKLOADS[wl], kind, seed, sysctls, restore)
