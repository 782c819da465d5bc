"""Minimal private IPv4/TCP helpers for the SSW I/O tests (not the project's packet module).

The checksum uses the big-integer trick: since 2**16 ≡ 1 (mod 0xffff), the
ones-complement sum of 16-bit words equals the whole buffer read as one big
integer modulo 0xffff (with 0 standing for 0xffff). That runs in C inside
CPython, so a 64 KB super-packet costs tens of microseconds, not milliseconds.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones-complement sum of `data` as 16-bit big-endian words (odd length zero-padded)."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    s = n % 0xFFFF
    return 0xFFFF if s == 0 and n else s


def checksum(data: bytes | bytearray | memoryview) -> int:
    return ~ones_sum(data) & 0xFFFF


class Tcp(NamedTuple):
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    ihl: int  # IP header length in bytes
    doff: int  # TCP header length in bytes
    payload_len: int


def parse(pkt: bytes | bytearray | memoryview) -> Tcp:
    ihl = (pkt[0] & 0x0F) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    sport, dport, seq, ack, off, flags, win, _, _ = _TCP.unpack_from(pkt, ihl)
    doff = (off >> 4) * 4
    return Tcp(
        socket.inet_ntoa(bytes(pkt[12:16])),
        socket.inet_ntoa(bytes(pkt[16:20])),
        sport, dport, seq, ack, flags, win, ihl, doff,
        total - ihl - doff,
    )  # fmt: skip


def tcp_checksum(pkt: bytes | bytearray | memoryview) -> int:
    """The full TCP checksum of an IPv4 packet (computed with the checksum field as it is)."""
    ihl = (pkt[0] & 0x0F) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    seg_len = total - ihl
    pseudo = bytes(pkt[12:20]) + struct.pack("!BBH", 0, 6, seg_len)
    return checksum(pseudo + bytes(pkt[ihl:total]))


def fix_tcp_checksum(pkt: bytearray) -> None:
    ihl = (pkt[0] & 0x0F) * 4
    pkt[ihl + 16 : ihl + 18] = b"\0\0"
    struct.pack_into("!H", pkt, ihl + 16, tcp_checksum(pkt))


def tcp_checksum_ok(pkt: bytes | bytearray | memoryview) -> bool:
    return tcp_checksum(pkt) == 0


def set_window(pkt: bytearray, window: int) -> None:
    """Rewrite the TCP window field and recompute the TCP checksum in full."""
    ihl = (pkt[0] & 0x0F) * 4
    struct.pack_into("!H", pkt, ihl + 14, window)
    fix_tcp_checksum(pkt)


def build(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    window: int = 65535,
    options: bytes = b"",
    payload: bytes = b"",
    ttl: int = 64,
    ident: int = 1,
) -> bytes:
    """A complete IPv4/TCP packet with correct IP and TCP checksums."""
    if len(options) % 4:
        options += b"\x01" * (4 - len(options) % 4)  # NOP padding
    doff = 20 + len(options)
    total = 20 + doff + len(payload)
    ip = bytearray(
        _IP.pack(0x45, 0, total, ident, 0x4000, ttl, 6, 0, socket.inet_aton(src),
                 socket.inet_aton(dst))
    )  # fmt: skip
    struct.pack_into("!H", ip, 10, checksum(ip))
    tcp = _TCP.pack(sport, dport, seq, ack, (doff // 4) << 4, flags, window, 0, 0) + options
    pkt = bytearray(ip + tcp + payload)
    fix_tcp_checksum(pkt)
    return bytes(pkt)


def mss_option(mss: int) -> bytes:
    return struct.pack("!BBH", 2, 4, mss)
