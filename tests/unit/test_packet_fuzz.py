"""ftcp.core.packet under hypothesis: checksum arithmetic, rewrite sequences, fuzzing.

The references here (naive word-by-word sum, dpkt) are independent of the
module under test.
"""

from __future__ import annotations

import struct

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcp.core import seq
from ftcp.core.packet import ACK, PacketError, TcpPacket, inet_checksum, ones_sum

u32 = st.integers(0, seq.MASK)
u16 = st.integers(0, 0xFFFF)
# sequence numbers crowd the wrap point and the sign boundary
seqno = st.one_of(
    u32,
    st.integers(seq.MASK - 64, seq.MASK),
    st.integers(0, 64),
    st.integers(seq.HALF - 32, seq.HALF + 32),
)


def naive_sum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    s = initial
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def naive_tcp_csum(pkt: bytes) -> int:
    ihl = (pkt[0] & 0x0F) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    seg = bytearray(pkt[ihl:total])
    seg[16:18] = b"\0\0"
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    return ~naive_sum(pseudo + bytes(seg)) & 0xFFFF


def tcp_csum_field(pkt: bytes) -> int:
    return struct.unpack_from("!H", pkt, (pkt[0] & 0x0F) * 4 + 16)[0]


def pseudo_partial(pkt: bytes) -> bytearray:
    b = bytearray(pkt)
    ihl = (b[0] & 0x0F) * 4
    pseudo = b[12:20] + struct.pack("!BBH", 0, 6, len(b) - ihl)
    struct.pack_into("!H", b, ihl + 16, naive_sum(bytes(pseudo)))
    return b


@st.composite
def tcp_packets(draw: st.DrawFn) -> tuple[bytes, bool, int]:
    """(packet assembled by dpkt, has TS, number of SACK blocks), with options in
    random order behind 0-3 NOPs so TS and SACK edges land on any alignment."""
    elems: list[bytes] = []
    has_ts = draw(st.booleans())
    if has_ts:
        elems.append(struct.pack("!BBII", 8, 10, draw(u32), draw(u32)))
    if draw(st.booleans()):
        elems.append(struct.pack("!BBH", 2, 4, draw(u16)))
    if draw(st.booleans()):
        elems.append(struct.pack("!BBB", 3, 3, draw(st.integers(0, 14))))
    if draw(st.booleans()):
        elems.append(b"\x04\x02")
    if draw(st.booleans()):
        data = draw(st.binary(max_size=4))
        elems.append(bytes((draw(st.sampled_from([30, 34, 253, 254])), 2 + len(data))) + data)
    used = sum(map(len, elems))
    room = (40 - used - 3) // 8
    nblocks = draw(st.integers(0, min(4, room))) if room > 0 else 0
    if nblocks:
        body = b"".join(struct.pack("!II", draw(seqno), draw(seqno)) for _ in range(nblocks))
        elems.append(bytes((5, 2 + len(body))) + body)
    elems = draw(st.permutations(elems))
    raw = b"\x01" * draw(st.integers(0, 3)) + b"".join(elems)
    if len(raw) > 40:
        raw = b"".join(elems)
    raw += draw(st.sampled_from([b"\x00", b"\x01"])) * (-len(raw) % 4)
    assert len(raw) <= 40
    tcp = dpkt.tcp.TCP(
        sport=draw(u16), dport=draw(u16), seq=draw(seqno), ack=draw(seqno),
        flags=draw(st.integers(0, 0xFF)), win=draw(u16), off=(20 + len(raw)) // 4, opts=raw,
        data=draw(st.binary(max_size=64)),
    )  # fmt: skip
    ip = dpkt.ip.IP(src=draw(st.binary(min_size=4, max_size=4)),
                    dst=draw(st.binary(min_size=4, max_size=4)), p=6, data=tcp)  # fmt: skip
    ip.len = 20 + len(tcp)
    return bytes(ip), has_ts, nblocks


ops = st.lists(
    st.one_of(
        st.tuples(st.just("seq"), seqno),
        st.tuples(st.just("ack"), seqno),
        st.tuples(st.just("win"), u16),
        st.tuples(st.just("ts"), st.none() | u32, st.none() | u32),
        st.tuples(st.just("sack"), st.integers(-seq.HALF, seq.HALF)),
    ),
    max_size=12,
)


def apply(p: TcpPacket, op: tuple[object, ...]) -> None:
    match op:
        case ("seq", int(v)):
            p.set_seq(v)
            assert p.seq == v
        case ("ack", int(v)):
            p.set_ack(v)
            assert p.ack == v
        case ("win", int(v)):
            p.set_window(v)
            assert p.window == v
        case ("ts", val, ecr):
            p.set_ts(val, ecr)  # type: ignore[arg-type]
        case ("sack", int(d)):
            p.map_sack(lambda e: seq.add(e, d))
        case _:
            raise AssertionError(op)


# --- checksum arithmetic -------------------------------------------------------------


@given(st.binary(max_size=9000), u16)
def test_ones_sum_matches_naive(data: bytes, initial: int) -> None:
    assert ones_sum(data, initial) == naive_sum(data, initial)
    assert inet_checksum(data, initial) == ~naive_sum(data, initial) & 0xFFFF


# --- rewrites ----------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(tcp_packets(), ops)
def test_incremental_equals_full_after_any_rewrites(
    case: tuple[bytes, bool, int], todo: list[tuple[object, ...]]
) -> None:
    pkt, has_ts, nblocks = case
    assert tcp_csum_field(pkt) == naive_tcp_csum(pkt)
    p = TcpPacket.parse(pkt)
    before = p.options()
    assert p.has_ts == has_ts and len(before.sack_blocks) == nblocks
    for op in todo:
        apply(p, op)
    out = p.finalize()
    assert tcp_csum_field(out) == naive_tcp_csum(out)  # exact, not just equivalent
    after = TcpPacket.parse(out).options()
    # options nobody rewrote are untouched
    assert (after.mss, after.wscale, after.sack_ok, after.unknown) == (
        before.mss, before.wscale, before.sack_ok, before.unknown,
    )  # fmt: skip
    shift = sum(d for op in todo if op[0] == "sack" and isinstance(d := op[1], int))
    assert after.sack_blocks == [
        (seq.add(a, shift), seq.add(b, shift)) for a, b in before.sack_blocks
    ]
    if out != pkt:
        assert p.changed


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(tcp_packets(), ops)
def test_partial_input_finalizes_to_complete(
    case: tuple[bytes, bool, int], todo: list[tuple[object, ...]]
) -> None:
    pkt, _, _ = case
    p = TcpPacket.parse(pseudo_partial(pkt), csum_partial=True)
    for op in todo:
        apply(p, op)
    out = p.finalize()
    assert tcp_csum_field(out) == naive_tcp_csum(out)
    ip = dpkt.ip.IP(out)
    want = ip.data.sum
    ip.sum = 0
    ip.data.sum = 0
    assert dpkt.ip.IP(bytes(ip)).data.sum == want


# --- fuzzing: PacketError and nothing else ---------------------------------------------------


def parse_or_packet_error(data: bytes) -> None:
    try:
        p = TcpPacket.parse(data)
    except PacketError:
        return
    # whatever parses must be usable without surprises
    ok = p.tcp_checksum_ok()
    p.options()
    bytes(p.payload)
    repr(p)
    p.set_ack(seq.add(p.ack, 1))
    p.set_ts(1, 2)
    p.map_sack(lambda e: seq.add(e, 5))
    out = p.finalize()
    assert p.tcp_checksum_ok() == ok  # a right checksum stays right, a wrong one wrong
    assert (tcp_csum_field(out) == naive_tcp_csum(out)) == ok


@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    parse_or_packet_error(data)


@st.composite
def ipv4_tcp_shaped(draw: st.DrawFn) -> bytes:
    """Random bytes that get past the cheap checks, so the deep ones are exercised."""
    opts = draw(st.binary(max_size=40))
    opts += b"\x00" * (-len(opts) % 4)
    payload = draw(st.binary(max_size=16))
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, (20 + len(opts)) // 4 << 4, ACK, 5, 0, 0)
    total = 20 + len(tcp) + len(opts) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, b"abcd", b"efgh")
    return ip + tcp + opts + payload


@given(ipv4_tcp_shaped())
def test_fuzz_random_options(data: bytes) -> None:
    parse_or_packet_error(data)


@given(
    tcp_packets(),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
    st.binary(max_size=8),
)
def test_fuzz_mutated_valid_packets(
    case: tuple[bytes, bool, int], flips: list[tuple[int, int]], cut: int, junk: bytes
) -> None:
    pkt = bytearray(case[0])
    for off, val in flips:
        if off < len(pkt):
            pkt[off] = val
    parse_or_packet_error(bytes(pkt))
    parse_or_packet_error(bytes(pkt[:cut]))
    parse_or_packet_error(bytes(pkt[:cut]) + junk + bytes(pkt[cut:]))
    parse_or_packet_error(bytes(pkt) + junk)
