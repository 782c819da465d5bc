"""Helpers for the end-to-end tests: a logger, `ftcp run` in the server host, checks.

Every process is started through the lab (`Lab.popen`), so lab teardown ends
anything a failed test leaves behind; helpers also stop what they started.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcp.core import seq
from ftcp.lab.net import Lab
from ftcp.lab.services import start_logger

APPS = str(Path(__file__).with_name("apps.py"))
FTCP = [sys.executable, "-c", "from ftcp.cli import main; main()"]
LOGGER_PORT = 7007


def wait_until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Env:
    lab: Lab
    tmp: Path
    logger: subprocess.Popen[bytes]
    logger_addr: str
    _ports: list[int] = field(default_factory=lambda: [8100])
    service_ip: str | None = None  # what clients connect to (default: the server's address)

    @property
    def server_ip(self) -> str:
        return self.service_ip or self.lab.ip("server")

    def next_port(self) -> int:
        self._ports[0] += 1
        return self._ports[0]

    def close(self) -> None:
        if self.logger.poll() is None:
            self.logger.terminate()
            try:
                self.logger.wait(5)
            except subprocess.TimeoutExpired:
                self.logger.kill()
                self.logger.wait()


def start_env(lab: Lab, tmp: Path) -> Env:
    ip = lab.ip("logger")
    p = start_logger(lab, "logger", ip, LOGGER_PORT, tmp / "logger-data", log=tmp / "logger.err")
    return Env(lab, tmp, p, f"{ip}:{LOGGER_PORT}")


def logger_on(env: Env, data_dir: Path) -> subprocess.Popen[bytes]:
    """Another logger in the logger host, on `env`'s address, with `data_dir` (its own log
    file in `env.tmp`); returns once it listens."""
    log = env.tmp / f"logger-{time.monotonic_ns()}.err"
    return start_logger(env.lab, "logger", env.lab.ip("logger"), LOGGER_PORT, data_dir, log=log)


def kill9(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(10)


def listening(lab: Lab, host: str, port: int) -> bool:
    r = lab.run(host, ["ss", "-Hltn", f"sport = :{port}"], check=False)
    return bool(r.stdout.strip())


def nice_of(pid: int) -> int:
    """The nice value of process `pid`'s main thread."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19


def iptables_rules(lab: Lab, host: str) -> list[str]:
    return lab.run(host, ["iptables", "-w", "-S"]).stdout.splitlines()


class Protected:
    """`ftcp run ... -- COMMAND` in the server host."""

    def __init__(
        self,
        env: Env,
        port: int,
        command: list[str],
        *,
        strategy: str = "lazy",
        extra: list[str] | None = None,
        wait: bool = True,
    ) -> None:
        self.env = env
        self.lab = env.lab
        self.port = port
        d = env.tmp / f"run-{port}-{time.monotonic_ns()}"
        d.mkdir()
        self.dir = d
        self.trace = d / "acks.trace"
        self.err_path = d / "ftcp.err"
        argv = [
            *FTCP, "run", "--logger", env.logger_addr, "--insecure", "--port", str(port),
            "--ack-strategy", strategy, "--state-dir", str(d / "state"),
            "--ack-trace", str(self.trace), *(extra or []), "--", *command,
        ]  # fmt: skip
        with open(self.err_path, "wb") as err:
            self.proc = self.lab.popen("server", argv, stdout=err, stderr=subprocess.STDOUT)
        if wait:
            wait_until(
                lambda: listening(self.lab, "server", port) or self.proc.poll() is not None,
                20,
                "the protected server to listen",
            )
            assert self.proc.poll() is None, self.err()

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"ftcp run did not stop on SIGTERM:\n{self.err()}") from None

    def __enter__(self) -> Protected:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def echo_server(env: Env, port: int, **kw: Any) -> Protected:
    return Protected(env, port, [sys.executable, APPS, "echo-server", str(port)], **kw)


def client_app(lab: Lab, *args: object, timeout: float = 120) -> dict[str, Any]:
    r = lab.run("client", [sys.executable, APPS, *map(str, args)], check=False, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


class Capture:
    """tcpdump on the client's interface, headers only, for one port."""

    def __init__(self, lab: Lab, path: Path, port: int) -> None:
        self.path = path
        self.err = path.with_suffix(".err")
        with open(self.err, "wb") as err:
            self.proc = lab.popen(
                "client",
                [
                    "tcpdump",
                    "-U",
                    "-n",
                    "-s",
                    "96",
                    "-i",
                    lab.ifname("client"),
                    "-w",
                    str(path),
                    "tcp",
                    "port",
                    str(port),
                ],  # fmt: skip
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        wait_until(lambda: b"listening on" in self.err.read_bytes(), 10, "tcpdump")

    def stop(self) -> None:
        time.sleep(1.0)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        text = self.err.read_text()
        m = re.search(r"(\d+) packets captured\n(\d+) packets received by filter", text)
        # packets still in tcpdump's ring when it stops count as received, not captured
        assert m and int(m.group(1)) >= 0.9 * int(m.group(2)), f"tcpdump lost packets: {text}"


def server_acks(pcap: Path, server_ip: str, port: int) -> list[tuple[float, int, int]]:
    """(time, client port, ack) of every server→client segment with ACK in the capture."""
    import socket

    import dpkt

    out = []
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if socket.inet_ntoa(ip.src) != server_ip or tcp.sport != port:
                continue
            if tcp.flags & dpkt.tcp.TH_ACK:
                out.append((float(ts), tcp.dport, tcp.ack))
    return out


def read_trace(path: Path) -> dict[int, list[tuple[float, int]]]:
    """client port -> [(time, ack_limit)] from the engine's ack trace."""
    out: dict[int, list[tuple[float, int]]] = {}
    for line in path.read_text().splitlines():
        f = line.split()
        if len(f) != 5 or not f[4].isdigit():
            continue  # another event (see `read_events`)
        t, _cid, _ip, port, lim = f
        out.setdefault(int(port), []).append((float(t), int(lim)))
    return out


def read_events(path: Path, what: str) -> dict[int, list[tuple[float, list[str]]]]:
    """client port -> [(time, arguments)] of the trace's `what` events (hs, rlog, close)."""
    out: dict[int, list[tuple[float, list[str]]]] = {}
    for line in path.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[4] == what:
            out.setdefault(int(f[3]), []).append((float(f[0]), f[5:]))
    return out


def check_ack_clamping(pcap: Path, trace: Path, server_ip: str, port: int) -> int:
    """Invariant 1 on the wire: every ack the client received was logged by then.

    Returns how many acks were checked."""
    limits = read_trace(trace)
    acks = server_acks(pcap, server_ip, port)
    bad = []
    for t, cport, ack in acks:
        hist = limits.get(cport)
        assert hist, f"no ack-limit history for client port {cport}"
        lim = None
        for te, le in hist:
            if te <= t:
                lim = le
            else:
                break
        if lim is None or not seq.le(ack, lim):
            bad.append((t, cport, ack, lim))
    assert not bad, f"{len(bad)} acks beyond the logged limit, e.g. {bad[:5]}"
    return len(acks)


def free_rules(lab: Lab) -> bool:
    return not any("ftcp:" in r for r in iptables_rules(lab, "server"))
