"""The lab on the real kernel: wiring, isolation, shaping, transfers, cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftcp.errors import UserError
from ftcp.lab import net, topology
from ftcp.lab.net import Lab, unique_name
from ftcp.lab.topology import TOPOLOGIES, reachability
from ftcp.lab.traffic import (
    finish_transfer,
    probe_from,
    start_receiver,
    start_sender,
    start_transfer,
    transfer,
)

pytestmark = pytest.mark.root

CLI = [sys.executable, "-c", "from ftcp.cli import main; main()"]


def ftcp(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=check)


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def mine(names: set[str], lab: str) -> set[str]:
    return {n for n in names if n.startswith((f"ftcp-{lab}-", f"{lab}-"))}


def procs_mentioning(lab: str) -> set[int]:
    """PIDs whose command line names one of the lab's namespaces or interfaces."""
    out = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if f"ftcp-{lab}-" in cmd or f":{lab}-" in cmd:
                out.add(int(entry.name))
    return out


def pid_alive(pid: int) -> bool:
    return net.proc_starttime(pid) is not None and not net._reap(pid)


def assert_gone(name: str, pids: list[int] = ()) -> None:
    assert mine(netns_list(), name) == set()
    assert mine(root_links(), name) == set()
    assert not net.state_path(name).exists()
    for pid in pids:
        assert not pid_alive(pid), pid


# --- wiring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("topo", ["10-10", "10-shared"])  # bridge medium and hub medium
def test_reachability_matrix(lab_factory, topo: str) -> None:
    lab: Lab = lab_factory(topo)
    want = reachability(lab.topology)
    assert sum(want.values()) == 12 and sum(not v for v in want.values()) == 6
    for src in lab.hosts:
        cells = {(src, d, s): v for (s_, d, s), v in want.items() if s_ == src}
        targets = {f"{lab.ip(d, s)}:9": (d, s) for (_, d, s) in cells}  # port 9: nobody listens
        got = probe_from(lab, src, list(targets), timeout=1.0)
        for t, (d, s) in targets.items():
            reached = got[t] == "reachable"
            assert reached == cells[(src, d, s)], f"{src} -> {d}.{s} ({t}): {got[t]}"


def test_hosts_have_only_their_own_addresses(lab_factory) -> None:
    lab: Lab = lab_factory("10-10")
    for host in lab.hosts:
        out = json.loads(lab.run(host, ["ip", "-j", "-4", "addr"]).stdout)
        addrs = {a["local"] for i in out for a in i["addr_info"] if a["local"] != "127.0.0.1"}
        assert addrs == {lab.ip(host, s) for s in lab.segments_of(host)}
        routes = json.loads(lab.run(host, ["ip", "-j", "-4", "route"]).stdout)
        assert all(r["dst"] != "default" for r in routes)
        fwd = lab.run(host, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
        assert fwd == "0"


# --- shaping ----------------------------------------------------------------------------------


def tbf_rate(lab: Lab, ns: str, dev: str) -> int | None:
    out = subprocess.run(
        ["tc", "-n", ns, "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for q in json.loads(out.stdout):
        if q["kind"] == "tbf" and q.get("root"):
            return q["options"]["rate"] * 8
    return None


@pytest.mark.parametrize("topo", ["10-10", "10-100", "1g-10g", "unshaped"])
def test_qdiscs_match_topology(lab_factory, topo: str) -> None:
    lab: Lab = lab_factory(topo)
    lay = lab.layout
    for seg in lab.topology.segments:
        for h in seg.hosts:
            assert tbf_rate(lab, lay.netns(h), lay.ifname(h, seg.name)) == seg.rate_bit
            assert tbf_rate(lab, lay.switch_netns, lay.port_ifname(h, seg.name)) == seg.rate_bit
    assert lab.hub_pid is None


def test_shared_hub_runs_with_the_rate(lab_factory) -> None:
    lab: Lab = lab_factory("10-shared")
    pid = lab.hub_pid
    assert pid is not None and pid_alive(pid)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--rate") + 1] == b"10000000"
    hub_ns = os.stat(f"/proc/{pid}/ns/net").st_ino
    assert hub_ns == os.stat(net.NETNS_RUN_DIR / lab.layout.switch_netns).st_ino
    lay = lab.layout
    for seg in lab.topology.segments:
        for h in seg.hosts:  # the hosts' TAPs carry no qdisc shaping: the hub is the medium
            assert tbf_rate(lab, lay.netns(h), lay.ifname(h, seg.name)) is None
    stats = lab.hub_stats()
    assert stats["queue_drops"] == 0


def test_shared_hub_really_shares(lab_factory) -> None:
    """Two streams on different segments at once get ONE 10 Mbit/s, not one each."""
    n = 1_500_000

    def both_at_once(lab: Lab) -> float:
        rxs = [
            start_receiver(lab, "server", port=5401),
            start_receiver(lab, "logger", port=5402),
        ]
        txs = [
            start_sender(lab, "client", lab.ip("server"), n, port=5401),
            start_sender(lab, "server", lab.ip("logger"), n, port=5402),
        ]
        got = [finish_transfer(rx, tx) for rx, tx in zip(rxs, txs, strict=True)]
        for sent, recv in got:
            assert sent["sha256"] == recv["sha256"] and recv["bytes"] == n
        start = min(r["t_first"] for _, r in got)
        end = max(r["t_last"] for _, r in got)
        return 8 * 2 * n / (end - start)

    shared = lab_factory("10-shared")
    s0 = shared.hub_stats()
    shared_bps = both_at_once(shared)
    s1 = shared.hub_stats()
    separate_bps = both_at_once(lab_factory("10-10"))
    assert shared_bps < 10e6  # both fit in one budget (how close: `ftcp bench lab`)
    assert separate_bps > 1.5 * shared_bps  # two links: about twice as fast
    # every frame of both segments went through the one bucket
    assert 8 * (s1["bytes_through_bucket"] - s0["bytes_through_bucket"]) > 2 * 8 * n


# --- transfers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_byte_exact_transfer(lab_factory, topo: str) -> None:
    lab: Lab = lab_factory(topo)
    front = start_transfer(lab, "client", "server", 2_000_000, port=5501, seed=1)
    back = start_transfer(lab, "server", "logger", 1_000_000, port=5502, seed=2)
    for (rx, tx), n in ((front, 2_000_000), (back, 1_000_000)):
        sent, got = finish_transfer(rx, tx)
        assert sent["bytes"] == got["bytes"] == n
        assert sent["sha256"] == got["sha256"]
    # the backup is wired to both segments too
    sent, got = transfer(lab, "backup", "logger", 200_000, port=5503)
    assert sent["sha256"] == got["sha256"]
    sent, got = transfer(lab, "client", "backup", 200_000, port=5504)
    assert sent["sha256"] == got["sha256"]


def test_hub_delay_and_loss(lab_factory) -> None:
    topo = TOPOLOGIES["10-shared"].with_hub(delay_s=0.02, loss=0.02, seed=5)
    lab: Lab = lab_factory(topo)
    sent, got = transfer(lab, "client", "server", 300_000, port=5601)
    assert sent["sha256"] == got["sha256"]  # TCP repairs the loss
    stats = lab.hub_stats()
    assert stats["lost"] > 0
    target = f"{lab.ip('server')}:9"
    (outcome, seconds), *_ = probe_from(lab, "client", [target], timeout=3.0, timed=True).values()
    assert outcome == "reachable"
    assert seconds >= 0.04  # SYN and RST each wait 20 ms in the hub
    plain: Lab = lab_factory("10-shared")
    (outcome, seconds), *_ = probe_from(
        plain, "client", [f"{plain.ip('server')}:9"], timed=True
    ).values()
    assert outcome == "reachable"


# --- lifecycle ----------------------------------------------------------------------------------


def test_down_leaves_nothing_behind() -> None:
    name = unique_name()
    ns_before, links_before, procs_before = netns_list(), root_links(), procs_mentioning(name)
    r = ftcp("lab", "up", "10-shared", "--name", name)
    assert r.returncode == 0, r.stderr
    st = net.read_state(name)
    assert st is not None and st.hub_pid is not None
    hub = st.hub_pid
    # a stray process left in a host (as if whoever started it crashed)
    stray = subprocess.Popen(
        ["ip", "netns", "exec", f"ftcp-{name}-server", "sleep", "300"], start_new_session=True
    )
    try:
        assert mine(netns_list(), name) == set(st.namespaces)
        assert hub in procs_mentioning(name)  # (so the check after `down` means something)
        assert root_links() - links_before == set()  # nothing in the root namespace, ever
        r = ftcp("lab", "list")
        assert name in r.stdout
        r = ftcp("lab", "down", name)
        assert r.returncode == 0, r.stderr
        stray.wait(timeout=10)
        assert_gone(name, [hub, stray.pid])
        assert mine(netns_list() - ns_before, name) == set()
        assert procs_mentioning(name) - procs_before == set()
        r = ftcp("lab", "down", name)  # idempotent
        assert r.returncode == 0 and "nothing to do" in r.stdout
    finally:
        if stray.poll() is None:
            stray.kill()
        net.down(name)


def test_down_after_up_crashed_half_way() -> None:
    """`up` killed mid-build (SIGKILL, no cleanup ran): `down` still removes what it made."""
    name = unique_name()
    code = (
        "import os, ftcp.lab.net as n\n"
        "real = n._run_step\n"
        "count = [0]\n"
        "def step(s, name):\n"
        "    count[0] += 1\n"
        "    if count[0] == 14: os.kill(os.getpid(), 9)\n"
        "    real(s, name)\n"
        "n._run_step = step\n"
        f"n.up('10-10', {name!r})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    st = net.read_state(name)
    try:
        assert st is not None and st.status == "building"
        assert mine(netns_list(), name) == set(st.namespaces) != set()
    finally:
        assert net.down(name)
    assert_gone(name)


def test_failed_up_tears_down(monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique_name()
    real = topology.tbf_argv

    def broken(ns: str, dev: str, rate: int, burst: int | None = None, **kw: bool) -> list[str]:
        return [*real(ns, dev, rate, burst, **kw)[:8], "nosuchqdisc"]

    monkeypatch.setattr(topology, "tbf_argv", broken)
    with pytest.raises(UserError) as e:
        net.up("10-10", name)
    assert "tbf" in str(e.value) and "\n" not in str(e.value)
    assert_gone(name)


def test_name_collision_and_bad_input(lab_factory) -> None:
    lab: Lab = lab_factory("unshaped")
    with pytest.raises(UserError, match="already exists"):
        net.up("10-10", lab.name)
    r = ftcp("lab", "up", "10-10", "--name", lab.name)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert f"ftcp lab down {lab.name}" in r.stderr
    # the first lab is untouched
    sent, got = transfer(lab, "client", "server", 100_000, port=5701)
    assert sent["sha256"] == got["sha256"]
    assert net.read_state(lab.name).topology.name == "unshaped"
    name = unique_name()
    r = ftcp("lab", "up", "nosuch", "--name", name)
    assert r.returncode == 2 and "unknown topology" in r.stderr
    assert all(t in r.stderr for t in TOPOLOGIES)
    r = ftcp("lab", "up", "10-10", "--name", "BAD!")
    assert r.returncode == 2 and "bad lab name" in r.stderr
    assert_gone(name)
    assert mine(netns_list(), "BAD!") == set()


def test_cli_exec_and_list(lab_factory) -> None:
    lab: Lab = lab_factory("10-10")
    r = ftcp("lab", "exec", lab.name, "client", "--", "sh", "-c", "exit 7")
    assert r.returncode == 7
    r = ftcp("lab", "exec", lab.name, "logger", "--", "ip", "-br", "-4", "addr")
    assert r.returncode == 0 and lab.ip("logger") in r.stdout and lab.ip("client") not in r.stdout
    r = ftcp("lab", "exec", lab.name, "nohost", "--", "true")
    assert r.returncode == 2 and "unknown host" in r.stderr
    r = ftcp("lab", "list")
    assert r.returncode == 0 and lab.name in r.stdout and lab.ip("client") in r.stdout


def test_popen_runs_in_the_host_and_is_ended(lab_factory) -> None:
    lab: Lab = lab_factory("unshaped")
    p = lab.popen("logger", ["sleep", "300"])
    for _ in range(200):  # `ip netns exec` enters the namespace, then execs the command
        if Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep":
            break
        time.sleep(0.01)
    ns = os.stat(f"/proc/{p.pid}/ns/net").st_ino
    assert ns == os.stat(net.NETNS_RUN_DIR / lab.netns("logger")).st_ino
    lab.close()
    assert p.poll() is not None
