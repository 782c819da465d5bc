"""IPv4/TCP packet views: parse, options, in-place rewrite, checksums (sans-IO).

Two views of a packet, after smoltcp's `wire` module:

* `TcpPacket` is a length-checked view over a `bytearray` holding one whole
  IPv4 packet. `TcpPacket.parse` validates every length once (IP header, TCP
  header, option lengths) and unpacks the fixed fields; everything else —
  options, payload — is read on demand. Rewrites (`set_seq`, `set_ack`,
  `set_window`, `set_ts`, `map_sack`) change the bytes in place and keep the
  TCP checksum right incrementally (RFC 1624) when the input checksum is
  complete, so a corrupt segment stays corrupt and the receiver still drops it.
* `TcpOptions` is the parsed representation of the options, built only when
  asked for (`TcpPacket.options()`); `encode_options` is its emitter.

Checksum states. A packet read from NFQUEUE with `NFQA_CFG_F_GSO` carries only
the pseudo-header sum in its TCP checksum field (`CHECKSUM_PARTIAL`): parse it
with `csum_partial=True`. Rewrites of such a packet do no checksum arithmetic;
`finalize()` computes the whole checksum from scratch. A complete packet that
was only rewritten through the `set_*` methods is finalized with no extra work.

Super-segments (GSO/GRO) up to the 64 KB IPv4 limit are ordinary packets here:
nothing assumes one MSS per segment.

Sequence numbers are compared and moved only through `ftcp.core.seq`.
Malformed input raises `PacketError` (a `RemoteProtocolError`), never
`IndexError` or `struct.error`. Bad arguments from ftcp's own code (a window
above 65535, a sequence number out of range) raise `ValueError`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ftcp.core import seq
from ftcp.errors import RemoteProtocolError

__all__ = [
    "FIN",
    "SYN",
    "RST",
    "PSH",
    "ACK",
    "BlockSums",
    "Summed",
    "URG",
    "ECE",
    "CWR",
    "OPT_EOL",
    "OPT_NOP",
    "OPT_MSS",
    "OPT_WSCALE",
    "OPT_SACK_OK",
    "OPT_SACK",
    "OPT_TS",
    "PacketError",
    "TcpOptions",
    "TcpPacket",
    "build_tcp",
    "csum_update",
    "encode_options",
    "flags_str",
    "inet_checksum",
    "ip_checksum",
    "ones_sum",
    "pseudo_header_sum",
]

# --- TCP flags (byte 13 of the TCP header) -----------------------------------

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

_FLAG_LETTERS = (
    (FIN, "F"),
    (SYN, "S"),
    (RST, "R"),
    (PSH, "P"),
    (ACK, "A"),
    (URG, "U"),
    (ECE, "E"),
    (CWR, "C"),
)


def flags_str(flags: int) -> str:
    """Flags as letters in tcpdump/scapy order `FSRPAUEC`: SYN|ACK -> "SA", none -> ""."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)


# --- TCP option kinds ---------------------------------------------------------

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_OK = 4
OPT_SACK = 5
OPT_TS = 8

# Known options whose length is fixed: a different length is malformed.
_FIXED_OPT_LEN = {OPT_MSS: 4, OPT_WSCALE: 3, OPT_SACK_OK: 2, OPT_TS: 10}

MAX_OPTIONS_LEN = 40
_LINUX_TS_PREFIX = 0x0101080A  # NOP NOP TS(len 10): the layout Linux puts on every segment


class PacketError(RemoteProtocolError):
    """A packet that is not a well-formed, unfragmented IPv4/TCP packet."""


# --- precompiled layouts --------------------------------------------------------

# version/IHL, TOS, total length, id, flags/fragment offset, TTL, protocol,
# header checksum, source, destination
_IP = struct.Struct("!BBHHHBBH4s4s")
# source port, destination port, seq, ack, data offset, flags, window, checksum, urgent
_TCP = struct.Struct("!HHIIBBHHH")
_IP_TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")  # both, for IHL == 5 (the usual case)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_PSEUDO = struct.Struct("!4s4sBBH")

_IP_MF = 0x2000
_IP_DF = 0x4000
_IP_OFFMASK = 0x1FFF
_PROTO_TCP = 6

# Offsets inside the TCP header.
_TH_SEQ = 4
_TH_ACK = 8
_TH_WIN = 14
_TH_SUM = 16


# --- checksums ------------------------------------------------------------------

_CHUNK = 4096  # int.from_bytes per chunk, then add: ~2x faster than one huge modulo


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """16-bit ones'-complement sum of `data` (odd length padded with a zero byte)
    plus `initial`, folded to [0, 0xFFFF] (0 only when everything is zero).

    The sum of big-endian 16-bit words is congruent to `int.from_bytes(data)`
    modulo 0xFFFF (since 2**16 == 1 mod 0xFFFF), so the work runs in C.
    """
    n = len(data)
    if n <= _CHUNK:
        v = int.from_bytes(data, "big")
        if n & 1:
            v <<= 8  # pad the odd byte on the right
    else:
        # Every chunk but the tail has even length, so after padding its place
        # value is 2**(16k) == 1 (mod 0xFFFF): the chunk values just add up.
        mv = memoryview(data)
        last = n - (n % _CHUNK or _CHUNK)
        v = 0
        for i in range(0, last, _CHUNK):
            v += int.from_bytes(mv[i : i + _CHUNK], "big")
        t = int.from_bytes(mv[last:], "big")
        v += t << 8 if (n - last) & 1 else t
    v += initial
    r = v % 0xFFFF
    if r == 0 and v:
        return 0xFFFF  # a non-zero sum folds to 0xFFFF, never to 0
    return r


def inet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of `data`: the complement of `ones_sum`.

    `initial` is an uncomplemented partial sum (e.g. `pseudo_header_sum`). A
    buffer that includes a correct checksum field gives 0.
    """
    return ~ones_sum(data, initial) & 0xFFFF


def csum_update(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for a field at an even offset.

    `old` and `new` are the field's big-endian values; any even number of bytes
    works (2**16 == 1 mod 0xFFFF), so a 32-bit field is one call. For a field
    at an odd offset pass both values multiplied by 256. The result equals a
    full recomputation exactly (both lie in [0, 0xFFFE]) when `csum` was right.
    """
    return (csum + old - new) % 0xFFFF


class Summed(bytes):
    """Payload bytes that carry `ones`, a value congruent to `ones_sum(self)` modulo
    0xFFFF (see `BlockSums`): `build_tcp` then folds only the headers."""

    ones: int

    def __new__(cls, data: bytes | bytearray | memoryview, ones: int) -> Summed:
        obj = super().__new__(cls, data)
        obj.ones = ones
        return obj


class BlockSums:
    """Ones'-complement sums of any range of a fixed buffer, from per-block partial sums.

    The checksum of a refill segment is dominated by its payload; the payloads are
    ranges of one logged instream cut wherever the window falls. The sum of the
    blocks (`BLOCK` bytes, at even offsets) is computed once (`precompute`, while the
    application starts, or on first use), so a range costs its two partial end blocks.

    With `G(a, b)` the sum of `data[a:b]` taken with the buffer's own word alignment
    (bytes at even offsets are high bytes), `G` adds over adjacent ranges, and the sum
    of the range as a payload of its own (starting a word) is `G` when `a` is even and
    `256 * G` (the bytes swapped) when odd, all modulo 0xFFFF (2**16 == 1).
    """

    BLOCK = 2 * _CHUNK  # even; a block's two chunks are added before one modulo

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._mv = memoryview(data).cast("B")
        self._n = len(self._mv)
        self._pref = [0]  # _pref[k] = G(0, k * BLOCK) % 0xFFFF

    @property
    def blocks_done(self) -> int:
        return len(self._pref) - 1

    @property
    def blocks(self) -> int:
        return self._n // self.BLOCK

    def precompute(self, max_blocks: int | None = None, upto: int | None = None) -> bool:
        """Sum up to `max_blocks` more whole blocks (None: all), only of the first `upto`
        bytes (None: the whole buffer; the rest is still being written); True when every
        block of those is done."""
        last = self.blocks if upto is None else min(self.blocks, upto // self.BLOCK)
        todo = max(0, last - self.blocks_done)
        if max_blocks is not None:
            todo = min(todo, max_blocks)
        self._extend(self.blocks_done + todo)
        return self.blocks_done >= last

    def _extend(self, k: int) -> None:
        pref, mv, bs, h = self._pref, self._mv, self.BLOCK, _CHUNK
        v = pref[-1]
        for a in range((len(pref) - 1) * bs, k * bs, bs):
            # both halves end at even offsets: their values add up (2**16 == 1)
            v += int.from_bytes(mv[a : a + h], "big") + int.from_bytes(mv[a + h : a + bs], "big")
            v %= 0xFFFF
            pref.append(v)

    def _direct(self, a: int, b: int) -> int:
        """`G(a, b)` summed from the bytes (the range ends at `b`: an odd `b` shifts)."""
        v = int.from_bytes(self._mv[a:b], "big")
        return v << 8 if b & 1 else v

    def range_sum(self, a: int, b: int) -> int:
        """A value in [0, 0xFFFE] congruent to `ones_sum(data[a:b])` modulo 0xFFFF."""
        if not 0 <= a <= b <= self._n:
            raise ValueError(f"range [{a}, {b}) outside [0, {self._n})")
        bs = self.BLOCK
        ka = -(-a // bs)
        kb = b // bs
        if kb - ka < 2 or kb > self.blocks_done:
            # not summed yet: summing the blocks first would cost more than the range
            return ones_sum(self._mv[a:b]) % 0xFFFF
        g = self._direct(a, ka * bs) + self._pref[kb] - self._pref[ka]
        g += self._direct(kb * bs, b)
        if a & 1:
            g <<= 8
        return g % 0xFFFF

    def summed(self, a: int, b: int) -> Summed:
        """`data[a:b]` carrying its sum."""
        return Summed(self._mv[a:b], self.range_sum(a, b))


def pseudo_header_sum(src: bytes, dst: bytes, tcp_len: int, proto: int = _PROTO_TCP) -> int:
    """Uncomplemented ones'-complement sum of the IPv4 pseudo-header."""
    return ones_sum(_PSEUDO.pack(src, dst, 0, proto, tcp_len))


def ip_checksum(header: bytes | bytearray | memoryview) -> int:
    """IPv4 header checksum of `header` (its checksum field must hold zero)."""
    return inet_checksum(header)


# --- options ----------------------------------------------------------------------


@dataclass(slots=True)
class TcpOptions:
    """Parsed TCP options (None / empty when absent). Built on demand only.

    A known option that appears twice is taken from its last occurrence, as
    Linux does; unknown options are kept, in order, as (kind, data).
    """

    mss: int | None = None
    wscale: int | None = None
    sack_ok: bool = False
    ts_val: int | None = None
    ts_ecr: int | None = None
    sack_blocks: list[tuple[int, int]] = field(default_factory=list)
    unknown: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def ts(self) -> tuple[int, int] | None:
        """(TSval, TSecr), or None without a timestamp option."""
        if self.ts_val is None or self.ts_ecr is None:
            return None
        return (self.ts_val, self.ts_ecr)


def _walk_options(buf: bytearray, start: int, end: int) -> tuple[int, int, int]:
    """Validate the options in `buf[start:end]`.

    Returns (offset of the last TS option or -1, offset of the last SACK
    option or -1, that SACK option's length).
    """
    ts = -1
    sack = -1
    sack_len = 0
    i = start
    while i < end:
        kind = buf[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise PacketError(f"TCP option kind {kind} truncated: no length byte")
        ln = buf[i + 1]
        if ln < 2:
            raise PacketError(f"TCP option kind {kind} has invalid length {ln}")
        if i + ln > end:
            raise PacketError(
                f"TCP option kind {kind} length {ln} runs past the header ({end - i} bytes left)"
            )
        want = _FIXED_OPT_LEN.get(kind)
        if want is not None:
            if ln != want:
                raise PacketError(f"TCP option kind {kind} has length {ln}, expected {want}")
            if kind == OPT_TS:
                ts = i
        elif kind == OPT_SACK:
            if ln < 10 or (ln - 2) % 8:
                raise PacketError(f"TCP SACK option has length {ln}, expected 2 + 8n (n >= 1)")
            sack = i
            sack_len = ln
        i += ln
    return ts, sack, sack_len


def _parse_options(buf: bytearray, start: int, end: int) -> TcpOptions:
    """Options of an already validated header."""
    o = TcpOptions()
    i = start
    while i < end:
        kind = buf[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        ln = buf[i + 1]
        if kind == OPT_MSS:
            o.mss = _U16.unpack_from(buf, i + 2)[0]
        elif kind == OPT_WSCALE:
            o.wscale = buf[i + 2]
        elif kind == OPT_SACK_OK:
            o.sack_ok = True
        elif kind == OPT_TS:
            o.ts_val, o.ts_ecr = _U32X2.unpack_from(buf, i + 2)
        elif kind == OPT_SACK:
            o.sack_blocks = [_U32X2.unpack_from(buf, j) for j in range(i + 2, i + ln, 8)]
        else:
            o.unknown.append((kind, bytes(buf[i + 2 : i + ln])))
        i += ln
    return o


def encode_options(
    mss: int | None = None,
    wscale: int | None = None,
    sack_ok: bool = False,
    ts: tuple[int, int] | None = None,
    sack_blocks: Iterable[tuple[int, int]] = (),
) -> bytes:
    """TCP options in Linux's layout (`tcp_options_write`), NOP-padded to 4 bytes.

    Order: MSS; SACK-permitted + TS (or NOP NOP TS, or NOP NOP SACK-permitted);
    NOP WS; NOP NOP SACK blocks. Raises ValueError on out-of-range values or
    when the result would exceed 40 bytes.
    """
    out = bytearray()
    if mss is not None:
        if not 0 <= mss <= 0xFFFF:
            raise ValueError(f"MSS out of range: {mss!r}")
        out += struct.pack("!BBH", OPT_MSS, 4, mss)
    if ts is not None:
        ts_val, ts_ecr = ts
        seq.check(ts_val)
        seq.check(ts_ecr)
        if sack_ok:
            out += bytes((OPT_SACK_OK, 2, OPT_TS, 10))
        else:
            out += bytes((OPT_NOP, OPT_NOP, OPT_TS, 10))
        out += _U32X2.pack(ts_val, ts_ecr)
    elif sack_ok:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_OK, 2))
    if wscale is not None:
        if not 0 <= wscale <= 14:
            raise ValueError(f"window scale out of range: {wscale!r}")
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    blocks = list(sack_blocks)
    if blocks:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)))
        for left, right in blocks:
            out += _U32X2.pack(seq.check(left), seq.check(right))
    if len(out) > MAX_OPTIONS_LEN:
        raise ValueError(f"TCP options too long: {len(out)} bytes > {MAX_OPTIONS_LEN}")
    return bytes(out)


# --- the view ---------------------------------------------------------------------


def _ip_str(a: bytes) -> str:
    return f"{a[0]}.{a[1]}.{a[2]}.{a[3]}"


class TcpPacket:
    """Length-checked view over a bytearray holding one IPv4/TCP packet.

    Fixed fields are unpacked once by `parse` and read through properties;
    change them only with the `set_*` methods, which keep the bytes, the
    fields and the checksum in step. `buf` may be longer than the packet:
    `total_len` bytes count. Editing `buf` directly is allowed only when
    followed by `mark_dirty()` (the next `finalize` then recomputes).
    """

    __slots__ = (
        "buf",
        "_total_len",
        "_ip_hl",
        "_tcp_off",
        "_tcp_hl",
        "_src",
        "_dst",
        "_sport",
        "_dport",
        "_seq",
        "_ack",
        "_flags",
        "_window",
        "_ts_off",
        "_sack_off",
        "_sack_len",
        "_need_full",
        "_partial",
        "changed",
    )

    buf: bytearray
    changed: bool

    # -- parsing --

    @classmethod
    def parse(
        cls, buf: bytes | bytearray | memoryview, csum_partial: bool = False, copy: bool = True
    ) -> TcpPacket:
        """Validate `buf` as an unfragmented IPv4/TCP packet and return a view on it.

        A `bytearray` is used in place (rewrites change it); anything else is
        copied, unless `copy=False`: then the view reads `buf` where it is and is
        read-only (a `set_*` raises; re-parse a `bytearray` copy to rewrite).
        `csum_partial=True` says the TCP checksum field holds only the
        pseudo-header sum (NFQUEUE with F_GSO).
        """
        if copy and type(buf) is not bytearray:
            buf = bytearray(buf)
        n = len(buf)
        if n < 20:
            raise PacketError(f"truncated IPv4 header: {n} bytes")
        vihl = buf[0]
        if vihl >> 4 != 4:
            raise PacketError(f"not IPv4: version {vihl >> 4}")
        ip_hl = (vihl & 0x0F) << 2
        if ip_hl < 20:
            raise PacketError(f"bad IPv4 header length {ip_hl}")
        if ip_hl == 20 and n >= 40:  # the usual case: both headers in one unpack
            # fmt: off
            (_, _, total, _, frag, _, proto, _, src, dst,
             sport, dport, sq, ak, off, flags, win, _, _) = _IP_TCP.unpack_from(buf, 0)
            # fmt: on
        else:
            _, _, total, _, frag, _, proto, _, src, dst = _IP.unpack_from(buf, 0)
            sport = dport = sq = ak = off = flags = win = 0
        if total > n:
            raise PacketError(f"IPv4 total length {total} exceeds the {n} bytes received")
        if total < ip_hl:
            raise PacketError(f"IPv4 total length {total} < header length {ip_hl}")
        if proto != _PROTO_TCP:
            raise PacketError(f"not TCP: IP protocol {proto}")
        if frag & (_IP_MF | _IP_OFFMASK):
            raise PacketError("fragmented IPv4 packet")
        if total < ip_hl + 20:
            raise PacketError(f"truncated TCP header: {total - ip_hl} bytes")
        if ip_hl != 20 or n < 40:
            sport, dport, sq, ak, off, flags, win, _, _ = _TCP.unpack_from(buf, ip_hl)
        tcp_hl = (off >> 4) << 2
        if tcp_hl < 20:
            raise PacketError(f"bad TCP data offset {tcp_hl}")
        if ip_hl + tcp_hl > total:
            raise PacketError(
                f"TCP header length {tcp_hl} exceeds the {total - ip_hl} bytes of segment"
            )
        ts_off = sack_off = -1
        sack_len = 0
        if tcp_hl > 20:
            o = ip_hl + 20
            if tcp_hl == 32 and _U32.unpack_from(buf, o)[0] == _LINUX_TS_PREFIX:
                ts_off = o + 2  # the usual data segment: NOP NOP TS
            else:
                ts_off, sack_off, sack_len = _walk_options(buf, o, ip_hl + tcp_hl)
        self = object.__new__(cls)
        self.buf = buf
        self._total_len = total
        self._ip_hl = ip_hl
        self._tcp_off = ip_hl
        self._tcp_hl = tcp_hl
        self._src = src
        self._dst = dst
        self._sport = sport
        self._dport = dport
        self._seq = sq
        self._ack = ak
        self._flags = flags
        self._window = win
        self._ts_off = ts_off
        self._sack_off = sack_off
        self._sack_len = sack_len
        self._need_full = csum_partial
        self._partial = csum_partial
        self.changed = False
        return self

    # -- fields --

    @property
    def src(self) -> bytes:
        """Source address, 4 bytes."""
        return self._src

    @property
    def dst(self) -> bytes:
        """Destination address, 4 bytes."""
        return self._dst

    @property
    def src_ip(self) -> str:
        return _ip_str(self._src)

    @property
    def dst_ip(self) -> str:
        return _ip_str(self._dst)

    @property
    def sport(self) -> int:
        return self._sport

    @property
    def dport(self) -> int:
        return self._dport

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def ack(self) -> int:
        return self._ack

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def window(self) -> int:
        """Raw window field (not scaled)."""
        return self._window

    @property
    def total_len(self) -> int:
        """IPv4 total length: the packet is `buf[:total_len]`."""
        return self._total_len

    @property
    def ip_hl(self) -> int:
        return self._ip_hl

    @property
    def tcp_off(self) -> int:
        """Offset of the TCP header in `buf`."""
        return self._tcp_off

    @property
    def tcp_hl(self) -> int:
        return self._tcp_hl

    @property
    def payload_off(self) -> int:
        return self._tcp_off + self._tcp_hl

    @property
    def payload_len(self) -> int:
        return self._total_len - self._tcp_off - self._tcp_hl

    @property
    def payload(self) -> memoryview:
        """The payload, a memoryview into `buf` (no copy)."""
        return memoryview(self.buf)[self._tcp_off + self._tcp_hl : self._total_len]

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        return (
            self._total_len
            - self._tcp_off
            - self._tcp_hl
            + (self._flags & SYN) // SYN
            + (self._flags & FIN)
        )

    @property
    def end_seq(self) -> int:
        """`seq + seg_len`: the sequence number right after this segment."""
        return seq.add(self._seq, self.seg_len)

    @property
    def checksum(self) -> int:
        """The TCP checksum field as it is now."""
        return _U16.unpack_from(self.buf, self._tcp_off + _TH_SUM)[0]

    @property
    def csum_partial(self) -> bool:
        """The packet was received with a pseudo-header-only checksum and not yet finalized."""
        return self._partial

    @property
    def has_ts(self) -> bool:
        return self._ts_off >= 0

    @property
    def has_sack(self) -> bool:
        return self._sack_off >= 0

    def options(self) -> TcpOptions:
        """Parse the options now (they were validated by `parse`)."""
        o = self._tcp_off + 20
        return _parse_options(self.buf, o, self._tcp_off + self._tcp_hl)

    def ts(self) -> tuple[int, int] | None:
        """(TSval, TSecr) read straight from the buffer, or None."""
        if self._ts_off < 0:
            return None
        vals: tuple[int, int] = _U32X2.unpack_from(self.buf, self._ts_off + 2)
        return vals

    # -- rewriting --

    def _put32(self, off: int, new: int) -> bool:
        """Write a 32-bit value at `buf[off]`, adjusting the checksum; False if unchanged."""
        buf = self.buf
        old = _U32.unpack_from(buf, off)[0]
        if old == new:
            return False
        _U32.pack_into(buf, off, new)
        self.changed = True
        if not self._need_full:
            rel = off - self._tcp_off
            c = self._tcp_off + _TH_SUM
            if rel & 1:  # odd offset inside the segment: bytes sit in swapped word halves
                old <<= 8
                new <<= 8
            _U16.pack_into(buf, c, (_U16.unpack_from(buf, c)[0] + old - new) % 0xFFFF)
        return True

    def set_seq(self, v: int) -> None:
        if not 0 <= v <= seq.MASK:
            raise ValueError(f"sequence number out of range: {v!r}")
        if self._put32(self._tcp_off + _TH_SEQ, v):
            self._seq = v

    def set_ack(self, v: int) -> None:
        if not 0 <= v <= seq.MASK:
            raise ValueError(f"ack number out of range: {v!r}")
        if self._put32(self._tcp_off + _TH_ACK, v):
            self._ack = v

    def set_window(self, v: int) -> None:
        """Set the raw (unscaled) window field."""
        if not 0 <= v <= 0xFFFF:
            raise ValueError(f"window out of range: {v!r}")
        old = self._window
        if old == v:
            return
        buf = self.buf
        _U16.pack_into(buf, self._tcp_off + _TH_WIN, v)
        self._window = v
        self.changed = True
        if not self._need_full:
            c = self._tcp_off + _TH_SUM
            _U16.pack_into(buf, c, (_U16.unpack_from(buf, c)[0] + old - v) % 0xFFFF)

    def set_ts(self, ts_val: int | None = None, ts_ecr: int | None = None) -> bool:
        """Rewrite TSval and/or TSecr in place; False when there is no timestamp option."""
        t = self._ts_off
        if t < 0:
            return False
        if ts_val is not None:
            if not 0 <= ts_val <= seq.MASK:
                raise ValueError(f"TSval out of range: {ts_val!r}")
            self._put32(t + 2, ts_val)
        if ts_ecr is not None:
            if not 0 <= ts_ecr <= seq.MASK:
                raise ValueError(f"TSecr out of range: {ts_ecr!r}")
            self._put32(t + 6, ts_ecr)
        return True

    def map_sack(self, fn: Callable[[int], int]) -> int:
        """Replace every SACK block edge `e` with `fn(e)` in place; return the block count.

        `fn` is typically `lambda e: seq.add(e, -delta)`; its results must be
        32-bit values.
        """
        s = self._sack_off
        if s < 0:
            return 0
        end = s + self._sack_len
        for off in range(s + 2, end, 4):
            new = fn(_U32.unpack_from(self.buf, off)[0])
            if not 0 <= new <= seq.MASK:
                raise ValueError(f"SACK edge out of range: {new!r}")
            self._put32(off, new)
        return (end - s - 2) >> 3

    def mark_dirty(self) -> None:
        """Declare that `buf` was edited directly: `finalize` will recompute in full."""
        self.changed = True
        self._need_full = True

    def set_checksum_full(self) -> None:
        """Compute the TCP checksum from scratch (pseudo-header + header + payload)."""
        buf = self.buf
        t = self._tcp_off
        end = self._total_len
        c = t + _TH_SUM
        buf[c] = 0
        buf[c + 1] = 0
        init = pseudo_header_sum(self._src, self._dst, end - t)
        _U16.pack_into(buf, c, inet_checksum(memoryview(buf)[t:end], init))
        self._need_full = False
        self._partial = False

    def tcp_checksum_ok(self) -> bool:
        """The TCP checksum field is complete and right (False for a partial one)."""
        t = self._tcp_off
        end = self._total_len
        init = pseudo_header_sum(self._src, self._dst, end - t)
        return inet_checksum(memoryview(self.buf)[t:end], init) == 0

    def ip_checksum_ok(self) -> bool:
        return inet_checksum(memoryview(self.buf)[: self._ip_hl]) == 0

    def set_ip_checksum(self) -> None:
        """Recompute the IPv4 header checksum (after editing IP fields in `buf`)."""
        buf = self.buf
        buf[10] = 0
        buf[11] = 0
        _U16.pack_into(buf, 10, ip_checksum(memoryview(buf)[: self._ip_hl]))

    def finalize(self) -> bytes:
        """The packet (`total_len` bytes) with a complete, correct TCP checksum.

        Full recomputation when the input checksum was partial or `buf` was
        edited directly; otherwise the incremental updates already made it right.
        """
        if self._need_full:
            self.set_checksum_full()
        buf = self.buf
        if len(buf) == self._total_len:
            return bytes(buf)
        return bytes(memoryview(buf)[: self._total_len])

    def __repr__(self) -> str:
        return (
            f"TcpPacket({self.src_ip}:{self._sport} > {self.dst_ip}:{self._dport} "
            f"{flags_str(self._flags) or '.'} seq={self._seq} ack={self._ack} "
            f"win={self._window} len={self.payload_len}"
            f"{' csum=partial' if self._partial else ''})"
        )


# --- building -----------------------------------------------------------------------


def _addr(a: bytes | str) -> bytes:
    if isinstance(a, str):
        return ipaddress.IPv4Address(a).packed
    if len(a) != 4:
        raise ValueError(f"IPv4 address must be 4 bytes, got {len(a)}")
    return bytes(a)


def build_tcp(
    src: bytes | str,
    dst: bytes | str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes = b"",
    payload: bytes = b"",
    ttl: int = 64,
    ip_id: int = 0,
) -> bytes:
    """A complete IPv4/TCP packet (DF set) with correct IP and TCP checksums.

    `options` must be a multiple of 4 bytes, at most 40 (see `encode_options`). A
    `Summed` payload's sum is taken as given (only the headers are summed).
    """
    s = _addr(src)
    d = _addr(dst)
    olen = len(options)
    if olen % 4 or olen > MAX_OPTIONS_LEN:
        raise ValueError(f"TCP options must be a multiple of 4 bytes, <= 40: got {olen}")
    tcp_len = 20 + olen + len(payload)
    total = 20 + tcp_len
    if total > 0xFFFF:
        raise ValueError(f"packet too long for IPv4: {total} bytes")
    for name, v, hi in (
        ("port", sport, 0xFFFF),
        ("port", dport, 0xFFFF),
        ("seq", seq, 0xFFFFFFFF),
        ("ack", ack, 0xFFFFFFFF),
        ("flags", flags, 0xFF),
        ("window", window, 0xFFFF),
        ("ttl", ttl, 0xFF),
        ("ip_id", ip_id, 0xFFFF),
    ):
        if not 0 <= v <= hi:
            raise ValueError(f"{name} out of range: {v!r}")
    buf = bytearray(total)
    _IP_TCP.pack_into(
        buf,
        0,
        0x45,
        0,
        total,
        ip_id,
        _IP_DF,
        ttl,
        _PROTO_TCP,
        0,
        s,
        d,
        sport,
        dport,
        seq,
        ack,
        (5 + olen // 4) << 4,
        flags,
        window,
        0,
        0,
    )
    buf[40 : 40 + olen] = options
    buf[40 + olen :] = payload
    pseudo = pseudo_header_sum(s, d, tcp_len)
    ones = getattr(payload, "ones", None)  # `Summed`: fold the headers only
    if ones is None:
        csum = inet_checksum(memoryview(buf)[20:], pseudo)
    else:
        csum = inet_checksum(memoryview(buf)[20 : 40 + olen], pseudo + ones)
    _U16.pack_into(buf, 36, csum)
    _U16.pack_into(buf, 10, ip_checksum(memoryview(buf)[:20]))
    return bytes(buf)
