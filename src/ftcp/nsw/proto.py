"""The NSW shim <-> agent protocol: fixed-size little-endian structs.

The shim (`shim.c`, preloaded into the application) connects to the agent's
Unix ``SOCK_SEQPACKET`` socket (path in ``FTCP_NSW_SOCK``) lazily, at the
first protected accept (or in a forked child that inherited protected fds).
One connection is one *session* (one process). Every message is one packet
and starts with an 8-byte header::

    hdr       u16 type, u16 flags, u32 pad                                   8 B

Shim -> agent (``F_REPLAYED`` = 1 is the only flag)::

    HELLO     u32 version, u32 pid, u64 parent_session                      24 B
              -> HELLO_REPLY, with a memfd (the shared page) in SCM_RIGHTS
    ACCEPT    u16 family, u16 lport, u16 rport, u16 pad,
              u8 laddr[16], u8 raddr[16]                                     48 B
              with the accepted socket in SCM_RIGHTS (the agent keeps it)
              -> ACCEPT_REPLY (+ SCRIPT packets when mode is REPLAY)
    READ      u64 conn_id, u64 seq, u64 wtotal, u32 kind, u32 value,
              u32 wcrc, u32 pad                                              48 B
              one per read-family result; pipelined (no reply). Live reads
              carry seq = 1, 2, ... per session (the output-commit counter);
              replayed reads carry F_REPLAYED and seq = script index; one is
              sent only when the output moved since the last one sent (what
              the agent checks is the output so far).
              value = length (DATA) or errno (ERROR). wtotal/wcrc = the
              connection's output so far (bytes written, CRC-32C).
    WRITEMARK u64 conn_id, u64 total, u32 crc, u32 reason                    32 B
              reason: DISCARD_END (replay output reached A), REPLAY_DONE
    CLOSE     u64 conn_id, u64 wtotal, u32 how, u32 wcrc                     32 B
              synchronous: the shim waits for ACK before the real call.
              how: SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2, CLOSE 3 (the last fd of
              this process; a dup closing is not reported)
    FORK      u64 0                                                          16 B
              the process is about to fork while holding protected fds
    HOLD      u64 conn_id                                                    16 B
              a forked child's first words: it holds conn_id too
    FORKED    u32 pid, u32 count, then count x u64 conn_id               16+8n B
              sent by the parent, right after fork() returned, with a pidfd
              of the child in SCM_RIGHTS when it has one: child `pid` holds
              these connections (at most FORKED_CHUNK per packet; several
              packets for the same pid add up).  The child says HELLO only
              after the parent sent FORKED (or died), so the agent learns of
              the child, in order, before any later close by the parent.
    MISMATCH  u64 conn_id, u64 index, u32 code, u32 value                    32 B
              replay could not reproduce script entry `index`

Agent -> shim::

    HELLO_REPLY  u64 session_id, u32 version, u32 pad                       24 B
    ACCEPT_REPLY u64 conn_id, u64 discard, u32 mode, u32 n_reads            32 B
    SCRIPT       u32 count, u32 pad, then count x (u32 kind, u32 value)    16+8n B
                 n_reads entries in total, at most SCRIPT_CHUNK per packet
    ACK          u64 conn_id                                                 16 B

Read kinds: DATA 0, EOF 1, EAGAIN 2 (as `ftcp.core.records.ReadKind`), and
ERROR 3 (a failed read other than EAGAIN/EINTR; value = errno).

``MSG_PEEK`` reads are not reported: they consume nothing, and the bytes they
see are the bytes the next real read returns. In replay a peek is served from
the next script entry without consuming it (waits for its bytes, EAGAIN/EOF
as logged). A zero-length read (len 0) is not reported either.

Shared page (one per session, a 4096-byte memfd the agent creates)::

    off 0   u64 logged    every live read with session seq <= logged is logged
    off 8   u32 futex     low 32 bits of logged (FUTEX_WAKE'd when waiters)
    off 12  u32 waiters   shims sleeping in FUTEX_WAIT
    off 16  u64 magic     PAGE_MAGIC

Output commit (invariant 3): a write-family call on a protected fd proceeds
when ``logged >= seq of this process's last reported read`` — one atomic
load when nothing is pending — else it spins briefly then sleeps on the futex
(5 ms timeout as a safety net).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ftcp.core.replay import outstream_crc
from ftcp.errors import RemoteProtocolError

VERSION = 1
PAGE_SIZE = 4096
PAGE_MAGIC = 0x3157534E50435446  # b"FTCPNSW1" little-endian
SCRIPT_CHUNK = 8192  # entries per SCRIPT packet (the shim's buffer holds this many)
FORKED_CHUNK = 1024  # conn ids per FORKED packet
MAX_PACKET = 16 + 8 * SCRIPT_CHUNK

HDR = struct.Struct("<HHI")


class Msg(enum.IntEnum):
    HELLO = 1
    ACCEPT = 2
    READ = 3
    WRITEMARK = 4
    CLOSE = 5
    FORK = 6
    HOLD = 7
    MISMATCH = 8
    FORKED = 9
    HELLO_REPLY = 65
    ACCEPT_REPLY = 66
    SCRIPT = 67
    ACK = 68


F_REPLAYED = 1


class Kind(enum.IntEnum):
    """What a read-family call returned (values shared with records.ReadKind)."""

    DATA = 0
    EOF = 1
    EAGAIN = 2
    ERROR = 3


class Mode(enum.IntEnum):
    NORMAL = 0
    REPLAY = 1


class How(enum.IntEnum):
    """Values shared with `ftcp.core.records.CloseHow`."""

    SHUT_RD = 0
    SHUT_WR = 1
    SHUT_RDWR = 2
    CLOSE = 3


class MarkReason(enum.IntEnum):
    DISCARD_END = 1
    REPLAY_DONE = 2


class MismatchCode(enum.IntEnum):
    SHORT_BUFFER = 1  # the application's buffer is smaller than the logged length
    EARLY_EOF = 2  # the kernel socket hit EOF before the logged length arrived
    READ_ERROR = 3  # the kernel read failed (value = errno)


# Bodies (after the header).
HELLO = struct.Struct("<IIQ")
HELLO_REPLY = struct.Struct("<QII")
ACCEPT = struct.Struct("<HHHH16s16s")
ACCEPT_REPLY = struct.Struct("<QQII")
SCRIPT = struct.Struct("<II")
ENTRY = struct.Struct("<II")
READ = struct.Struct("<QQQIIII")
WRITEMARK = struct.Struct("<QQII")
CLOSE = struct.Struct("<QQII")
CONN = struct.Struct("<Q")
MISMATCH = struct.Struct("<QQII")
FORKED = struct.Struct("<II")
PAGE = struct.Struct("<QIIQ")

_SIZES = {
    Msg.HELLO: HELLO.size,
    Msg.ACCEPT: ACCEPT.size,
    Msg.READ: READ.size,
    Msg.WRITEMARK: WRITEMARK.size,
    Msg.CLOSE: CLOSE.size,
    Msg.FORK: CONN.size,
    Msg.HOLD: CONN.size,
    Msg.MISMATCH: MISMATCH.size,
}


# ---- decoded shim -> agent messages ---------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    pid: int
    parent_session: int


@dataclass(frozen=True, slots=True)
class Accept:
    family: int  # socket.AF_INET / AF_INET6
    local: tuple[str, int]
    remote: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Read:
    conn_id: int
    seq: int
    kind: Kind
    value: int  # length (DATA), errno (ERROR), else 0
    wtotal: int
    wcrc: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class WriteMarkMsg:
    conn_id: int
    total: int
    crc: int
    reason: MarkReason


@dataclass(frozen=True, slots=True)
class CloseMsg:
    conn_id: int
    how: How
    wtotal: int
    wcrc: int


@dataclass(frozen=True, slots=True)
class Fork:
    pass


@dataclass(frozen=True, slots=True)
class Hold:
    conn_id: int


@dataclass(frozen=True, slots=True)
class Forked:
    pid: int
    conn_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Mismatch:
    conn_id: int
    index: int
    code: MismatchCode
    value: int


ShimMessage = Hello | Accept | Read | WriteMarkMsg | CloseMsg | Fork | Hold | Forked | Mismatch


def _addr(family: int, raw: bytes) -> str:
    import socket

    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def decode(packet: bytes) -> ShimMessage:
    """Decode one shim packet; a malformed one is a `RemoteProtocolError`."""
    if len(packet) < HDR.size:
        raise RemoteProtocolError(f"nsw: short packet ({len(packet)} bytes)")
    mtype, flags, _ = HDR.unpack_from(packet)
    try:
        msg = Msg(mtype)
        size = _SIZES[msg]
    except (ValueError, KeyError):
        if mtype == Msg.FORKED:
            return _decode_forked(packet)
        raise RemoteProtocolError(f"nsw: unknown message type {mtype}") from None
    if len(packet) != HDR.size + size:
        raise RemoteProtocolError(f"nsw: {msg.name} of {len(packet)} bytes, want {8 + size}")
    off = HDR.size
    try:
        match msg:
            case Msg.HELLO:
                return Hello(*HELLO.unpack_from(packet, off))
            case Msg.ACCEPT:
                fam, lport, rport, _, la, ra = ACCEPT.unpack_from(packet, off)
                return Accept(fam, (_addr(fam, la), lport), (_addr(fam, ra), rport))
            case Msg.READ:
                cid, seq, wtotal, kind, value, wcrc, _ = READ.unpack_from(packet, off)
                return Read(cid, seq, Kind(kind), value, wtotal, wcrc, bool(flags & F_REPLAYED))
            case Msg.WRITEMARK:
                cid, total, crc, reason = WRITEMARK.unpack_from(packet, off)
                return WriteMarkMsg(cid, total, crc, MarkReason(reason))
            case Msg.CLOSE:
                cid, wtotal, how, wcrc = CLOSE.unpack_from(packet, off)
                return CloseMsg(cid, How(how), wtotal, wcrc)
            case Msg.FORK:
                return Fork()
            case Msg.HOLD:
                return Hold(*CONN.unpack_from(packet, off))
            case Msg.MISMATCH:
                cid, index, code, value = MISMATCH.unpack_from(packet, off)
                return Mismatch(cid, index, MismatchCode(code), value)
    except (ValueError, OSError) as e:
        raise RemoteProtocolError(f"nsw: bad {msg.name}: {e}") from None
    raise AssertionError(msg)  # pragma: no cover


def _decode_forked(packet: bytes) -> Forked:
    if len(packet) < HDR.size + FORKED.size:
        raise RemoteProtocolError(f"nsw: short FORKED ({len(packet)} bytes)")
    pid, count = FORKED.unpack_from(packet, HDR.size)
    want = HDR.size + FORKED.size + 8 * count
    if count > FORKED_CHUNK or len(packet) != want:
        raise RemoteProtocolError(f"nsw: FORKED of {len(packet)} bytes, count {count}")
    if pid <= 0 or pid >= 1 << 22:
        raise RemoteProtocolError(f"nsw: FORKED with pid {pid}")
    return Forked(pid, struct.unpack_from(f"<{count}Q", packet, HDR.size + FORKED.size))


# ---- agent -> shim ---------------------------------------------------------


def hello_reply(session_id: int) -> bytes:
    return HDR.pack(Msg.HELLO_REPLY, 0, 0) + HELLO_REPLY.pack(session_id, VERSION, 0)


def accept_reply(conn_id: int, mode: Mode, n_reads: int = 0, discard: int = 0) -> bytes:
    return HDR.pack(Msg.ACCEPT_REPLY, 0, 0) + ACCEPT_REPLY.pack(conn_id, discard, mode, n_reads)


def script_packets(entries: list[tuple[int, int]]) -> list[bytes]:
    """The SCRIPT packets carrying `entries` ((kind, value) pairs)."""
    return script_packets_packed(b"".join(ENTRY.pack(k, v) for k, v in entries))


def script_packets_packed(script: bytes) -> list[bytes]:
    """The SCRIPT packets carrying `script`: entries already packed as `ENTRY`s
    (`ftcp.core.records.ReadLog.script`)."""
    step = SCRIPT_CHUNK * ENTRY.size
    out = []
    for i in range(0, len(script), step):
        chunk = script[i : i + step]
        out.append(HDR.pack(Msg.SCRIPT, 0, 0) + SCRIPT.pack(len(chunk) // ENTRY.size, 0) + chunk)
    return out


def ack(conn_id: int) -> bytes:
    return HDR.pack(Msg.ACK, 0, 0) + CONN.pack(conn_id)


# ---- encoders for the shim side (tests, fake shims) ------------------------


def hello(pid: int, parent_session: int = 0) -> bytes:
    return HDR.pack(Msg.HELLO, 0, 0) + HELLO.pack(VERSION, pid, parent_session)


def read(
    conn_id: int,
    seq: int,
    kind: Kind,
    value: int = 0,
    wtotal: int = 0,
    wcrc: int = 0,
    replayed: bool = False,
) -> bytes:
    flags = F_REPLAYED if replayed else 0
    return HDR.pack(Msg.READ, flags, 0) + READ.pack(conn_id, seq, wtotal, kind, value, wcrc, 0)


def close(conn_id: int, how: How, wtotal: int = 0, wcrc: int = 0) -> bytes:
    return HDR.pack(Msg.CLOSE, 0, 0) + CLOSE.pack(conn_id, wtotal, how, wcrc)


def forked(pid: int, conn_ids: list[int]) -> bytes:
    n = len(conn_ids)
    return HDR.pack(Msg.FORKED, 0, 0) + FORKED.pack(pid, n) + struct.pack(f"<{n}Q", *conn_ids)


def hold(conn_id: int) -> bytes:
    return HDR.pack(Msg.HOLD, 0, 0) + CONN.pack(conn_id)


# ---- CRC-32C (Castagnoli), the shim's output checksum ----------------------

crc32c = outstream_crc  # the check's own function (`ftcp.core.replay`)
