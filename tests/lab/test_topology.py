"""Topology data, names, addresses and shaping commands: no root needed."""

from __future__ import annotations

import ipaddress

import pytest
from click.testing import CliRunner

from ftcp.cli import main
from ftcp.errors import UserError
from ftcp.lab import net
from ftcp.lab.topology import (
    HOST_TXQUEUE_FRAMES,
    HZ,
    LAB_NET,
    MAX_FRAME,
    QUEUE_SECONDS,
    TOPOLOGIES,
    LabLayout,
    get_topology,
    host_tbf_limit,
    reachability,
    tbf_argv,
    tbf_burst,
    tbf_limit,
    validate_name,
)

M, G = 10**6, 10**9


def test_named_topologies_match_design_table() -> None:
    rates = {
        name: (t.link_rate("front"), t.link_rate("back"), t.hub is not None)
        for name, t in TOPOLOGIES.items()
    }
    assert rates == {
        "10-10": (10 * M, 10 * M, False),
        "10-shared": (10 * M, 10 * M, True),
        "10-100": (10 * M, 100 * M, False),
        "1g-10g": (1 * G, 10 * G, False),
        "unshaped": (None, None, False),
    }
    for t in TOPOLOGIES.values():
        assert t.segments_of("client") == ("front",)
        assert t.segments_of("logger") == ("back",)
        assert t.segments_of("server") == ("front", "back")
        assert t.segments_of("backup") == ("front", "back")


def test_unknown_topology_names_the_valid_ones() -> None:
    with pytest.raises(UserError) as e:
        get_topology("10-1000")
    msg = str(e.value)
    assert "10-1000" in msg and "\n" not in msg
    for name in TOPOLOGIES:
        assert name in msg


@pytest.mark.parametrize("bad", ["", "Lab", "toolong12", "a-b", "a b", "lab_1", "é", "lab\n"])
def test_bad_lab_names(bad: str) -> None:
    with pytest.raises(UserError, match="bad lab name"):
        validate_name(bad)
    with pytest.raises(UserError):
        LabLayout(bad, TOPOLOGIES["10-10"])


@pytest.mark.parametrize("good", ["a", "lab", "x1", "abcdefgh", "12345678"])
def test_good_lab_names(good: str) -> None:
    assert validate_name(good) == good


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_names_are_prefixed_unique_and_fit(topo: str) -> None:
    lay = LabLayout("abcdefgh", TOPOLOGIES[topo])  # longest name
    nss = lay.all_netns
    assert len(set(nss)) == len(nss) == 5
    assert all(ns.startswith("ftcp-abcdefgh-") for ns in nss)
    ifs = lay.all_ifnames()
    assert len(set(ifs)) == len(ifs)
    for name in ifs:
        assert name.startswith("abcdefgh-") and len(name) <= 15, name
    assert lay.ifname("client", "front") == "abcdefgh-cf"
    assert lay.ifname("server", "back") == "abcdefgh-sb"


def test_addresses_are_deterministic_and_in_the_benchmark_range() -> None:
    t = TOPOLOGIES["10-10"]
    a, a2, b = LabLayout("lab", t), LabLayout("lab", t), LabLayout("other", t)
    assert a.addresses() == a2.addresses()
    assert a.addresses() != b.addresses()  # (these two names hash to different slots)
    front, back = a.subnet("front"), a.subnet("back")
    assert front.prefixlen == back.prefixlen == 24 and front != back
    assert front.subnet_of(LAB_NET) and back.subnet_of(LAB_NET)
    assert int(back.network_address) - int(front.network_address) == 256
    assert a.ip("client", "front") == str(front.network_address + 1)
    assert a.ip("server", "front") == str(front.network_address + 2)
    assert a.ip("server", "back") == str(back.network_address + 2)
    assert a.ip("logger", "back") == str(back.network_address + 3)
    assert a.ip("backup", "back") == str(back.network_address + 4)
    with pytest.raises(UserError):
        a.ip("client", "back")
    with pytest.raises(UserError):
        a.ip("logger", "front")


def test_every_name_gets_a_slot_inside_the_range() -> None:
    seen = set()
    for i in range(2000):
        lay = LabLayout(f"n{i}", TOPOLOGIES["10-10"])
        for seg in ("front", "back"):
            net_ = lay.subnet(seg)
            assert net_.subnet_of(LAB_NET)
        seen.add(lay.slot)
    assert len(seen) > 200  # spread over the 256 slots


def test_macs_unique_locally_administered() -> None:
    lay = LabLayout("lab", TOPOLOGIES["10-10"])
    macs = [lay.mac(h, s) for s in ("front", "back") for h in lay.topology.segment(s).hosts]
    assert len(set(macs)) == len(macs)
    for m in macs:
        first = int(m.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01


@pytest.mark.parametrize("rate", [10 * M, 100 * M, 1 * G, 10 * G])
def test_tbf_parameters(rate: int) -> None:
    burst = tbf_burst(rate)
    assert burst >= rate / 8 / HZ  # one timer tick of traffic fits in the bucket
    assert burst >= 4 * MAX_FRAME  # several full frames
    limit = tbf_limit(rate)
    assert limit >= burst + rate / 8 * QUEUE_SECONDS
    assert QUEUE_SECONDS <= 0.1  # tens of ms of queue, not seconds
    argv = tbf_argv("ns1", "dev1", rate)
    assert argv[:3] == ["tc", "-n", "ns1"]
    assert argv[argv.index("dev") + 1] == "dev1"
    assert argv[argv.index("tbf") - 1] == "root"
    assert argv[argv.index("rate") + 1] == f"{rate}bit"
    assert int(argv[argv.index("burst") + 1]) == burst
    assert int(argv[argv.index("limit") + 1]) == limit


@pytest.mark.parametrize("rate", [10 * M, 100 * M, 1 * G, 10 * G])
def test_host_side_queue_is_a_nic_transmit_queue(rate: int) -> None:
    burst = tbf_burst(rate)
    limit = host_tbf_limit(rate)
    assert limit >= tbf_limit(rate)  # never shallower than a switch port
    assert limit >= burst + HOST_TXQUEUE_FRAMES * MAX_FRAME
    assert int(tbf_argv("n", "d", rate, host=True)[-1]) == limit
    if rate == 10 * M:  # a clean 1 MB upload's ~900 KB window fits: no self-inflicted loss
        assert limit >= 1_000_000


def test_host_end_gets_the_nic_queue_switch_port_the_50ms_queue() -> None:
    lay = LabLayout("lab", TOPOLOGIES["10-10"])
    limits = {}
    for step in lay.bridge_steps():
        if step.argv[0] == "tc":
            ns, dev = step.argv[2], step.argv[step.argv.index("dev") + 1]
            limits[(ns, dev)] = int(step.argv[step.argv.index("limit") + 1])
    for seg in lay.topology.segments:
        for h in seg.hosts:
            assert limits[(lay.netns(h), lay.ifname(h, seg.name))] == host_tbf_limit(10 * M)
            assert limits[(lay.switch_netns, lay.port_ifname(h, seg.name))] == tbf_limit(10 * M)


def _tbf_steps(lay: LabLayout) -> dict[tuple[str, str], int]:
    out = {}
    for step in lay.bridge_steps():
        if step.argv[0] == "tc":
            ns, dev = step.argv[2], step.argv[step.argv.index("dev") + 1]
            out[(ns, dev)] = int(step.argv[step.argv.index("rate") + 1].removesuffix("bit"))
    return out


@pytest.mark.parametrize("topo", ["10-10", "10-100", "1g-10g"])
def test_every_attachment_is_shaped_both_ways(topo: str) -> None:
    t = TOPOLOGIES[topo]
    lay = LabLayout("lab", t)
    want = {}
    for seg in t.segments:
        for h in seg.hosts:
            want[(lay.netns(h), lay.ifname(h, seg.name))] = seg.rate_bit  # host egress
            want[(lay.switch_netns, lay.port_ifname(h, seg.name))] = seg.rate_bit  # toward host
    assert _tbf_steps(lay) == want


def test_unshaped_has_no_qdisc_and_shared_has_no_bridge() -> None:
    assert _tbf_steps(LabLayout("lab", TOPOLOGIES["unshaped"])) == {}
    shared = LabLayout("lab", TOPOLOGIES["10-shared"])
    argv = shared.hub_argv("python3", "/tmp/x.json")
    assert argv[:4] == ["ip", "netns", "exec", shared.switch_netns]
    assert argv[argv.index("--rate") + 1] == str(10 * M)
    ports = [argv[i + 1] for i, a in enumerate(argv) if a == "--port"]
    assert len(ports) == 6  # every attachment of both segments on the one hub
    assert set(ports) == {f"{s}:{shared.ifname(h, s)}" for s, h, _ in shared.hub_ports()}
    moved = [s.argv for s in shared.hub_port_steps() if "netns" in s.argv[4:]]
    assert len(moved) == 6


def test_all_devices_and_addresses_live_in_lab_namespaces() -> None:
    for t in TOPOLOGIES.values():
        lay = LabLayout("lab", t)
        steps = lay.netns_steps() + (lay.bridge_steps() if t.hub is None else lay.hub_port_steps())
        for step in steps:
            a = step.argv
            if a[:3] == ["ip", "netns", "add"] or a[:3] == ["ip", "netns", "exec"]:
                assert a[3] in lay.all_netns
            else:  # ip -n NS / tc -n NS: never the root namespace
                assert a[1] == "-n" and a[2] in lay.all_netns, a


def test_reachability_matrix() -> None:
    r = reachability(TOPOLOGIES["10-10"])
    yes = {k for k, v in r.items() if v}
    no = {k for k, v in r.items() if not v}
    assert no == {
        ("client", "server", "back"),
        ("client", "backup", "back"),
        ("client", "logger", "back"),
        ("logger", "client", "front"),
        ("logger", "server", "front"),
        ("logger", "backup", "front"),
    }
    assert ("client", "server", "front") in yes and ("server", "logger", "back") in yes
    assert ("backup", "client", "front") in yes and ("backup", "logger", "back") in yes
    assert len(yes) == 12
    for t in TOPOLOGIES.values():
        assert reachability(t) == r  # same wiring whatever the medium


def test_with_hub_only_on_hub_topologies() -> None:
    t = TOPOLOGIES["10-shared"].with_hub(delay_s=0.01, loss=0.02, seed=7)
    assert t.hub is not None and (t.hub.delay_s, t.hub.loss, t.hub.seed) == (0.01, 0.02, 7)
    assert TOPOLOGIES["10-shared"].hub.delay_s == 0  # the named topology is untouched
    with pytest.raises(UserError):
        TOPOLOGIES["10-10"].with_hub(delay_s=0.01)


def test_topology_json_roundtrip() -> None:
    from ftcp.lab.topology import Topology

    for t in (*TOPOLOGIES.values(), TOPOLOGIES["10-shared"].with_hub(loss=0.1, seed=3)):
        assert Topology.from_json(t.to_json()) == t


def test_state_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("FTCP_LAB_STATE_DIR", str(tmp_path))
    assert net.state_path("x") == tmp_path / "x.json"
    monkeypatch.delenv("FTCP_LAB_STATE_DIR")
    assert net.state_path("x") == net.DEFAULT_STATE_DIR / "x.json"


def test_not_root_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(net.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("FTCP_LAB_STATE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="root"):
        net.up("10-10", "nr")
    assert list(tmp_path.iterdir()) == []
    r = CliRunner().invoke(main, ["lab", "up", "10-10", "--name", "nr"])
    assert r.exit_code == 2 and "root" in r.output


def test_cli_unknown_topology_and_bad_name(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTCP_LAB_STATE_DIR", str(tmp_path))
    r = CliRunner().invoke(main, ["lab", "up", "nosuch"])
    assert r.exit_code == 2
    line = r.output.strip()
    assert "\n" not in line and "nosuch" in line
    assert all(t in line for t in TOPOLOGIES)
    r = CliRunner().invoke(main, ["lab", "up", "10-10", "--name", "Bad-Name"])
    assert r.exit_code == 2 and "bad lab name" in r.output
    r = CliRunner().invoke(main, ["lab", "up", "10-10", "--loss", "0.1"])
    assert r.exit_code == 2 and "hub" in r.output
    assert list(tmp_path.iterdir()) == []


def test_addresses_are_ipv4() -> None:
    lay = LabLayout("lab", TOPOLOGIES["10-10"])
    for per_host in lay.addresses().values():
        for ip in per_host.values():
            assert isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address)
