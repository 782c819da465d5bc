"""Client-side packet capture and the paper's per-run metrics (section V-B).

Capture: `tcpdump` in the lab's client host, on the client's front interface
(link type Ethernet), snaplen 96 (headers only), filtered on the server port,
in immediate mode (no packet waits in a half-filled ring block when the
capture stops) and packet-buffered, written to a pcap file. `Capture.start`
returns once tcpdump reports that it is listening (the packet socket is bound
before it prints that line);
`Capture.stop` sends SIGINT to that PID and reads tcpdump's own packet and
drop counters.

Reading: a pcap reader written with `struct` (classic libpcap format, either
byte order, micro- or nanosecond timestamps; link types Ethernet, Linux cooked
SLL and SLL2, raw IPv4). The IPv4/TCP part is parsed by
`ftcp.core.packet.TcpPacket.parse`; truncated captures are zero-padded to
the IP total length first (only headers are used).

Metrics of one run (one connection, client -> server bulk transfer):

* Segments. A captured data packet larger than the MSS (a GSO super-segment
  that left the client's qdisc whole) is split into MSS-sized segments that
  share its timestamp, so every figure counts wire-sized segments as the
  paper's 10 Mbit/s card sent them.
* Retransmissions. A segment whose bytes were all sent before is a
  retransmission. The throughput fit and the latency use *first*
  transmissions only: a retransmission is neither a new point of the fit nor
  a new latency sample, and the latency of retransmitted data runs from its
  first transmission to the ack that finally covers it (what the data really
  waited). Retransmitted segments are counted separately. A segment seen for
  the first time *after* later data (`late_segments`: it was lost before the
  capture point, e.g. in the client's own queue, and sent again) is a first
  transmission at the time it appears.
* Throughput: slope of the least-squares fit of each segment's stream-relative
  start sequence number (bytes) against its send time (s), with the slope's
  95% CI (Student t, n-2 d.o.f.) and R². In bytes/s; the report shows KB/s
  (1024 B) like the paper and Mbit/s.
* Latency: for each first-transmitted segment, from its send time to the
  arrival of the first segment from the server whose ack number covers the
  segment's end. Mean, sd and the 95% CI of the mean.
* Ack count: pure acks the client received from the server (ACK set, no
  payload, no SYN/FIN/RST) - window updates and duplicate acks included.
* Figure series: every ack from the server as (seconds since the client's
  SYN, stream-relative ack number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcp.bench.stats import LinearFit, MeanCI, MomentSums, SumStats
from ftcp.core import packet as pk
from ftcp.core import seq
from ftcp.core.packet import PacketError, TcpPacket

if TYPE_CHECKING:
    from ftcp.lab.net import Lab

SNAPLEN = 96
KB = 1024

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D


class CaptureError(RuntimeError):
    pass


# --- reading pcap files -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    ts: float  # seconds (capture clock: CLOCK_REALTIME of the capturing host)
    data: bytes  # captured bytes (at most the snaplen)
    orig_len: int  # length on the wire


def read_pcap(path: str | Path) -> tuple[int, list[Frame]]:
    """(link type, frames) of a classic pcap file."""
    raw = Path(path).read_bytes()
    if len(raw) < 24:
        raise CaptureError(f"{path}: not a pcap file ({len(raw)} bytes)")
    for endian in ("<", ">"):
        magic = struct.unpack_from(endian + "I", raw, 0)[0]
        if magic in (_MAGIC_US, _MAGIC_NS):
            break
    else:
        raise CaptureError(f"{path}: not a classic pcap file (magic {raw[:4].hex()})")
    scale = 1e-6 if magic == _MAGIC_US else 1e-9
    _, _, _, _, _, _, linktype = struct.unpack_from(endian + "IHHiIII", raw, 0)
    linktype &= 0x0FFFFFFF  # the top bits may carry FCS information
    rec = struct.Struct(endian + "IIII")
    frames: list[Frame] = []
    off = 24
    while off + 16 <= len(raw):
        sec, frac, incl, orig = rec.unpack_from(raw, off)
        off += 16
        if off + incl > len(raw):
            break  # a record cut short (capture stopped mid-write): ignore it
        frames.append(Frame(sec + frac * scale, raw[off : off + incl], orig))
        off += incl
    return linktype, frames


def ip_offset(linktype: int, data: bytes) -> int | None:
    """Offset of the IPv4 header in a frame, or None when the frame is not IPv4."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return None
        off, etype = 14, struct.unpack_from("!H", data, 12)[0]
        while etype == ETH_P_8021Q and len(data) >= off + 4:
            etype = struct.unpack_from("!H", data, off + 2)[0]
            off += 4
        return off if etype == ETH_P_IP else None
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return None
        return 16 if struct.unpack_from("!H", data, 14)[0] == ETH_P_IP else None
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return None
        return 20 if struct.unpack_from("!H", data, 0)[0] == ETH_P_IP else None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return 0 if data and data[0] >> 4 == 4 else None
    if linktype == LINKTYPE_NULL:
        return 4
    raise CaptureError(f"unsupported pcap link type {linktype}")


@dataclass(frozen=True, slots=True)
class Seg:
    """The header fields of one captured TCP segment."""

    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload_len: int
    mss: int | None = None  # MSS option (SYN / SYN-ACK only)
    has_ts: bool = False


def tcp_segments(path: str | Path) -> list[Seg]:
    """Every IPv4/TCP segment of a pcap file, in capture order (others are skipped)."""
    linktype, frames = read_pcap(path)
    out: list[Seg] = []
    for fr in frames:
        off = ip_offset(linktype, fr.data)
        if off is None:
            continue
        ip = bytearray(fr.data[off:])
        if len(ip) < 20:
            continue
        total = struct.unpack_from("!H", ip, 2)[0]
        if total > len(ip):  # truncated by the snaplen: headers are all we need
            ip.extend(bytes(total - len(ip)))
        try:
            p = TcpPacket.parse(ip)
        except PacketError:
            continue
        mss = p.options().mss if p.flags & pk.SYN else None
        out.append(
            Seg(
                fr.ts,
                p.src_ip,
                p.dst_ip,
                p.sport,
                p.dport,
                p.seq,
                p.ack,
                p.flags,
                p.window,
                p.payload_len,
                mss,
                p.has_ts,
            )  # fmt: skip
        )
    return out


# --- the paper's metrics ------------------------------------------------------------------


def _rel(x: int, base: int) -> int:
    """Stream-relative offset of sequence number `x` from `base` (mod 2^32)."""
    return seq.usub(x, base)


class Coverage:
    """A union of half-open integer ranges: which stream bytes were already seen."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    @property
    def high(self) -> int:
        return self.ends[-1] if self.ends else 0

    def covers(self, a: int, b: int) -> bool:
        i = bisect_right(self.starts, a) - 1
        return i >= 0 and self.ends[i] >= b

    def add(self, a: int, b: int) -> None:
        i = bisect_right(self.starts, a) - 1
        if i >= 0 and self.ends[i] >= a:  # merge with the range on the left
            a = self.starts[i]
        else:
            i += 1
        j = i
        while j < len(self.starts) and self.starts[j] <= b:  # swallow ranges on the right
            b = max(b, self.ends[j])
            j += 1
        self.starts[i:j] = [a]
        self.ends[i:j] = [b]


@dataclass
class RunMetrics:
    """The paper's figures for one transfer, from the client-side capture."""

    bytes: int  # highest stream offset the client sent (payload bytes)
    segments: int  # first-transmitted data segments (wire-sized)
    packets: int  # captured client data packets (GSO super-segments count once)
    retransmitted: int  # retransmitted (wire-sized) segments
    late_segments: int  # first seen on the wire after later data: lost before the capture
    duration_s: float  # first data segment sent -> last data acknowledged
    fit: LinearFit  # seq (bytes) vs time (s)
    fit_sums: SumStats  # the fit's sufficient statistics (x = s since first data, y = bytes)
    latency: MeanCI  # seconds
    latency_sums: MomentSums  # seconds
    acks: int  # pure acks the client received
    acks_all: int  # every segment from the server with ACK set (after the handshake)
    unacked_segments: int  # segments no ack ever covered (0 for a complete transfer)
    mss: int
    ack_series: list[tuple[float, int]] = field(default_factory=list)  # (s since SYN, rel. ack)
    t_syn: float = 0.0  # capture timestamp of the SYN (or first packet)
    t_first_data: float = 0.0

    @property
    def throughput_Bps(self) -> float:
        return self.fit.slope

    @property
    def throughput_kBps(self) -> float:
        return self.fit.slope / KB

    @property
    def mbps(self) -> float:
        return self.fit.slope * 8 / 1e6

    def to_json(self, series: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "bytes": self.bytes,
            "segments": self.segments,
            "packets": self.packets,
            "retransmitted": self.retransmitted,
            "late_segments": self.late_segments,
            "duration_s": self.duration_s,
            "throughput_Bps": self.fit.slope,
            "throughput_kBps": self.throughput_kBps,
            "throughput_ci_kBps": self.fit.slope_ci / KB,
            "throughput_mbps": self.mbps,
            "r2": self.fit.r2,
            "fit": self.fit.to_json(),
            "fit_sums": self.fit_sums.to_json(),
            "latency_ms": self.latency.mean * 1e3,
            "latency_ci_ms": self.latency.ci * 1e3,
            "latency_sd_ms": self.latency.sd * 1e3,
            "latency_sums_s": self.latency_sums.to_json(),
            "acks": self.acks,
            "acks_all": self.acks_all,
            "unacked_segments": self.unacked_segments,
            "mss": self.mss,
        }
        if series:
            d["ack_series"] = [[round(t, 6), a] for t, a in self.ack_series]
        return d


def analyze(segs: list[Seg], server_port: int, mss: int | None = None) -> RunMetrics:
    """The paper's metrics for the (single, or largest) connection to `server_port`."""
    conn = _largest_connection(segs, server_port)
    out = [s for s in conn if s.dport == server_port]  # client -> server
    back = [s for s in conn if s.sport == server_port]  # server -> client
    syn = next((s for s in out if s.flags & pk.SYN), None)
    synack = next((s for s in back if s.flags & pk.SYN), None)
    isn = syn.seq if syn is not None else min(s.seq for s in out if s.payload_len) - 1
    t_syn = syn.ts if syn is not None else conn[0].ts
    if mss is None:
        peer_mss = synack.mss if synack is not None and synack.mss else None
        cap = max((s.payload_len for s in out), default=0)
        ts_len = 12 if synack is not None and synack.has_ts else 0
        mss = peer_mss - ts_len if peer_mss else cap
    if not mss or mss <= 0:
        raise CaptureError("no data segment from the client was captured")
    first, packets, retrans, late, sent_hi = _first_transmissions(out, isn, mss)
    if len(first) < 3:
        raise CaptureError(f"only {len(first)} data segments captured: nothing to fit")
    t0 = first[0][0]
    fit_sums = SumStats()
    for t, start, _ in first:
        fit_sums.add(t - t0, float(start))
    ack_t, ack_max, series, acks, acks_all = _acks(back, isn, t_syn)
    lat = MomentSums()
    unacked = 0
    last_ack_t = t0
    for t, _start, end in first:
        j = bisect_left(ack_max, end)
        if j >= len(ack_max):
            unacked += 1
            continue
        # the running maximum can only reach `end` after the segment was sent
        lat.add(max(0.0, ack_t[j] - t))
        last_ack_t = max(last_ack_t, ack_t[j])
    if lat.n < 2:
        raise CaptureError("fewer than 2 data segments were acknowledged in the capture")
    return RunMetrics(
        bytes=sent_hi,
        segments=len(first),
        packets=packets,
        retransmitted=retrans,
        late_segments=late,
        duration_s=last_ack_t - t0,
        fit=fit_sums.fit(),
        fit_sums=fit_sums,
        latency=lat.mean_ci(),
        latency_sums=lat,
        acks=acks,
        acks_all=acks_all,
        unacked_segments=unacked,
        mss=mss,
        ack_series=series,
        t_syn=t_syn,
        t_first_data=t0,
    )


def _largest_connection(segs: list[Seg], server_port: int) -> list[Seg]:
    """The segments, both ways and in time order, of the connection to `server_port`
    that carried the most client data."""
    conns: dict[tuple[str, int], list[Seg]] = {}
    for s in segs:
        if s.dport == server_port:
            conns.setdefault((s.src, s.sport), []).append(s)
        elif s.sport == server_port:
            conns.setdefault((s.dst, s.dport), []).append(s)
    if not conns:
        raise CaptureError(f"no TCP segment to or from port {server_port} was captured")

    def volume(k: tuple[str, int]) -> int:
        return sum(s.payload_len for s in conns[k] if s.dport == server_port)

    return sorted(conns[max(conns, key=volume)], key=lambda s: s.ts)


def _first_transmissions(
    out: list[Seg], isn: int, mss: int
) -> tuple[list[tuple[float, int, int]], int, int, int, int]:
    """Client data split into wire-sized segments, first transmissions only: (send
    time, start, end) stream offsets, and the counts of packets, retransmitted
    segments, segments first seen late (lost before the capture point), and the
    highest byte sent."""
    seen = Coverage()  # stream ranges already seen on the wire
    first: list[tuple[float, int, int]] = []
    packets = retrans = late = 0
    for s in out:
        if s.payload_len <= 0:
            continue
        packets += 1
        start = _rel(s.seq, isn + 1)
        end = start + s.payload_len
        pos = start
        while pos < end:
            piece_end = min(end, pos + mss)
            if seen.covers(pos, piece_end):
                retrans += 1
            else:
                if pos < seen.high:
                    late += 1
                first.append((s.ts, pos, piece_end))
                seen.add(pos, piece_end)
            pos = piece_end
    return first, packets, retrans, late, seen.high


def _acks(
    back: list[Seg], isn: int, t_syn: float
) -> tuple[list[float], list[int], list[tuple[float, int]], int, int]:
    """The server's acks: arrival times with the running maximum of the stream-relative
    ack number, the (time since the SYN, ack) series, and the counts of pure acks and of
    all acks."""
    ack_t: list[float] = []
    ack_max: list[int] = []
    series: list[tuple[float, int]] = []
    hi = acks = acks_all = 0
    for s in back:
        if not s.flags & pk.ACK:
            continue
        rel = _rel(s.ack, isn + 1)
        if rel > (1 << 31):  # acks the SYN only (rel == -1 mod 2^32)
            rel = 0
        series.append((s.ts - t_syn, rel))
        if s.flags & pk.SYN:
            continue
        acks_all += 1
        if s.payload_len == 0 and not s.flags & (pk.FIN | pk.RST):
            acks += 1
        hi = max(hi, rel)
        ack_t.append(s.ts)
        ack_max.append(hi)
    return ack_t, ack_max, series, acks, acks_all


def analyze_pcap(path: str | Path, server_port: int) -> RunMetrics:
    return analyze(tcp_segments(path), server_port)


# --- capturing ------------------------------------------------------------------------------


@dataclass
class CaptureStats:
    captured: int | None = None
    received_by_filter: int | None = None
    dropped_by_kernel: int | None = None


class Capture:
    """`tcpdump` in one lab host, writing a pcap of the traffic to/from one TCP port."""

    def __init__(
        self, lab: Lab, host: str, iface: str, port: int, path: Path, snaplen: int = SNAPLEN
    ) -> None:
        self.lab = lab
        self.host = host
        self.iface = iface
        self.port = port
        self.path = path
        self.snaplen = snaplen
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self.stats = CaptureStats()

    def start(self, timeout: float = 10.0) -> Capture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        argv = [
            "tcpdump", "-i", self.iface, "-n", "-s", str(self.snaplen), "-Z", "root",
            "--immediate-mode", "-U", "-w", str(self.path), f"tcp port {self.port}",
        ]  # fmt: skip
        self.proc = self.lab.popen(
            self.host, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise CaptureError(f"tcpdump did not start: {' '.join(self._stderr)[-300:]}")
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())
            if "listening on" in line:
                self._ready.set()
        self._ready.set()  # EOF: tcpdump ended

    def stop(self, timeout: float = 10.0) -> CaptureStats:
        p = self.proc
        if p is None:
            return self.stats
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._reader is not None:
            self._reader.join(2.0)
        for line in self._stderr:
            words = line.split()
            if not words or not words[0].isdigit():
                continue
            n = int(words[0])
            if "captured" in line:
                self.stats.captured = n
            elif "received by filter" in line:
                self.stats.received_by_filter = n
            elif "dropped by kernel" in line:
                self.stats.dropped_by_kernel = n
        self.proc = None
        return self.stats

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def capturing(lab: Lab, host: str, iface: str, port: int, path: Path) -> Iterator[Capture]:
    cap = Capture(lab, host, iface, port, path).start()
    try:
        yield cap
    finally:
        cap.stop()
        time.sleep(0)  # let the reader thread finish its last lines
