"""Lab topologies as pure data, and everything derived from them without root.

A `Topology` only records which hosts sit on which segment and how each
segment is shaped (mininet's `Topo.build()`); `LabLayout` derives every name,
address and MAC of one lab instance from its name; the `*_argv` functions
return the `ip`/`tc` commands that build it as argv lists. Nothing here runs a
command, so all of it is unit-tested without root. Building is `ftcp.lab.net`.

Wiring: a "front" segment (client, server, backup) and a "back" segment
(server, backup, logger). On a bridge medium each segment is a Linux bridge in
the lab's switch namespace and each attachment is a veth pair shaped with
`tbf` on both ends (so each host's link is limited in both directions). On a
hub medium (`10-shared`) every attachment is a TAP device served by one
userspace hub process (`ftcp.lab.hub`) that passes the frames of all segments
through ONE token bucket: the whole lab shares one budget, like the paper's
10 Mbit/s hub.

Rates count whole Ethernet frames as the kernel sees them (14-byte header +
IP packet; no preamble, FCS or inter-frame gap), for `tbf` and the hub alike.
A full-size TCP segment (1448 payload bytes with timestamps) is a 1514-byte
frame, so TCP goodput tops out at 1448/1514 = 95.6% of the configured rate.

Queues: as on real Ethernet, the two ends of an attachment differ. The
switch-side `tbf` (a switch port toward the host) holds `QUEUE_SECONDS` (~50 ms)
of traffic and tail-drops beyond it. The host-side `tbf` stands for the host's
own NIC and its transmit queue, so it holds at least `HOST_TXQUEUE_FRAMES` full
frames (Linux's default `txqueuelen`): a sender is held back by its own queue,
it does not lose frames to it (with a 50 ms host queue a clean sender lost
frames in its own qdisc in slow start: docs/notes/2026-11-27-lab-queues.md).
Segmentation offloads are left on: `tbf` segments a GSO packet itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass, field, replace

from ftcp.errors import UserError

HOSTS: tuple[str, ...] = ("client", "server", "logger", "backup")
HOST_LETTER = {"client": "c", "server": "s", "logger": "l", "backup": "b"}
HOST_NUMBER = {"client": 1, "server": 2, "logger": 3, "backup": 4}
SEGMENT_LETTER = {"front": "f", "back": "b"}

NAME_RE = re.compile(r"[a-z0-9]{1,8}")
LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range
SEGMENT_SLOTS = 2  # /24s reserved per lab: one per segment
IFNAMSIZ = 15

HZ = 250  # kernel timer frequency here; a tbf burst below rate/HZ cannot reach the rate
MAX_FRAME = 1514  # MTU 1500 + Ethernet header, as tbf and the hub count it
TCP_PAYLOAD = 1448  # MSS 1460 minus 12 bytes of timestamps
PAYLOAD_EFFICIENCY = TCP_PAYLOAD / MAX_FRAME
QUEUE_SECONDS = 0.05  # switch-port tbf and hub queue: ~50 ms at the configured rate
HOST_TXQUEUE_FRAMES = 1000  # host-side tbf: at least a default NIC transmit queue (txqueuelen)
RATE_COUNTS = "Ethernet frames (14 B header + IP; no preamble/FCS/IFG)"


@dataclass(frozen=True, slots=True)
class Segment:
    """One broadcast domain. `rate_bit` limits each attachment in both directions."""

    name: str
    hosts: tuple[str, ...]
    rate_bit: int | None = None  # None: veth line rate
    burst: int | None = None  # bytes; None: `tbf_burst(rate_bit)`


@dataclass(frozen=True, slots=True)
class Hub:
    """One userspace hub carrying every segment through ONE shared token bucket."""

    rate_bit: int | None
    burst: int | None = None  # bytes; None: `tbf_burst(rate_bit)`
    delay_s: float = 0.0  # fixed one-way delay added to every frame
    loss: float = 0.0  # probability a frame is lost (after it used the medium)
    seed: int = 0  # seeds the loss generator: the same seed loses the same frames


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    summary: str
    segments: tuple[Segment, ...]
    hub: Hub | None = None  # set: all segments ride one shared hub instead of bridges
    hosts: tuple[str, ...] = field(default=HOSTS)

    def __post_init__(self) -> None:
        if len(self.segments) > SEGMENT_SLOTS:
            raise ValueError(f"at most {SEGMENT_SLOTS} segments per lab")
        for seg in self.segments:
            if seg.name not in SEGMENT_LETTER:
                raise ValueError(f"unknown segment {seg.name!r}")
            for h in seg.hosts:
                if h not in self.hosts:
                    raise ValueError(f"segment {seg.name} names unknown host {h!r}")

    def segment(self, name: str) -> Segment:
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(name)

    def segments_of(self, host: str) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments if host in s.hosts)

    def link_rate(self, segment: str) -> int | None:
        """Configured rate (bit/s of frames) a single stream on `segment` can get."""
        if self.hub is not None:
            return self.hub.rate_bit
        return self.segment(segment).rate_bit

    def with_hub(self, **changes: float | int | None) -> Topology:
        """A copy with hub fields changed (delay_s, loss, seed, rate_bit, burst)."""
        if self.hub is None:
            raise UserError(f"topology '{self.name}' has no hub; delay/loss need a hub topology")
        return replace(self, hub=replace(self.hub, **changes))

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "summary": self.summary,
            "hosts": list(self.hosts),
            "segments": [
                {"name": s.name, "hosts": list(s.hosts), "rate_bit": s.rate_bit, "burst": s.burst}
                for s in self.segments
            ],
            "hub": None
            if self.hub is None
            else {
                "rate_bit": self.hub.rate_bit,
                "burst": self.hub.burst,
                "delay_s": self.hub.delay_s,
                "loss": self.hub.loss,
                "seed": self.hub.seed,
            },
        }

    @classmethod
    def from_json(cls, d: dict) -> Topology:
        segs = tuple(
            Segment(s["name"], tuple(s["hosts"]), s["rate_bit"], s.get("burst"))
            for s in d["segments"]
        )
        hub = None if d.get("hub") is None else Hub(**d["hub"])
        return cls(d["name"], d["summary"], segs, hub, tuple(d["hosts"]))


FRONT_HOSTS = ("client", "server", "backup")
BACK_HOSTS = ("server", "backup", "logger")
M = 1_000_000
G = 1_000_000_000


def _two(name: str, summary: str, front: int | None, back: int | None) -> Topology:
    return Topology(
        name, summary, (Segment("front", FRONT_HOSTS, front), Segment("back", BACK_HOSTS, back))
    )


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        _two("10-10", "client-server 10 Mbit/s; separate server-logger 10 Mbit/s", 10 * M, 10 * M),
        Topology(
            "10-shared",
            "one shared 10 Mbit/s hub for client, server and logger (all frames, both ways)",
            (Segment("front", FRONT_HOSTS), Segment("back", BACK_HOSTS)),
            hub=Hub(rate_bit=10 * M),
        ),
        _two("10-100", "client-server 10 Mbit/s; server-logger 100 Mbit/s", 10 * M, 100 * M),
        _two("1g-10g", "client-server 1 Gbit/s; server-logger 10 Gbit/s", 1 * G, 10 * G),
        _two("unshaped", "veth line rate on both segments", None, None),
    )
}


def get_topology(name: str) -> Topology:
    try:
        return TOPOLOGIES[name]
    except KeyError:
        valid = ", ".join(TOPOLOGIES)
        raise UserError(f"unknown topology '{name}'; valid topologies: {valid}") from None


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"bad lab name {name!r}: use 1-8 lowercase letters or digits")
    return name


def validate_host(topology: Topology, host: str) -> str:
    if host not in topology.hosts:
        raise UserError(f"unknown host '{host}'; hosts: {', '.join(topology.hosts)}")
    return host


# --- shaping parameters ----------------------------------------------------------------------


def tbf_burst(rate_bit: int) -> int:
    """Bucket depth in bytes: at least one timer tick of traffic and four full frames."""
    return max(math.ceil(rate_bit / 8 / HZ), 4 * MAX_FRAME)


def tbf_limit(rate_bit: int, burst: int | None = None) -> int:
    """Queue in bytes: the burst plus `QUEUE_SECONDS` of traffic at the rate."""
    b = tbf_burst(rate_bit) if burst is None else burst
    return b + math.ceil(rate_bit / 8 * QUEUE_SECONDS)


def host_tbf_limit(rate_bit: int, burst: int | None = None) -> int:
    """Host-side queue in bytes: a NIC transmit queue, and never less than `tbf_limit`."""
    b = tbf_burst(rate_bit) if burst is None else burst
    return max(tbf_limit(rate_bit, b), b + HOST_TXQUEUE_FRAMES * MAX_FRAME)


def tbf_argv(
    netns: str, dev: str, rate_bit: int, burst: int | None = None, *, host: bool = False
) -> list[str]:
    """`tc` argv for a tbf on `dev`; `host`: the host's own NIC (`host_tbf_limit` queue)."""
    b = tbf_burst(rate_bit) if burst is None else burst
    limit = host_tbf_limit(rate_bit, b) if host else tbf_limit(rate_bit, b)
    return [
        "tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf",
        "rate", f"{rate_bit}bit", "burst", str(b), "limit", str(limit),
    ]  # fmt: skip


# --- one lab instance: names, addresses, commands ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a build, and the kernel feature to blame when it fails."""

    argv: list[str]
    feature: str


@dataclass(frozen=True)
class LabLayout:
    """Every name and address of lab `name`, derived deterministically from the name."""

    name: str
    topology: Topology

    def __post_init__(self) -> None:
        validate_name(self.name)

    # names
    @property
    def prefix(self) -> str:
        return f"ftcp-{self.name}-"

    def netns(self, host: str) -> str:
        return f"ftcp-{self.name}-{host}"

    @property
    def switch_netns(self) -> str:
        return f"ftcp-{self.name}-sw"

    @property
    def all_netns(self) -> list[str]:
        return [self.switch_netns, *(self.netns(h) for h in self.topology.hosts)]

    def ifname(self, host: str, segment: str) -> str:
        """The host's interface on `segment` (inside the host namespace), e.g. `lab-cf`."""
        return f"{self.name}-{HOST_LETTER[host]}{SEGMENT_LETTER[segment]}"

    def port_ifname(self, host: str, segment: str) -> str:
        """The switch-side end of that host's veth (inside the switch namespace)."""
        return self.ifname(host, segment) + "-p"

    def bridge(self, segment: str) -> str:
        return f"{self.name}-{segment}"

    def all_ifnames(self) -> list[str]:
        names = [self.bridge(s.name) for s in self.topology.segments]
        for s in self.topology.segments:
            for h in s.hosts:
                names += [self.ifname(h, s.name), self.port_ifname(h, s.name)]
        return names

    # addresses
    @property
    def slot(self) -> int:
        digest = hashlib.sha256(self.name.encode()).digest()
        return int.from_bytes(digest[:4], "big") % (LAB_NET.num_addresses // 256 // SEGMENT_SLOTS)

    def subnet(self, segment: str) -> ipaddress.IPv4Network:
        index = [s.name for s in self.topology.segments].index(segment)
        base = int(LAB_NET.network_address) + (self.slot * SEGMENT_SLOTS + index) * 256
        return ipaddress.IPv4Network((base, 24))

    def ip(self, host: str, segment: str) -> str:
        if segment not in self.topology.segments_of(host):
            raise UserError(f"host '{host}' is not on segment '{segment}'")
        return str(self.subnet(segment).network_address + HOST_NUMBER[host])

    def mac(self, host: str, segment: str) -> str:
        d = hashlib.sha256(f"{self.name}/{host}/{segment}".encode()).digest()
        return ":".join(f"{b:02x}" for b in (0x02, *d[:5]))  # locally administered, unicast

    def addresses(self) -> dict[str, dict[str, str]]:
        return {
            h: {s: self.ip(h, s) for s in self.topology.segments_of(h)} for h in self.topology.hosts
        }

    # commands
    def netns_steps(self) -> list[Step]:
        steps = [Step(["ip", "netns", "add", ns], "network namespaces") for ns in self.all_netns]
        sysctls = [
            "net.ipv4.ip_forward=0",  # a host never routes between segments
            "net.ipv6.conf.all.disable_ipv6=1",  # no IPv6 chatter on shaped links
            "net.ipv6.conf.default.disable_ipv6=1",
        ]
        for ns in self.all_netns:
            steps.append(
                Step(["ip", "netns", "exec", ns, "sysctl", "-q", "-e", "-w", *sysctls], "sysctl")
            )
            steps.append(Step(["ip", "-n", ns, "link", "set", "lo", "up"], "loopback"))
        return steps

    def bridge_steps(self) -> list[Step]:
        """Bridges, veth pairs, addresses and tbf shaping for a bridge-medium topology."""
        sw = self.switch_netns
        steps: list[Step] = []
        for seg in self.topology.segments:
            br = self.bridge(seg.name)
            steps += [
                Step(
                    [
                        "ip",
                        "-n",
                        sw,
                        "link",
                        "add",
                        br,
                        "type",
                        "bridge",
                        "stp_state",
                        "0",
                        "forward_delay",
                        "0",
                    ],
                    "bridge",
                ),  # fmt: skip
                Step(["ip", "-n", sw, "link", "set", br, "up"], "bridge"),
            ]
            for host in seg.hosts:
                ns, dev, port = (
                    self.netns(host),
                    self.ifname(host, seg.name),
                    self.port_ifname(host, seg.name),
                )
                steps.append(
                    Step(
                        [
                            "ip",
                            "-n",
                            sw,
                            "link",
                            "add",
                            port,
                            "type",
                            "veth",
                            "peer",
                            "name",
                            dev,
                            "address",
                            self.mac(host, seg.name),
                            "netns",
                            ns,
                        ],
                        "veth",
                    )  # fmt: skip
                )
                steps.append(
                    Step(["ip", "-n", sw, "link", "set", port, "master", br, "up"], "bridge")
                )
                steps += self.address_steps(host, seg.name)
                if seg.rate_bit is not None:
                    steps.append(
                        Step(
                            tbf_argv(ns, dev, seg.rate_bit, seg.burst, host=True),
                            "tbf qdisc (sch_tbf)",
                        )
                    )
                    steps.append(
                        Step(tbf_argv(sw, port, seg.rate_bit, seg.burst), "tbf qdisc (sch_tbf)")
                    )
        return steps

    def address_steps(self, host: str, segment: str) -> list[Step]:
        ns, dev = self.netns(host), self.ifname(host, segment)
        return [
            Step(
                ["ip", "-n", ns, "addr", "add", f"{self.ip(host, segment)}/24", "dev", dev], "ipv4"
            ),
            Step(["ip", "-n", ns, "link", "set", dev, "up"], "link up"),
        ]

    def hub_ports(self) -> list[tuple[str, str, str]]:
        """(segment, host, ifname) of every hub port, in port order."""
        return [
            (s.name, h, self.ifname(h, s.name)) for s in self.topology.segments for h in s.hosts
        ]

    def hub_argv(self, python: str, stats: str | None = None) -> list[str]:
        hub = self.topology.hub
        assert hub is not None
        argv = ["ip", "netns", "exec", self.switch_netns, python, "-m", "ftcp.lab.hub"]
        if hub.rate_bit is not None:
            burst = tbf_burst(hub.rate_bit) if hub.burst is None else hub.burst
            argv += ["--rate", str(hub.rate_bit), "--burst", str(burst)]
            argv += ["--limit", str(tbf_limit(hub.rate_bit, burst))]
        argv += ["--delay", repr(hub.delay_s), "--loss", repr(hub.loss), "--seed", str(hub.seed)]
        if stats is not None:
            argv += ["--stats", stats]
        for seg, _host, dev in self.hub_ports():
            argv += ["--port", f"{seg}:{dev}"]
        return argv

    def hub_port_steps(self) -> list[Step]:
        """Move each TAP the hub made into its host namespace, then address it."""
        steps: list[Step] = []
        for seg, host, dev in self.hub_ports():
            steps.append(
                Step(
                    ["ip", "-n", self.switch_netns, "link", "set", dev, "netns", self.netns(host)],
                    "tun/tap",
                )
            )
            steps.append(
                Step(
                    [
                        "ip",
                        "-n",
                        self.netns(host),
                        "link",
                        "set",
                        dev,
                        "address",
                        self.mac(host, seg),
                    ],
                    "tun/tap",
                )
            )
            steps += self.address_steps(host, seg)
        return steps


def reachability(topology: Topology) -> dict[tuple[str, str, str], bool]:
    """(src host, dst host, dst segment) -> whether src can reach dst's address there.

    A host reaches an address iff it has an address on the same segment: hosts
    have only their connected /24 routes (no default route) and never forward.
    """
    out: dict[tuple[str, str, str], bool] = {}
    for dst in topology.hosts:
        for seg in topology.segments_of(dst):
            for src in topology.hosts:
                if src != dst:
                    out[(src, dst, seg)] = seg in topology.segments_of(src)
    return out
