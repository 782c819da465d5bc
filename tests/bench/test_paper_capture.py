"""ftcp.bench.capture: the pcap reader and the paper's per-run metrics, on synthetic captures."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from ftcp.bench.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    CaptureError,
    Coverage,
    analyze,
    analyze_pcap,
    read_pcap,
    tcp_segments,
)

CLIENT, SERVER = "198.18.0.1", "198.18.0.2"
CPORT, SPORT = 40000, 5600
C_ISN, S_ISN = 0xFFFFF000, 777  # the client's ISN wraps inside the transfer
SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08
MSS = 1000


def tcp_ip(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
           payload: int = 0, mss: int | None = None) -> bytes:  # fmt: skip
    opts = struct.pack("!BBH", 2, 4, mss) if mss is not None else b""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      (20 + len(opts)) // 4 << 4, flags, 65535, 0, 0) + opts  # fmt: skip
    total = 20 + len(tcp) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return ip + tcp + bytes(payload)


def write_pcap(path: Path, packets: list[tuple[float, bytes]], *, linktype: int = 1,
               snaplen: int = 96, nanos: bool = False, endian: str = "<") -> None:  # fmt: skip
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, ip in packets:
        if linktype == LINKTYPE_ETHERNET:
            frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip
        else:  # Linux cooked (SLL): type, ARPHRD, addr len, addr[8], protocol
            frame = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + ip
        cap = frame[:snaplen]
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nanos else 1e6))
        out.append(struct.pack(endian + "IIII", sec, frac, len(cap), len(frame)) + cap)
    path.write_bytes(b"".join(out))


def c2s(ts: float, seq: int, flags: int = ACK | PSH, payload: int = 0, **kw: int) -> tuple:
    return (ts, tcp_ip(CLIENT, SERVER, CPORT, SPORT, C_ISN + 1 + seq, S_ISN + 1, flags,
                       payload, **kw))  # fmt: skip


def s2c(ts: float, ack: int, flags: int = ACK) -> tuple:
    return (ts, tcp_ip(SERVER, CLIENT, SPORT, CPORT, S_ISN + 1, C_ISN + 1 + ack, flags))


T0 = 1000.0


def exchange() -> list[tuple[float, bytes]]:
    """Handshake; 10 segments of 1000 bytes every 1 ms from T0+0.010 (the 4th and 5th
    leave as one 2000-byte GSO packet, the 7th is retransmitted); an ack of every second
    segment 5 ms after it left; FIN exchange."""
    pk = [
        (T0, tcp_ip(CLIENT, SERVER, CPORT, SPORT, C_ISN, 0, SYN, mss=1460)),
        (
            T0 + 0.001,
            tcp_ip(SERVER, CLIENT, SPORT, CPORT, S_ISN, C_ISN + 1, SYN | ACK, mss=MSS),
        ),  # fmt: skip
        c2s(T0 + 0.002, 0, ACK),
    ]
    for i in range(10):
        t = T0 + 0.010 + 0.001 * i
        if i == 4:
            continue  # sent inside the GSO packet of segment 3
        size = 2000 if i == 3 else 1000
        pk.append(c2s(t, 1000 * i, payload=size))
    pk.append(c2s(T0 + 0.0205, 6000, payload=1000))  # retransmission of segment 6
    for i in range(1, 10, 2):  # acks of segments 1, 3, 5, 7, 9 (each covering two)
        pk.append(s2c(T0 + 0.010 + 0.001 * i + 0.005, 1000 * (i + 1)))
    pk.append(s2c(T0 + 0.0251, 10000))  # a duplicate ack (a pure ack: counted)
    pk.append(c2s(T0 + 0.030, 10000, ACK | FIN))
    pk.append(s2c(T0 + 0.031, 10001, ACK | FIN))
    pk.append(c2s(T0 + 0.032, 10001, ACK))
    return sorted(pk, key=lambda p: p[0])


@pytest.mark.parametrize(
    ("linktype", "nanos", "endian"),
    [
        (LINKTYPE_ETHERNET, False, "<"),
        (LINKTYPE_LINUX_SLL, True, ">"),
        (LINKTYPE_ETHERNET, True, ">"),
    ],  # fmt: skip
)
def test_pcap_reader(tmp_path: Path, linktype: int, nanos: bool, endian: str) -> None:
    path = tmp_path / "x.pcap"
    pkts = exchange()
    write_pcap(path, pkts, linktype=linktype, nanos=nanos, endian=endian)
    lt, frames = read_pcap(path)
    assert lt == linktype
    assert len(frames) == len(pkts)
    assert frames[0].ts == pytest.approx(T0, abs=1e-6)
    assert all(len(f.data) <= 96 for f in frames)
    segs = tcp_segments(path)
    assert len(segs) == len(pkts)
    syn = segs[0]
    assert (syn.src, syn.dst, syn.sport, syn.dport) == (CLIENT, SERVER, CPORT, SPORT)
    assert syn.seq == C_ISN and syn.flags == SYN and syn.mss == 1460
    assert segs[1].mss == MSS
    data = [s for s in segs if s.payload_len]
    assert [s.payload_len for s in data][:4] == [1000, 1000, 1000, 2000]  # from orig_len
    assert all(s.ts >= T0 for s in segs)


def test_reader_rejects_garbage_and_tolerates_a_cut_record(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(CaptureError):
        read_pcap(bad)
    path = tmp_path / "cut.pcap"
    write_pcap(path, exchange())
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])  # the last record is incomplete
    assert len(read_pcap(path)[1]) == len(exchange()) - 1


def test_metrics_of_a_synthetic_exchange(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    write_pcap(path, exchange())
    m = analyze_pcap(path, SPORT)
    assert m.mss == MSS  # from the SYN-ACK (no timestamps)
    assert m.bytes == 10000
    assert m.segments == 10  # the 2000-byte GSO packet counts as two segments
    assert m.packets == 10  # 9 first transmissions (one GSO) + 1 retransmission
    assert m.retransmitted == 1
    # throughput: start offsets 0..9000 at 1 ms steps, except segment 4 which left with 3
    xs = [0.001 * i for i in range(10)]
    xs[4] = 0.003
    assert m.fit.n == 10
    assert m.throughput_Bps == pytest.approx(
        _ols_slope(xs, [1000.0 * i for i in range(10)]), rel=1e-6
    )
    assert 0 < m.fit.r2 < 1 and m.fit.slope_ci > 0
    # latency: segment i (odd) acked 5 ms after it left; even i acked with i+1: 6 ms;
    # segment 4 left at 3 ms, acked at 5+5 ms: 7 ms; the retransmitted segment 6 counts
    # once, from its first transmission (acked with 7 at 7+5 ms: 6 ms)
    lat = [6, 5, 6, 5, 7, 5, 6, 5, 6, 5]
    assert m.latency.n == 10
    assert m.latency.mean * 1e3 == pytest.approx(sum(lat) / 10, abs=1e-3)
    assert m.unacked_segments == 0
    assert m.acks == 6  # five acks and one duplicate; the SYN-ACK and FIN-ACK are not pure
    assert m.acks_all == 7
    assert m.duration_s == pytest.approx(0.014, abs=1e-6)  # first data -> last data acked
    # figure series: (s since SYN, stream-relative ack), SYN-ACK first at ack 0
    assert m.ack_series[0] == (pytest.approx(0.001), 0)
    assert m.ack_series[1] == (pytest.approx(0.016), 2000)
    assert m.ack_series[-1][1] == 10001


def test_a_hole_filled_later_is_a_first_transmission() -> None:
    """Segments lost before the capture point (e.g. in the sender's own qdisc) appear
    for the first time out of order: they are not retransmissions."""
    from ftcp.bench.capture import Seg

    segs = [Seg(0.0, CLIENT, SERVER, CPORT, SPORT, C_ISN, 0, SYN, 0, 0, 1460)]
    segs.append(Seg(0.0001, SERVER, CLIENT, SPORT, CPORT, S_ISN, C_ISN + 1, SYN | ACK, 0, 0,
                    MSS))  # fmt: skip
    order = [0, 1, 3, 4, 2, 5]
    for k, i in enumerate(order):
        segs.append(Seg(0.001 * (k + 1), CLIENT, SERVER, CPORT, SPORT, C_ISN + 1 + 1000 * i,
                        S_ISN + 1, ACK, 0, 1000))  # fmt: skip
    segs.append(Seg(0.010, SERVER, CLIENT, SPORT, CPORT, S_ISN + 1, C_ISN + 1 + 6000, ACK,
                    0, 0))  # fmt: skip
    m = analyze(segs, SPORT)
    assert m.retransmitted == 0
    assert m.late_segments == 1  # segment 2, first seen after 3 and 4
    assert m.segments == 6
    assert m.bytes == 6000


def test_coverage() -> None:
    c = Coverage()
    c.add(0, 10)
    c.add(20, 30)
    assert c.covers(0, 10) and not c.covers(5, 15) and not c.covers(10, 20)
    c.add(10, 20)
    assert (c.starts, c.ends) == ([0], [30])
    assert c.high == 30


def test_no_connection_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    write_pcap(path, exchange())
    with pytest.raises(CaptureError):
        analyze_pcap(path, 1234)


def _ols_slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
