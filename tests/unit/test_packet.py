"""ftcp.core.packet: parsing, options, rewrites and checksums.

dpkt is the independent oracle: packets are assembled by dpkt (options laid out
by hand here, not by `encode_options`) and checksums are checked against both
dpkt and a naive word-by-word reference.
"""

from __future__ import annotations

import itertools
import os
import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftcp.core import seq
from ftcp.core.packet import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    BlockSums,
    PacketError,
    Summed,
    TcpOptions,
    TcpPacket,
    build_tcp,
    csum_update,
    encode_options,
    flags_str,
    inet_checksum,
    ip_checksum,
    ones_sum,
    pseudo_header_sum,
)
from ftcp.errors import RemoteProtocolError

SRC = bytes((10, 0, 0, 1))
DST = bytes((192, 168, 7, 254))


# --- independent references ----------------------------------------------------


def naive_sum(data: bytes, initial: int = 0) -> int:
    """Ones'-complement sum, one 16-bit word at a time with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    s = initial
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def naive_tcp_csum(pkt: bytes) -> int:
    """The correct TCP checksum of an IPv4 packet, computed from scratch."""
    ihl = (pkt[0] & 0x0F) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    seg = bytearray(pkt[ihl:total])
    seg[16:18] = b"\0\0"
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    return ~naive_sum(pseudo + bytes(seg)) & 0xFFFF


def dpkt_tcp_csum(pkt: bytes) -> int:
    """dpkt's TCP checksum of the same packet."""
    ip = dpkt.ip.IP(pkt)
    ip.sum = 0  # dpkt recomputes the TCP checksum only together with the IP one
    ip.data.sum = 0
    return dpkt.ip.IP(bytes(ip)).data.sum


def tcp_csum_field(pkt: bytes) -> int:
    ihl = (pkt[0] & 0x0F) * 4
    return struct.unpack_from("!H", pkt, ihl + 16)[0]


def assert_csum_ok(pkt: bytes) -> None:
    field = tcp_csum_field(pkt)
    assert field == naive_tcp_csum(pkt)
    assert field == dpkt_tcp_csum(pkt)


def dpkt_packet(
    opts: bytes = b"",
    payload: bytes = b"",
    *,
    flags: int = ACK,
    sq: int = 1000,
    ak: int = 2000,
    win: int = 502,
    ip_opts: bytes = b"",
) -> bytes:
    """An IPv4/TCP packet assembled (and checksummed) by dpkt."""
    assert len(opts) % 4 == 0
    tcp = dpkt.tcp.TCP(
        sport=40000, dport=8080, seq=sq, ack=ak, flags=flags, win=win,
        off=(20 + len(opts)) // 4, opts=opts, data=payload,
    )  # fmt: skip
    ip = dpkt.ip.IP(src=SRC, dst=DST, p=6, ttl=63, id=77, opts=ip_opts, data=tcp)
    if ip_opts:
        ip.hl = (20 + len(ip_opts)) // 4
    ip.len = 20 + len(ip_opts) + len(tcp)
    return bytes(ip)


def partial(pkt: bytes) -> bytearray:
    """The packet as NFQUEUE F_GSO hands it: TCP checksum field = pseudo-header sum."""
    b = bytearray(pkt)
    ihl = (b[0] & 0x0F) * 4
    total = struct.unpack_from("!H", b, 2)[0]
    pseudo = b[12:20] + struct.pack("!BBH", 0, 6, total - ihl)
    struct.pack_into("!H", b, ihl + 16, naive_sum(bytes(pseudo)))
    return b


# --- flags ---------------------------------------------------------------------------


def test_flag_values() -> None:
    assert (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR) == (1, 2, 4, 8, 16, 32, 64, 128)


@pytest.mark.parametrize(
    ("flags", "text"),
    [(SYN | ACK, "SA"), (FIN | ACK, "FA"), (PSH | ACK, "PA"), (RST, "R"), (0, ""),
     (0xFF, "FSRPAUEC"), (SYN | ECE | CWR, "SEC")],
)  # fmt: skip
def test_flags_str(flags: int, text: str) -> None:
    assert flags_str(flags) == text


# --- checksums -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n", [0, 1, 2, 3, 19, 20, 21, 4095, 4096, 4097, 4098, 8191, 8192, 8193, 12289, 65535]
)
def test_ones_sum_matches_naive(n: int) -> None:
    for initial in (0, 1, 0x1234, 0xFFFF):
        data = os.urandom(n)
        assert ones_sum(data, initial) == naive_sum(data, initial)
        assert ones_sum(bytearray(data), initial) == naive_sum(data, initial)
        assert ones_sum(memoryview(data), initial) == naive_sum(data, initial)
        assert inet_checksum(data, initial) == ~naive_sum(data, initial) & 0xFFFF


def test_ones_sum_zero_edges() -> None:
    assert ones_sum(b"") == 0
    assert ones_sum(bytes(64)) == 0
    assert inet_checksum(bytes(64)) == 0xFFFF
    assert ones_sum(b"\xff\xff") == 0xFFFF  # negative zero stays 0xFFFF
    assert ones_sum(b"\x80\x00\x80\x00") == 1  # end-around carry
    assert ones_sum(b"\xff\xff" * 3000) == 0xFFFF  # chunked path
    assert ones_sum(bytes(5000)) == 0
    assert ones_sum(bytes(5000), 0xFFFF) == 0xFFFF


def test_inet_checksum_verifies_to_zero() -> None:
    data2 = bytearray(os.urandom(100)) + b"\0\0"
    struct.pack_into("!H", data2, 100, inet_checksum(data2))
    assert inet_checksum(data2) == 0


def test_ip_checksum_against_dpkt() -> None:
    pkt = dpkt_packet(b"", b"x")
    hdr = bytearray(pkt[:20])
    want = struct.unpack_from("!H", hdr, 10)[0]
    hdr[10:12] = b"\0\0"
    assert ip_checksum(hdr) == want


def test_csum_update_equals_recompute() -> None:
    data = bytearray(os.urandom(64))
    data[10:12] = b"\0\0"
    c = inet_checksum(data)
    old = struct.unpack_from("!I", data, 4)[0]
    struct.pack_into("!I", data, 4, 0xDEADBEEF)
    c2 = csum_update(c, old, 0xDEADBEEF)
    assert c2 == inet_checksum(data)


def test_pseudo_header_sum() -> None:
    assert pseudo_header_sum(SRC, DST, 1234) == naive_sum(SRC + DST + b"\0\x06" + b"\x04\xd2")


# --- option layouts for the round trip -----------------------------------------------------

UNKNOWN = (254, b"\xf9\x89\x01")  # an experimental option (RFC 6994 style), length 5


def raw_options(
    mss: int | None,
    wscale: int | None,
    sack_ok: bool,
    ts: tuple[int, int] | None,
    blocks: list[tuple[int, int]],
    unknown: list[tuple[int, bytes]],
    layout: str,
) -> bytes | None:
    """Option bytes laid out by hand. `linux`: NOP-aligned like Linux; `packed`:
    back to back (odd offsets for TS and SACK edges), EOL-padded. None if > 40."""
    parts: list[bytes] = []
    nop = b"\x01" if layout == "linux" else b""
    if mss is not None:
        parts.append(struct.pack("!BBH", 2, 4, mss))
    if wscale is not None:
        parts.append(nop + struct.pack("!BBB", 3, 3, wscale))
    if sack_ok:
        parts.append(nop * 2 + b"\x04\x02")
    for kind, data in unknown:
        parts.append(bytes((kind, 2 + len(data))) + data)
    if ts is not None:
        parts.append(nop * 2 + struct.pack("!BBII", 8, 10, *ts))
    if blocks:
        body = b"".join(struct.pack("!II", *b) for b in blocks)
        parts.append(nop * 2 + bytes((5, 2 + len(body))) + body)
    out = b"".join(parts)
    if layout == "linux":
        out += b"\x01" * (-len(out) % 4)
    else:
        out += b"\x00" * (-len(out) % 4)
    return out if len(out) <= 40 else None


BLOCKS = [(0xFFFFFF00, 0x00000010), (100, 200), (0x7FFFFFFF, 0x80000001)]


def option_cases() -> list[tuple[object, ...]]:
    cases = []
    for mss, ws, sok, ts, nb, unk, layout in itertools.product(
        (None, 1460), (None, 7), (False, True), (None, (0xFFFFFFF0, 17)), range(4),
        ([], [UNKNOWN]), ("linux", "packed"),
    ):  # fmt: skip
        blocks = BLOCKS[:nb]
        raw = raw_options(mss, ws, sok, ts, blocks, unk, layout)
        if raw is not None:
            cases.append((mss, ws, sok, ts, blocks, unk, layout, raw))
    return cases


OPTION_CASES = option_cases()


def test_option_cases_cover_odd_alignment() -> None:
    assert len(OPTION_CASES) > 100
    odd_ts = [c for c in OPTION_CASES if c[3] and c[6] == "packed" and c[0] is None and c[1]]
    assert odd_ts  # WS(3) then TS: TS values at odd offsets


@pytest.mark.parametrize(
    ("mss", "ws", "sok", "ts", "blocks", "unk", "layout", "raw"),
    OPTION_CASES,
    ids=[f"case{i}" for i in range(len(OPTION_CASES))],
)
def test_roundtrip_and_rewrite_dpkt(
    mss: int | None,
    ws: int | None,
    sok: bool,
    ts: tuple[int, int] | None,
    blocks: list[tuple[int, int]],
    unk: list[tuple[int, bytes]],
    layout: str,
    raw: bytes,
) -> None:
    payload = os.urandom(33)
    pkt = dpkt_packet(raw, payload, flags=PSH | ACK, sq=0xFFFFFFFE, ak=5)
    assert_csum_ok(pkt)
    p = TcpPacket.parse(pkt)
    ref = dpkt.ip.IP(pkt)
    assert (p.src, p.dst, p.src_ip, p.dst_ip) == (ref.src, ref.dst, "10.0.0.1", "192.168.7.254")
    tcp = ref.data
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.window) == (
        tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, tcp.win,
    )  # fmt: skip
    assert (p.ip_hl, p.tcp_off, p.tcp_hl) == (20, 20, 20 + len(raw))
    assert p.payload_len == len(payload) and bytes(p.payload) == payload == tcp.data
    assert p.total_len == len(pkt)
    assert p.tcp_checksum_ok() and p.ip_checksum_ok()

    o = p.options()
    assert o == TcpOptions(
        mss=mss, wscale=ws, sack_ok=sok, ts_val=ts[0] if ts else None,
        ts_ecr=ts[1] if ts else None, sack_blocks=blocks, unknown=unk,
    )  # fmt: skip
    assert o.ts == ts and p.ts() == ts and p.has_ts == (ts is not None)
    # dpkt's own option parser agrees on the unknown ones
    dk = [(k, d) for k, d in dpkt.tcp.parse_opts(raw) if k not in (0, 1, 2, 3, 4, 5, 8)]
    assert dk == unk

    # rewrite everything; the incremental checksum must equal a full recompute
    delta = 0x10000005
    p.set_seq(seq.add(p.seq, 3))
    p.set_ack(seq.add(p.ack, -7))
    p.set_window(0xFFFF)
    assert p.set_ts(ts_val=3, ts_ecr=0xFFFFFFFF) == (ts is not None)
    assert p.map_sack(lambda e: seq.add(e, -delta)) == len(blocks)
    assert p.changed
    out = p.finalize()
    assert_csum_ok(out)
    q = TcpPacket.parse(out)
    assert (q.seq, q.ack, q.window) == (1, 0xFFFFFFFE, 0xFFFF)
    oq = q.options()
    assert oq.sack_blocks == [(seq.add(a, -delta), seq.add(b, -delta)) for a, b in blocks]
    assert oq.unknown == unk and oq.mss == mss and oq.wscale == ws and oq.sack_ok == sok
    if ts:
        assert oq.ts == (3, 0xFFFFFFFF)
    assert bytes(q.payload) == payload
    # nothing but the rewritten fields and the checksum moved
    changed = {i for i in range(len(pkt)) if pkt[i] != out[i]}
    allowed = set(range(24, 32)) | set(range(34, 38))  # seq, ack, window, checksum
    if ts:
        t = raw.index(b"\x08\x0a") + 40
        allowed |= set(range(t + 2, t + 10))
    if blocks:
        s = raw.index(bytes((5, 2 + 8 * len(blocks)))) + 40
        allowed |= set(range(s + 2, s + 2 + 8 * len(blocks)))
    assert changed <= allowed


# --- encode_options / build_tcp ---------------------------------------------------------------


def test_encode_options_linux_syn_layout() -> None:
    o = encode_options(mss=1460, wscale=7, sack_ok=True, ts=(0x01020304, 0))
    assert o.hex() == "020405b40402080a010203040000000001030307"
    o = encode_options(mss=1460, wscale=7, sack_ok=True)
    assert o.hex() == "020405b40101040201030307"
    o = encode_options(mss=536, sack_ok=False, ts=(5, 6))
    assert o.hex() == "020402180101080a0000000500000006"
    o = encode_options(ts=(1, 2), sack_blocks=[(10, 20)])
    assert o.hex() == "0101080a00000001000000020101050a0000000a00000014"
    assert encode_options() == b""


def test_encode_options_parse_back_with_dpkt() -> None:
    for mss, ws, sok, ts, nb in itertools.product(
        (None, 1), (None, 0, 14), (False, True), (None, (7, 8)), range(5)
    ):
        blocks = (BLOCKS + [(1, 2)])[:nb]
        size = (
            (4 if mss is not None else 0)
            + (12 if ts else 4 if sok else 0)
            + (4 if ws is not None else 0)
            + (4 + 8 * nb if nb else 0)
        )
        if size > 40:
            with pytest.raises(ValueError):
                encode_options(mss, ws, sok, ts, blocks)
            continue
        o = encode_options(mss, ws, sok, ts, blocks)
        assert len(o) == size
        kinds = {k: d for k, d in dpkt.tcp.parse_opts(o) if k > 1}
        assert (2 in kinds) == (mss is not None)
        assert (3 in kinds) == (ws is not None)
        assert (4 in kinds) == sok
        assert (8 in kinds) == (ts is not None)
        assert (5 in kinds) == bool(nb)
        p = TcpPacket.parse(build_tcp(SRC, DST, 1, 2, 3, 4, SYN, 5, o))
        po = p.options()
        assert (po.mss, po.wscale, po.sack_ok, po.ts, po.sack_blocks) == (
            mss, ws, sok, ts, blocks,
        )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [{"mss": 70000}, {"mss": -1}, {"wscale": 15}, {"ts": (1 << 32, 0)},
     {"sack_blocks": [(0, 1 << 32)]}, {"ts": (1, 2), "sack_blocks": [(1, 2)] * 4}],
)  # fmt: skip
def test_encode_options_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_options(**kwargs)  # type: ignore[arg-type]


def test_build_tcp_against_dpkt() -> None:
    opts = encode_options(mss=1400, wscale=9, sack_ok=True, ts=(111, 222))
    for payload in (b"", b"x", os.urandom(1001), os.urandom(60000)):
        pkt = build_tcp("10.0.0.1", DST, 5555, 80, 0xFFFFFFFF, 0, SYN, 64240, opts, payload,
                        ttl=3, ip_id=0xBEEF)  # fmt: skip
        ref = dpkt.ip.IP(pkt)
        assert ref.v == 4 and ref.hl == 5 and ref.len == len(pkt) and ref.p == 6
        assert ref.ttl == 3 and ref.id == 0xBEEF and ref.df and not ref.mf and ref.offset == 0
        assert (ref.src, ref.dst) == (SRC, DST)
        t = ref.data
        assert (t.sport, t.dport, t.seq, t.ack, t.flags, t.win) == (
            5555, 80, 0xFFFFFFFF, 0, SYN, 64240,
        )  # fmt: skip
        assert t.opts == opts and t.data == payload
        assert_csum_ok(pkt)
        ip = dpkt.ip.IP(pkt)
        ip.sum = 0
        assert dpkt.ip.IP(bytes(ip)).sum == ref.sum
        assert TcpPacket.parse(pkt).ip_checksum_ok()


def test_build_tcp_closed_window_ack() -> None:
    pkt = build_tcp(SRC, DST, 80, 40000, 7, 9, ACK, 0)
    p = TcpPacket.parse(pkt)
    assert p.window == 0 and p.flags == ACK and p.payload_len == 0 and p.tcp_hl == 20
    assert_csum_ok(pkt)


@pytest.mark.parametrize(
    "kwargs",
    [{"options": b"\x01"}, {"options": b"\x01" * 44}, {"window": 70000}, {"sport": -1},
     {"seq": 1 << 32}, {"src": b"\x01\x02\x03"}, {"src": "300.1.1.1"},
     {"payload": bytes(65536)}],
)  # fmt: skip
def test_build_tcp_rejects(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = dict(src=SRC, dst=DST, sport=1, dport=2, seq=3, ack=4,
                                   flags=ACK, window=5)  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError):
        build_tcp(**args)  # type: ignore[arg-type]


# --- rewrites ---------------------------------------------------------------------------------


LINUX_TS = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)


def test_unchanged_values_do_not_mark_changed() -> None:
    pkt = dpkt_packet(LINUX_TS, b"abc")
    p = TcpPacket.parse(pkt)
    p.set_seq(p.seq)
    p.set_ack(p.ack)
    p.set_window(p.window)
    p.set_ts(1000, 2000)
    assert not p.changed
    assert p.finalize() == pkt


def test_parse_uses_bytearray_in_place() -> None:
    buf = bytearray(dpkt_packet(LINUX_TS, b"abc"))
    p = TcpPacket.parse(buf)
    assert p.buf is buf
    p.set_ack(42)
    assert struct.unpack_from("!I", buf, 28)[0] == 42
    assert_csum_ok(bytes(buf))
    # bytes and memoryview inputs are copied
    b = bytes(buf)
    assert TcpPacket.parse(b).buf is not b
    assert TcpPacket.parse(memoryview(buf)).buf is not buf


def test_incremental_keeps_a_wrong_checksum_wrong() -> None:
    pkt = bytearray(dpkt_packet(LINUX_TS, b"abc"))
    pkt[36] ^= 0x55  # corrupt the checksum on the wire
    p = TcpPacket.parse(pkt)
    assert not p.tcp_checksum_ok()
    p.set_ack(1)
    out = p.finalize()
    assert tcp_csum_field(out) != naive_tcp_csum(out)  # still detectably corrupt


def test_checksum_ffff_input_is_accepted() -> None:
    # 0xFFFF and 0x0000 are the same ones'-complement value. Choose a payload
    # word that makes the right checksum 0, send it as 0xFFFF, and rewrite.
    pkt = bytearray(dpkt_packet(LINUX_TS, b"\0\0"))
    struct.pack_into("!H", pkt, 52, tcp_csum_field(bytes(pkt)))
    struct.pack_into("!H", pkt, 36, naive_tcp_csum(bytes(pkt)))
    assert tcp_csum_field(bytes(pkt)) == 0
    pkt[36:38] = b"\xff\xff"
    p = TcpPacket.parse(pkt)
    assert p.tcp_checksum_ok()
    p.set_ack(123)
    assert_csum_ok(p.finalize())


def test_sack_mapping_across_wrap() -> None:
    blocks = [(0xFFFFFFF0, 0x00000010), (0x00000020, 0x00000030)]
    raw = raw_options(None, None, False, None, blocks, [], "linux")
    assert raw is not None
    p = TcpPacket.parse(dpkt_packet(raw))
    delta = 0x20  # client view - kernel view
    assert p.map_sack(lambda e: seq.add(e, -delta)) == 2
    got = p.options().sack_blocks
    assert got == [(0xFFFFFFD0, 0xFFFFFFF0), (0x00000000, 0x00000010)]
    for left, right in got:
        assert seq.lt(left, right)
    assert_csum_ok(p.finalize())
    # and back across the wrap the other way
    p.map_sack(lambda e: seq.add(e, delta))
    assert p.options().sack_blocks == blocks
    assert_csum_ok(p.finalize())


def test_map_sack_rejects_out_of_range_results() -> None:
    raw = raw_options(None, None, False, None, [(1, 2)], [], "linux")
    assert raw is not None
    p = TcpPacket.parse(dpkt_packet(raw))
    with pytest.raises(ValueError):
        p.map_sack(lambda e: e + (1 << 32))


def test_no_ts_no_sack() -> None:
    p = TcpPacket.parse(dpkt_packet())
    assert p.set_ts(1, 2) is False
    assert p.map_sack(lambda e: e) == 0
    assert p.ts() is None and not p.has_sack and not p.changed
    assert p.options() == TcpOptions()


@pytest.mark.parametrize(
    ("method", "value"),
    [("set_seq", -1), ("set_seq", 1 << 32), ("set_ack", 1 << 32), ("set_window", 0x10000),
     ("set_window", -1)],
)  # fmt: skip
def test_rewrite_rejects_out_of_range(method: str, value: int) -> None:
    p = TcpPacket.parse(dpkt_packet(LINUX_TS))
    with pytest.raises(ValueError):
        getattr(p, method)(value)
    with pytest.raises(ValueError):
        p.set_ts(ts_val=1 << 32)


def test_mark_dirty_forces_full_recompute() -> None:
    p = TcpPacket.parse(dpkt_packet(LINUX_TS, b"hello"))
    p.buf[-1] = ord("!")  # edit the payload behind the view's back
    p.mark_dirty()
    p.set_ack(99)  # no incremental math while dirty
    out = p.finalize()
    assert out.endswith(b"hell!")
    assert_csum_ok(out)


def test_set_ip_checksum() -> None:
    p = TcpPacket.parse(dpkt_packet(LINUX_TS))
    p.buf[8] = 1  # TTL
    assert not p.ip_checksum_ok()
    p.set_ip_checksum()
    assert p.ip_checksum_ok()
    ip = dpkt.ip.IP(bytes(p.buf))
    want = ip.sum
    ip.sum = 0
    assert dpkt.ip.IP(bytes(ip)).sum == want


# --- partial checksums (NFQUEUE F_GSO) -------------------------------------------------------


@pytest.mark.parametrize("payload_len", [0, 1, 1447, 60000, 65535 - 52])
def test_partial_checksum_finalize(payload_len: int) -> None:
    pkt = dpkt_packet(LINUX_TS, os.urandom(payload_len))
    buf = partial(pkt)
    p = TcpPacket.parse(buf, csum_partial=True)
    assert p.csum_partial
    p.set_ack(seq.add(p.ack, 1))
    p.set_ts(ts_ecr=5)
    p.set_window(0)
    out = p.finalize()
    assert not p.csum_partial
    assert tcp_csum_field(out) == dpkt_tcp_csum(out)
    if payload_len < 5000:
        assert tcp_csum_field(out) == naive_tcp_csum(out)
    # further rewrites after finalize are incremental again, and still right
    p.set_seq(0)
    assert tcp_csum_field(p.finalize()) == dpkt_tcp_csum(p.finalize())


def test_partial_unchanged_finalize_completes_checksum() -> None:
    pkt = dpkt_packet(LINUX_TS, b"data")
    p = TcpPacket.parse(partial(pkt), csum_partial=True)
    assert not p.changed
    assert p.finalize() == pkt


# --- sizes, super-segments, buffers longer than the packet -----------------------------------


def test_super_segment_60000() -> None:
    payload = os.urandom(60000)
    pkt = dpkt_packet(LINUX_TS, payload)
    p = TcpPacket.parse(pkt)
    assert p.payload_len == 60000 and bytes(p.payload) == payload
    assert p.seg_len == 60000 and p.end_seq == seq.add(1000, 60000)
    p.set_ack(7)
    out = p.finalize()
    assert tcp_csum_field(out) == dpkt_tcp_csum(out)


def test_buffer_longer_than_total_length() -> None:
    pkt = dpkt_packet(LINUX_TS, b"abc")
    p = TcpPacket.parse(pkt + b"trailing junk")
    assert p.total_len == len(pkt) and bytes(p.payload) == b"abc"
    assert p.tcp_checksum_ok()
    p.set_seq(5)
    out = p.finalize()
    assert len(out) == len(pkt)
    assert_csum_ok(out)
    q = TcpPacket.parse(partial(pkt) + b"\xff" * 9, csum_partial=True)
    assert q.finalize() == pkt


def test_ip_options() -> None:
    ip_opts = b"\x94\x04\x00\x00"  # router alert
    pkt = dpkt_packet(LINUX_TS, b"xyz", ip_opts=ip_opts)
    p = TcpPacket.parse(pkt)
    assert (p.ip_hl, p.tcp_off, p.tcp_hl, p.payload_off) == (24, 24, 32, 56)
    assert bytes(p.payload) == b"xyz" and p.ts() == (1000, 2000)
    p.set_ts(ts_val=1)
    p.set_ack(0)
    assert_csum_ok(p.finalize())


def test_seg_len_and_end_seq() -> None:
    p = TcpPacket.parse(dpkt_packet(flags=SYN, sq=0xFFFFFFFF))
    assert p.seg_len == 1 and p.end_seq == 0
    p = TcpPacket.parse(dpkt_packet(payload=b"ab", flags=FIN | ACK, sq=0xFFFFFFFE))
    assert p.seg_len == 3 and p.end_seq == 1


def test_repr() -> None:
    p = TcpPacket.parse(dpkt_packet(flags=SYN | ACK))
    r = repr(p)
    assert "10.0.0.1:40000 > 192.168.7.254:8080" in r and " SA " in r


# --- malformed input -----------------------------------------------------------------------


def test_packet_error_is_remote() -> None:
    assert issubclass(PacketError, RemoteProtocolError)


def test_truncated_at_every_offset() -> None:
    raw = raw_options(1460, 7, True, (1, 2), [], [UNKNOWN], "packed")
    assert raw is not None
    pkt = dpkt_packet(raw, b"payload!")
    for n in range(len(pkt)):
        with pytest.raises(PacketError):
            TcpPacket.parse(pkt[:n])
    TcpPacket.parse(pkt)


def mutate(pkt: bytes, off: int, value: bytes) -> bytes:
    b = bytearray(pkt)
    b[off : off + len(value)] = value
    return bytes(b)


BASE = dpkt_packet(LINUX_TS, b"abcdefgh")


@pytest.mark.parametrize(
    ("pkt", "match"),
    [
        (mutate(BASE, 0, b"\x65"), "not IPv4"),
        (mutate(BASE, 0, b"\x44"), "header length"),
        (mutate(BASE, 0, b"\x40"), "header length"),
        (mutate(BASE, 0, b"\x4f"), "header length|truncated|total length"),
        (mutate(BASE, 2, struct.pack("!H", len(BASE) + 1)), "exceeds"),
        (mutate(BASE, 2, struct.pack("!H", 19)), "total length"),
        (mutate(BASE, 2, struct.pack("!H", 30)), "truncated TCP"),
        (mutate(BASE, 9, b"\x11"), "not TCP"),
        (mutate(BASE, 6, b"\x20\x00"), "fragmented"),
        (mutate(BASE, 6, b"\x00\x01"), "fragmented"),
        (mutate(BASE, 6, b"\x3f\xff"), "fragmented"),
        (mutate(BASE, 32, b"\x40"), "data offset"),
        (mutate(BASE, 32, b"\x00"), "data offset"),
        (mutate(BASE, 32, b"\xf0"), "exceeds"),
        (mutate(BASE, 32, b"\xb0"), "exceeds"),
    ],
)
def test_malformed_headers(pkt: bytes, match: str) -> None:
    with pytest.raises(PacketError, match=match):
        TcpPacket.parse(pkt)


def test_df_is_not_a_fragment() -> None:
    TcpPacket.parse(mutate(BASE, 6, b"\x40\x00"))


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (b"\x02\x00\x00\x00", "invalid length 0"),  # zero-length option
        (b"\x1e\x01\x00\x00", "invalid length 1"),
        (b"\x1e\x05\x00\x00", "runs past"),
        (b"\x01\x01\x01\x1e", "truncated"),  # kind in the last byte, no length
        (b"\x02\x03\x05\x00", "expected 4"),  # MSS length 3
        (b"\x03\x04\x07\x00", "expected 3"),  # WS length 4
        (b"\x04\x03\x00\x00", "expected 2"),  # SACK-permitted length 3
        (b"\x01\x01\x08\x08" + bytes(8), "expected 10"),  # TS length 8
        (b"\x05\x02\x00\x00", "SACK"),  # SACK with no block
        (b"\x05\x0b" + bytes(10), "SACK"),  # SACK length 11
        (b"\x01\x01\x08\x0c" + bytes(8), "runs past"),  # TS overruns the header
    ],
)
def test_malformed_options(opts: bytes, match: str) -> None:
    with pytest.raises(PacketError, match=match):
        TcpPacket.parse(dpkt_packet(opts))


def test_options_after_eol_are_ignored() -> None:
    p = TcpPacket.parse(dpkt_packet(b"\x02\x04\x05\xb4\x00\x02\x00\x00"))
    assert p.options() == TcpOptions(mss=1460)


# --- precomputed payload sums (refill) ----------------------------------------------

BS = BlockSums.BLOCK


def _congruent(a: int, b: int) -> bool:
    return a % 0xFFFF == b % 0xFFFF


@given(
    st.binary(min_size=0, max_size=5 * BS + 7),
    st.data(),
    st.sampled_from([None, 0, 1, 3, 100]),
)
def test_block_sums_match_ones_sum(data: bytes, draw: st.DataObject, done: int | None) -> None:
    """Any range, odd or even start and length, across block boundaries, with none,
    some or all blocks precomputed: congruent to the full sum."""
    bsums = BlockSums(data)
    if done != 0:
        bsums.precompute(done)
    n = len(data)
    edges = sorted({0, n} | {k * BS + d for k in range(n // BS + 1) for d in (-1, 0, 1)})
    edges = [e for e in edges if 0 <= e <= n]
    a = draw.draw(st.one_of(st.sampled_from(edges), st.integers(0, n)))
    b = draw.draw(st.one_of(st.sampled_from([e for e in edges if e >= a]), st.integers(a, n)))
    got = bsums.range_sum(a, b)
    assert 0 <= got <= 0xFFFE
    assert _congruent(got, ones_sum(data[a:b]))
    s = bsums.summed(a, b)
    assert isinstance(s, Summed) and s == data[a:b] and s.ones == got


def test_block_sums_every_boundary_all_zero_and_ones() -> None:
    for fill in (0x00, 0xFF, 0x5A):
        data = bytes([fill]) * (3 * BS + 5)
        bsums = BlockSums(data)
        bsums.precompute()
        for a in range(0, len(data), BS // 2 - 1):
            for b in (a, a + 1, a + BS - 1, a + BS, a + 2 * BS + 3, len(data)):
                if a <= b <= len(data):
                    assert _congruent(bsums.range_sum(a, b), ones_sum(data[a:b])), (fill, a, b)


def test_block_sums_precompute_in_steps() -> None:
    data = os.urandom(4 * BS + 3)
    bsums = BlockSums(data)
    assert bsums.blocks == 4 and bsums.blocks_done == 0
    assert not bsums.precompute(3) and bsums.blocks_done == 3
    assert bsums.precompute(3) and bsums.blocks_done == 4
    assert bsums.precompute()  # nothing left
    with pytest.raises(ValueError):
        bsums.range_sum(2, len(data) + 1)


@given(st.binary(min_size=0, max_size=3 * BS + 3), st.data())
def test_build_tcp_with_summed_payload_is_identical(data: bytes, draw: st.DataObject) -> None:
    """A `Summed` payload gives the same bytes (both checksums) as a plain one, with
    and without options."""
    bsums = BlockSums(data)
    bsums.precompute(draw.draw(st.integers(0, 4)))
    a = draw.draw(st.integers(0, len(data)))
    b = draw.draw(st.integers(a, len(data)))
    opts = draw.draw(st.sampled_from([b"", encode_options(ts=(123456, 654321))]))
    args = ("10.1.2.3", "10.4.5.6", 40000, 80, 0xFFFFFFF0, 77, ACK | PSH, 513, opts)
    plain = build_tcp(*args, data[a:b])
    assert build_tcp(*args, bsums.summed(a, b)) == plain
    pkt = TcpPacket.parse(plain)
    assert pkt.tcp_checksum_ok() and pkt.ip_checksum_ok()


def test_build_tcp_trusts_the_summed_value() -> None:
    """The sum is taken as given (a wrong one gives a wrong checksum): it must come from
    the same bytes, as `BlockSums.summed` guarantees."""
    data = b"abcdef" * 100
    good = build_tcp("10.0.0.1", "10.0.0.2", 1, 2, 3, 4, ACK, 5, b"", Summed(data, ones_sum(data)))
    assert good == build_tcp("10.0.0.1", "10.0.0.2", 1, 2, 3, 4, ACK, 5, b"", data)
    bad = build_tcp("10.0.0.1", "10.0.0.2", 1, 2, 3, 4, ACK, 5, b"", Summed(data, 1))
    assert not TcpPacket.parse(bad).tcp_checksum_ok()
