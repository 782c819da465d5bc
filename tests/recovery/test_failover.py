"""Host failover in the lab: the primary's host loses power mid-transfer, the standby
takes over the service address, and the client never notices (streams byte-exact)."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crashlib import check_wire
from ithelpers import (
    APPS,
    FTCP,
    Capture,
    Env,
    kill9,
    listening,
    logger_on,
    start_env,
    wait_until,
)
from test_crash_suite import WORKLOADS, Workload

from ftcp.lab.net import Lab

pytestmark = pytest.mark.root

PORT = 8300


def vip_of(lab: Lab) -> ipaddress.IPv4Interface:
    net = ipaddress.ip_network(lab.subnet("front"))
    return ipaddress.IPv4Interface(f"{net.network_address + 9}/{net.prefixlen}")


class Supervisor:
    """`ftcp run --vip ...` in one host of the lab (primary, or `standby`)."""

    def __init__(
        self,
        env: Env,
        host: str,
        vip: ipaddress.IPv4Interface,
        restore: str,
        standby: bool,
        port: int = PORT,
        command: list[str] | None = None,
    ) -> None:
        self.env, self.host = env, host
        d = env.tmp / f"{host}-{time.monotonic_ns()}"
        d.mkdir()
        self.err_path = d / "ftcp.err"
        command = command or [sys.executable, APPS, "echo-server", str(port)]
        argv = [
            *FTCP, "run", "--logger", env.logger_addr, "--insecure", "--port", str(port),
            "--vip", vip.with_prefixlen, "--iface", env.lab.ifname(host, "front"),
            "--restore", restore, "--state-dir", str(d / "state"),
            *(["--standby"] if standby else []), "--", *command,
        ]  # fmt: skip
        with open(self.err_path, "wb") as err:
            self.proc = env.lab.popen(host, argv, stdout=err, stderr=subprocess.STDOUT)

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20) -> None:
        wait_until(
            lambda: text in self.err() or self.proc.poll() is not None, timeout, repr(text)
        )
        assert text in self.err(), self.err()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def failover_env(lab_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    lab = lab_factory("10-100")
    env = start_env(lab, tmp_path)
    yield env
    env.close()


@pytest.mark.parametrize("restore", ["repair", "handshake"])
def test_power_off_mid_transfer_is_masked(failover_env: Env, restore: str) -> None:
    env, lab = failover_env, failover_env.lab
    vip = vip_of(lab)
    primary = Supervisor(env, "server", vip, restore, standby=False)
    try:
        wait_until(lambda: listening(lab, "server", PORT), 20, "the primary to listen")
        standby = Supervisor(env, "backup", vip, restore, standby=True)
        try:
            standby.wait_for("waiting for the lease")
            nbytes = 3 << 20  # ~2.5 s each way at 10 Mbit/s
            client = lab.popen(
                "client",
                [sys.executable, APPS, "bulk", str(vip.ip), str(PORT), str(nbytes)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)
            killed = lab.power_off("server")
            assert primary.proc.pid in killed
            out, err = client.communicate(timeout=90)
            assert client.returncode == 0, f"{err}\nstandby:\n{standby.err()}"
            got = json.loads(out.strip().splitlines()[-1])
            assert got["sent"] == nbytes == got["recv"], got
            assert got["sent_sha"] == got["recv_sha"], got
            standby.wait_for("recovered 1 connection(s)", 30)
            assert "taking over" in standby.err()
            # the standby holds the address, the dead primary's host never answers again
            addrs = lab.run("backup", ["ip", "-4", "-o", "addr", "show"]).stdout
            assert vip.with_prefixlen in addrs
        finally:
            standby.stop()
    finally:
        primary.stop()


def _frames_from(pcap: Path, mac: bytes, port: int) -> list[float]:
    """Times of the TCP segments from `port` in the capture sent by the host with `mac`."""
    import dpkt

    out = []
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            tcp = ip.data if isinstance(ip, dpkt.ip.IP) else None
            if eth.src == mac and isinstance(tcp, dpkt.tcp.TCP) and tcp.sport == port:
                out.append(float(ts))
    return out


def test_partition_from_the_logger_fences_the_primary(failover_env: Env) -> None:
    """Only the primary's link to the logger is cut: it cannot renew its lease, so it
    gives the address up and falls silent before the standby is lent the lease; the
    client's stream goes on byte-exact through the standby."""
    env, lab = failover_env, failover_env.lab
    vip = vip_of(lab)
    pcap = env.tmp / "client.pcap"
    mac = {
        h: bytes.fromhex(
            lab.run(h, ["cat", f"/sys/class/net/{lab.ifname(h, 'front')}/address"])
            .stdout.strip()
            .replace(":", "")
        )
        for h in ("server", "backup")
    }
    primary = Supervisor(env, "server", vip, "repair", standby=False)
    try:
        wait_until(lambda: listening(lab, "server", PORT), 20, "the primary to listen")
        standby = Supervisor(env, "backup", vip, "repair", standby=True)
        try:
            standby.wait_for("waiting for the lease")
            cap = lab.popen(
                "client",
                ["tcpdump", "-U", "-n", "-s", "96", "-i", lab.ifname("client"), "-w",
                 str(pcap), "tcp", "port", str(PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
            nbytes = 3 << 20
            client = lab.popen(
                "client",
                [sys.executable, APPS, "bulk", str(vip.ip), str(PORT), str(nbytes)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)
            lab.cut("server", "back")
            out, err = client.communicate(timeout=90)
            assert client.returncode == 0, f"{err}\nstandby:\n{standby.err()}"
            got = json.loads(out.strip().splitlines()[-1])
            assert got["sent"] == nbytes == got["recv"] and got["sent_sha"] == got["recv_sha"]
            assert primary.proc.wait(30) == 4, primary.err()  # lease lost: it stopped
            assert "LOST the lease" in primary.err()
            time.sleep(1.0)
            cap.send_signal(2)
            cap.wait(10)
            # the primary's last segment precedes the standby's first one: never both
            from_primary = _frames_from(pcap, mac["server"], PORT)
            from_standby = _frames_from(pcap, mac["backup"], PORT)
            assert from_primary and from_standby
            assert max(from_primary) < min(from_standby)
            # its link back, the old primary stays out: the address is the standby's only
            lab.power_on("server")
            addrs = lab.run("server", ["ip", "-4", "-o", "addr", "show"]).stdout
            assert str(vip.ip) not in addrs
        finally:
            standby.stop()
    finally:
        primary.stop()


def test_the_repaired_host_rejoins_as_standby_and_takes_back_over(failover_env: Env) -> None:
    """Two power-offs during one transfer: primary -> standby, then the repaired first
    host, back as a standby, takes over from the second (a log written in two epochs)."""
    env, lab = failover_env, failover_env.lab
    vip = vip_of(lab)
    first = Supervisor(env, "server", vip, "repair", standby=False)
    started = [first]
    try:
        wait_until(lambda: listening(lab, "server", PORT), 20, "the primary to listen")
        second = Supervisor(env, "backup", vip, "repair", standby=True)
        started.append(second)
        second.wait_for("waiting for the lease")
        nbytes = 6 << 20  # ~5 s each way at 10 Mbit/s
        client = lab.popen(
            "client",
            [sys.executable, APPS, "bulk", str(vip.ip), str(PORT), str(nbytes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        lab.power_off("server")
        second.wait_for("recovered 1 connection(s)", 30)
        lab.power_on("server")  # repaired: it comes back as the standby
        third = Supervisor(env, "server", vip, "repair", standby=True)
        started.append(third)
        third.wait_for("waiting for the lease")
        assert client.poll() is None, "the transfer ended before the second failover"
        lab.power_off("backup")
        out, err = client.communicate(timeout=90)
        assert client.returncode == 0, f"{err}\nthird:\n{third.err()}"
        got = json.loads(out.strip().splitlines()[-1])
        assert got["sent"] == nbytes == got["recv"] and got["sent_sha"] == got["recv_sha"]
        third.wait_for("recovered 1 connection(s)", 30)
        assert "(epoch 3)" in third.err()
    finally:
        for s in started:
            s.stop()


def test_no_false_takeover_under_cpu_and_logger_link_load(failover_env: Env) -> None:
    """The primary's CPUs saturated for 10 s while a bulk upload keeps its logger link
    busy: it keeps its lease (heartbeats go on a link and a thread of their own), the
    standby never takes over, and the transfer is byte-exact."""
    env, lab = failover_env, failover_env.lab
    vip = vip_of(lab)
    primary = Supervisor(env, "server", vip, "repair", standby=False)
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(lambda: listening(lab, "server", PORT), 20, "the primary to listen")
        standby = Supervisor(env, "backup", vip, "repair", standby=True)
        try:
            standby.wait_for("waiting for the lease")
            hog = "import time\nt = time.monotonic() + 10\nwhile time.monotonic() < t: pass"
            hogs = [lab.popen("server", [sys.executable, "-c", hog]) for _ in range(4)]
            nbytes = 12 << 20  # ~10 s each way at 10 Mbit/s
            r = lab.run(
                "client",
                [sys.executable, APPS, "bulk", str(vip.ip), str(PORT), str(nbytes)],
                timeout=120,
            )
            got = json.loads(r.stdout.strip().splitlines()[-1])
            assert got["sent"] == nbytes == got["recv"] and got["sent_sha"] == got["recv_sha"]
            assert all(h.wait(30) == 0 for h in hogs)
            assert primary.proc.poll() is None, primary.err()
            assert "LOST" not in primary.err()
            assert "holding the lease" not in standby.err(), standby.err()
        finally:
            standby.stop()
    finally:
        for h in hogs:
            if h.poll() is None:
                h.kill()
        primary.stop()



# --- the crash suite's workloads and pass criteria, with host power-offs ---------------


def failover_scenario(env: Env, wl: Workload, kind: str, seed: int, restore: str) -> None:
    """`wl` with the primary's host powered off at a seeded moment: mid-transfer,
    during the handshake, or ("double") mid-transfer and then the standby too, during
    its own takeover, after which the repaired first host, back as a standby, takes
    over. Pass: the client's checks, and a capture with no RST, no early FIN and no gap
    in the outstream."""
    rng = random.Random(seed)
    lab = env.lab
    vip = vip_of(lab)
    env.service_ip = str(vip.ip)
    port = env.next_port()
    started: list[Supervisor] = []

    def sup(host: str, standby: bool) -> Supervisor:
        s = Supervisor(env, host, vip, restore, standby, port, wl.server(env, port))
        started.append(s)
        return s

    try:
        sup("server", False)
        wait_until(lambda: listening(lab, "server", port), 20, "the primary to listen")
        standby = sup("backup", True)
        standby.wait_for("waiting for the lease")
        cap = Capture(lab, env.tmp / f"client-{port}.pcap", port)
        cl = wl.client(env, port)
        if kind == "handshake":
            time.sleep(rng.uniform(0.0, 0.25))
        else:
            time.sleep(rng.uniform(0.15, 0.85) * wl.duration)
        lab.power_off("server")
        last = standby
        if kind == "double":
            standby.wait_for("taking over", 10)
            time.sleep(rng.uniform(0.0, 0.1))
            lab.power_off("backup")
            lab.power_on("server")
            last = sup("server", True)
        last.wait_for("recovered 1 connection(s)", 60)
        wl.check(env, port, cl)
        cap.stop()
        w = check_wire(cap.path, env.server_ip, port, wl.server_closes)
        assert not w.problems, f"{w.problems[:5]}\n{last.err()[-3000:]}"
        assert "Traceback" not in last.err(), last.err()
    finally:
        for s in started:
            s.stop()
        env.service_ip = None
        for h in ("server", "backup"):
            lab.power_on(h)


FAILOVER_FAST = [
    ("echo", "mid", 1, "repair"),
    ("echo", "handshake", 2, "repair"),
    ("echo", "double", 3, "repair"),
    ("echo", "mid", 4, "handshake"),
    ("http", "mid", 11, "repair"),
    ("socat", "mid", 21, "handshake"),
    ("asyncio", "mid", 31, "repair"),
]


@pytest.mark.parametrize(("wl", "kind", "seed", "restore"), FAILOVER_FAST)
def test_failover_suite(unshaped: Env, wl: str, kind: str, seed: int, restore: str) -> None:
    failover_scenario(unshaped, WORKLOADS[wl], kind, seed, restore)


def _bulk(lab: Lab, vip: ipaddress.IPv4Interface, nbytes: int) -> subprocess.Popen[str]:
    return lab.popen(
        "client",
        [sys.executable, APPS, "bulk", str(vip.ip), str(PORT), str(nbytes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _exact(client: subprocess.Popen[str], nbytes: int, why: str) -> None:
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, f"{err}\n{why}"
    got = json.loads(out.strip().splitlines()[-1])
    assert got["sent"] == nbytes == got["recv"] and got["sent_sha"] == got["recv_sha"], got


def test_a_dying_standby_never_disturbs_the_primary(failover_env: Env) -> None:
    env, lab = failover_env, failover_env.lab
    vip = vip_of(lab)
    primary = Supervisor(env, "server", vip, "repair", standby=False)
    try:
        wait_until(lambda: listening(lab, "server", PORT), 20, "the primary to listen")
        standby = Supervisor(env, "backup", vip, "repair", standby=True)
        standby.wait_for("waiting for the lease")
        client = _bulk(lab, vip, 3 << 20)
        time.sleep(1.0)
        lab.power_off("backup")
        _exact(client, 3 << 20, primary.err())
        assert primary.proc.poll() is None and "LOST" not in primary.err()
    finally:
        primary.stop()


def test_the_logger_going_away_stalls_then_the_standby_serves(failover_env: Env) -> None:
    """The logger dies mid-transfer: nothing can be acknowledged, and the primary cannot
    renew its lease, so it gives the address up (it cannot tell a dead logger from being
    cut off from it). Once the logger is back on its data dir, the standby is lent the
    lease and takes over from the log: the transfer completes byte-exact."""
    env, lab = failover_env, failover_env.lab
    vip = vip_of(lab)
    primary = Supervisor(env, "server", vip, "repair", standby=False)
    try:
        wait_until(lambda: listening(lab, "server", PORT), 20, "the primary to listen")
        standby = Supervisor(env, "backup", vip, "repair", standby=True)
        try:
            standby.wait_for("waiting for the lease")
            client = _bulk(lab, vip, 3 << 20)
            time.sleep(1.0)
            kill9(env.logger)
            time.sleep(1.0)
            env.logger = logger_on(env, env.tmp / "logger-data")
            _exact(client, 3 << 20, f"primary:\n{primary.err()}\nstandby:\n{standby.err()}")
            assert primary.proc.wait(30) == 4, primary.err()
            standby.wait_for("recovered 1 connection(s)", 30)
        finally:
            standby.stop()
    finally:
        primary.stop()
