"""The logger protocol: versioned, length-prefixed binary frames (sans-IO).

Every frame is an 8-byte header followed by `length` bytes of body::

    magic  b"FT"   2 bytes
    version        u8   (VERSION)
    type           u8   (FrameType)
    length         u32  body length, big-endian, <= the decoder's max_frame

Integers are big-endian throughout. Session (supervisor <-> logger)::

    client                               logger
    HELLO(role, flags, nonce_c, app_id) ->
                                      <- CHALLENGE(nonce_s)
    AUTH(hmac_c)                      ->
                                      <- AUTH_OK(hmac_s)      (or ERROR, then close)
    RECORDS(batch) ... (pipelined)    ->
                                      <- ACKS(entries) ...
    RECOVER(req)                      ->
                                      <- RECOVER_CONN / RECOVER_READS / RECOVER_INSTREAM ...
                                      <- RECOVER_END(req)
    DELETE(req, conn_ids | all)       ->
                                      <- ACKS(DeleteAck(req))
    PING(token, t)                    ->
                                      <- PONG(token, t)
    LEASE(req, epoch, flags)          ->                      (host failover)
                                      <- LEASE_ANSWER(req, granted | wait | fenced, epoch, ms)

`hmac_c = HMAC-SHA256(secret, "ftcp-logger-auth\\0" | version | role | flags | "C" |
nonce_c | nonce_s | app_id)`; `hmac_s` is the same with "S": both sides prove
they hold the secret, and neither MAC can be replayed into another session,
role or application.

A RECORDS body is a plain concatenation of records, each `tag u8` + a fixed
struct + variable bytes (see `_REC_*`). The same bytes are what the logger's
store keeps, so a batch is written to disk without being re-encoded.
ACKS bodies are fixed 17-byte entries `kind u8, id u64, a u32, b u32`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ftcp.core.records import (
    READ_ITEM,
    Close,
    CloseHow,
    ConnectionLog,
    Finished,
    Handshake,
    InSegment,
    ReadKind,
    ReadLog,
    ReadResult,
    Record,
    SynOptions,
    WriteMark,
)
from ftcp.errors import LocalProtocolError, RemoteProtocolError

MAGIC = b"FT"
VERSION = 1
DEFAULT_MAX_FRAME = 16 << 20
NONCE_LEN = 32
MAC_LEN = 32
MAX_APP_ID = 255

_HEADER = struct.Struct("!2sBBI")
HEADER_LEN = _HEADER.size


class FrameType(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    AUTH_OK = 4
    RECORDS = 5
    ACKS = 6
    RECOVER = 7
    RECOVER_CONN = 8
    RECOVER_READS = 9
    RECOVER_INSTREAM = 10
    RECOVER_END = 11
    DELETE = 12
    ERROR = 13
    PING = 14
    PONG = 15
    LEASE = 16
    LEASE_ANSWER = 17


_FRAME_TYPES = frozenset(int(t) for t in FrameType)


class Role(enum.IntEnum):
    SUPERVISOR = 1  # logs records, gets acks, recovers
    ADMIN = 2  # query only: recover, delete, ping
    LEASE = 3  # a supervisor's heartbeat link (host failover): LEASE and PING only


class ErrorCode(enum.IntEnum):
    PROTOCOL = 1
    AUTH = 2
    STORAGE = 3
    REJECTED = 4  # a record was refused (kept connection)
    ROLE = 5
    TIMEOUT = 6
    INTERNAL = 7
    FENCED = 8  # this link's lease epoch is over: another supervisor holds the application


HELLO_WHOLE_HISTORY = 0x01  # keep finished connections (whole-history replay)
HELLO_RESUME = 0x02  # a supervisor reconnecting: the logger reports its durable watermarks
HELLO_STANDBY = 0x04  # host failover: may connect beside the holder; never starts a new run
_HELLO_FLAGS = HELLO_WHOLE_HISTORY | HELLO_RESUME | HELLO_STANDBY
LEASE_BIND = 0x01  # this link's records count only while `epoch` is the application's
LEASE_RELEASE = 0x02  # the holder gives the lease up
DELETE_ALL = 0x01  # delete the whole application

# ---------------------------------------------------------------------------
# frames


@dataclass(frozen=True, slots=True)
class Hello:
    role: Role
    app_id: str
    nonce: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Auth:
    mac: bytes


@dataclass(frozen=True, slots=True)
class AuthOk:
    mac: bytes


@dataclass(frozen=True, slots=True)
class Records:
    """A batch of records; `raw` is the body exactly as received (for the store)."""

    records: list[Record]
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class RawRecords:
    """A validated RECORDS body left undecoded (`Decoder(raw_records=True)`)."""

    raw: bytes
    count: int


@dataclass(frozen=True, slots=True)
class StreamAck:
    """Instream of `conn_id` is durable up to `stable_seq` (`ack_limit` counts a FIN)."""

    conn_id: int
    stable_seq: int
    ack_limit: int


@dataclass(frozen=True, slots=True)
class HandshakeAck:
    conn_id: int


@dataclass(frozen=True, slots=True)
class ReadsAck:
    """Every read result of the application with `order < next_order` is durable."""

    next_order: int


@dataclass(frozen=True, slots=True)
class BatchAck:
    """Every RECORDS frame numbered <= `batch` on this link (from 1) is durable."""

    batch: int


@dataclass(frozen=True, slots=True)
class FinishedAck:
    conn_id: int


@dataclass(frozen=True, slots=True)
class DeleteAck:
    req_id: int


Ack = StreamAck | HandshakeAck | ReadsAck | BatchAck | FinishedAck | DeleteAck


@dataclass(frozen=True, slots=True)
class Acks:
    acks: list[Ack]


@dataclass(frozen=True, slots=True)
class Recover:
    req_id: int


@dataclass(frozen=True, slots=True)
class RecoverConn:
    """Header of one connection's recovery state; reads and instream follow."""

    req_id: int
    handshake: Handshake
    stable_seq: int
    server_seq: int
    client_fin: bool
    client_window: int
    client_ts_val: int | None
    client_ts_ecr: int | None
    instream_len: int
    n_reads: int
    write_mark: WriteMark | None
    closes: tuple[Close, ...]


@dataclass(frozen=True, slots=True)
class RecoverReads:
    req_id: int
    conn_id: int
    reads: Sequence[ReadResult]  # decoded: a ReadLog


@dataclass(frozen=True, slots=True)
class RecoverInstream:
    req_id: int
    conn_id: int
    offset: int
    data: bytes | memoryview  # decoded: a read-only view into the frame body (no copy)


@dataclass(frozen=True, slots=True)
class RecoverEnd:
    req_id: int
    n_conns: int


@dataclass(frozen=True, slots=True)
class Delete:
    req_id: int
    conn_ids: tuple[int, ...] = ()
    all: bool = False


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    reason: str
    fatal: bool = True


class LeaseKind(enum.IntEnum):
    GRANTED = 1  # `epoch` is held for `ms` more, counted from the request
    WAIT = 2  # another supervisor holds it: it may be free in `ms`
    FENCED = 3  # the asked epoch is over; `epoch` is the current one


@dataclass(frozen=True, slots=True)
class Lease:
    """Ask for the application's lease (`epoch` 0), renew it (its epoch), bind this
    link's records to it (`LEASE_BIND`) or give it up (`LEASE_RELEASE`)."""

    req: int
    epoch: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True)
class LeaseAnswer:
    """`ms`: how long a granted lease lasts, or how soon it may be free (WAIT).
    `next_order`, answering a bind: above every read order the application's log
    holds (a new holder's reads continue from there)."""

    req: int
    kind: LeaseKind
    epoch: int
    ms: int = 0
    next_order: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    token: int
    time_ns: int = 0


@dataclass(frozen=True, slots=True)
class Pong:
    token: int
    time_ns: int = 0


Frame = (
    Hello
    | RawRecords
    | Challenge
    | Auth
    | AuthOk
    | Records
    | Acks
    | Recover
    | RecoverConn
    | RecoverReads
    | RecoverInstream
    | RecoverEnd
    | Delete
    | Error
    | Ping
    | Pong
    | Lease
    | LeaseAnswer
)

# ---------------------------------------------------------------------------
# authentication


def auth_mac(
    secret: bytes,
    side: bytes,
    role: int,
    flags: int,
    app_id: str,
    client_nonce: bytes,
    server_nonce: bytes,
    version: int = VERSION,
) -> bytes:
    """HMAC-SHA256 binding the secret to both nonces, version, role, app and side."""
    msg = b"".join(
        (
            b"ftcp-logger-auth\0",
            bytes((version, int(role), flags)),
            side,
            client_nonce,
            server_nonce,
            app_id.encode(),
        )
    )
    return hmac.new(secret, msg, hashlib.sha256).digest()


def check_mac(expected: bytes, got: bytes) -> bool:
    return hmac.compare_digest(expected, got)


# ---------------------------------------------------------------------------
# records

TAG_HANDSHAKE = 1
TAG_INSEGMENT = 2
TAG_READ = 3
TAG_WRITEMARK = 4
TAG_CLOSE = 5
TAG_FINISHED = 6

# InSegment: tag, conn_id, seq, ack, window, flags, ts_val, ts_ecr, payload length
_REC_INSEG = struct.Struct("!BQIIIBIII")
_INSEG_FIN = 0x01
_INSEG_TSV = 0x02
_INSEG_TSE = 0x04
# ReadResult: tag, conn_id, order, kind, length
_REC_READ = struct.Struct("!BQQBI")
# WriteMark: tag, conn_id, total, checksum
_REC_WMARK = struct.Struct("!BQQQ")
_REC_CLOSE = struct.Struct("!BQB")
_REC_FIN = struct.Struct("!BQ")
# Handshake: tag, conn_id, accept_order, c_isn, s_isn, cport, sport, len(cip), len(sip)
_REC_HS = struct.Struct("!BQQIIHHBB")
# SynOptions: presence flags, mss, wscale, ts_val, ts_ecr
_SYNOPT = struct.Struct("!BHBII")
_OPT_MSS, _OPT_WS, _OPT_SACK, _OPT_TSV, _OPT_TSE = 1, 2, 4, 8, 16

_inseg_pack = _REC_INSEG.pack
_inseg_unpack = _REC_INSEG.unpack_from
_INSEG_LEN = _REC_INSEG.size
_read_pack = _REC_READ.pack
_read_unpack = _REC_READ.unpack_from
_READ_LEN = _REC_READ.size
_READ_KINDS = (ReadKind.DATA, ReadKind.EOF, ReadKind.EAGAIN, ReadKind.ERROR)
READ_KINDS = _READ_KINDS
_CLOSE_HOWS = tuple(CloseHow)
_FIXED_SIZES = {
    TAG_READ: _REC_READ.size,
    TAG_WRITEMARK: _REC_WMARK.size,
    TAG_CLOSE: _REC_CLOSE.size,
    TAG_FINISHED: _REC_FIN.size,
}
# public for the logger's fused decode+apply loop
INSEG = _REC_INSEG
READ = _REC_READ


def _encode_opts(o: SynOptions) -> bytes:
    flags = (
        (_OPT_MSS if o.mss is not None else 0)
        | (_OPT_WS if o.wscale is not None else 0)
        | (_OPT_SACK if o.sack_ok else 0)
        | (_OPT_TSV if o.ts_val is not None else 0)
        | (_OPT_TSE if o.ts_ecr is not None else 0)
    )
    return _SYNOPT.pack(flags, o.mss or 0, o.wscale or 0, o.ts_val or 0, o.ts_ecr or 0)


def _decode_opts(buf: bytes | memoryview, off: int) -> SynOptions:
    flags, mss, ws, tsv, tse = _SYNOPT.unpack_from(buf, off)
    if flags & ~0x1F:
        raise RemoteProtocolError(f"unknown SYN option flags {flags:#x}")
    return SynOptions(
        mss=mss if flags & _OPT_MSS else None,
        wscale=ws if flags & _OPT_WS else None,
        sack_ok=bool(flags & _OPT_SACK),
        ts_val=tsv if flags & _OPT_TSV else None,
        ts_ecr=tse if flags & _OPT_TSE else None,
    )


def _encode_handshake(r: Handshake) -> bytes:
    cip = r.client_ip.encode()
    sip = r.server_ip.encode()
    return b"".join(
        (
            _REC_HS.pack(
                TAG_HANDSHAKE,
                r.conn_id,
                r.accept_order,
                r.c_isn,
                r.s_isn,
                r.client_port,
                r.server_port,
                len(cip),
                len(sip),
            ),
            cip,
            sip,
            _encode_opts(r.client_opts),
            _encode_opts(r.server_opts),
        )
    )


def encode_record(r: Record) -> bytes:
    """One record as bytes (tag first). Raises LocalProtocolError on unencodable values."""
    try:
        cls = type(r)
        if cls is InSegment:
            p = r.payload
            flags = (
                (_INSEG_FIN if r.fin else 0)
                | (0 if r.ts_val is None else _INSEG_TSV)
                | (0 if r.ts_ecr is None else _INSEG_TSE)
            )
            return (
                _inseg_pack(
                    TAG_INSEGMENT,
                    r.conn_id,
                    r.seq,
                    r.ack,
                    r.window,
                    flags,
                    r.ts_val or 0,
                    r.ts_ecr or 0,
                    len(p),
                )
                + p
            )
        if cls is ReadResult:
            return _read_pack(TAG_READ, r.conn_id, r.order, r.kind, r.length)
        if cls is WriteMark:
            return _REC_WMARK.pack(TAG_WRITEMARK, r.conn_id, r.total, r.checksum)
        if cls is Close:
            return _REC_CLOSE.pack(TAG_CLOSE, r.conn_id, r.how)
        if cls is Finished:
            return _REC_FIN.pack(TAG_FINISHED, r.conn_id)
        if cls is Handshake:
            return _encode_handshake(r)
    except (struct.error, TypeError) as e:
        raise LocalProtocolError(f"cannot encode {r!r}: {e}") from e
    raise LocalProtocolError(f"not a record: {r!r}")


def encode_records_body(records: Iterable[Record]) -> bytes:
    """Concatenated records (a RECORDS body), with the InSegment/ReadResult fast paths inline."""
    parts = _records_parts(records, [])
    return b"".join(parts)


def _records_parts(
    records: Iterable[Record], parts: list[bytes | memoryview]
) -> list[bytes | memoryview]:
    """Append each record's pieces to `parts` (payloads as they are: no copy)."""
    app = parts.append
    try:
        for r in records:
            cls = type(r)
            if cls is InSegment:
                p = r.payload
                tsv = r.ts_val
                tse = r.ts_ecr
                app(
                    _inseg_pack(
                        TAG_INSEGMENT,
                        r.conn_id,
                        r.seq,
                        r.ack,
                        r.window,
                        (_INSEG_FIN if r.fin else 0)
                        | (0 if tsv is None else _INSEG_TSV)
                        | (0 if tse is None else _INSEG_TSE),
                        tsv or 0,
                        tse or 0,
                        len(p),
                    )
                )
                if p:
                    app(p)
            elif cls is ReadResult:
                app(_read_pack(TAG_READ, r.conn_id, r.order, r.kind, r.length))
            else:
                app(encode_record(r))
    except (struct.error, TypeError) as e:
        raise LocalProtocolError(f"cannot encode record: {e}") from e
    return parts


def decode_records(body: bytes | memoryview) -> list[Record]:
    """Parse a RECORDS body. Raises RemoteProtocolError naming what was wrong."""
    out: list[Record] = []
    app = out.append
    off = 0
    n = len(body)
    mv = memoryview(body)
    try:
        while off < n:
            tag = body[off]
            if tag == TAG_INSEGMENT:
                _, conn, sq, ack, win, flags, tsv, tse, plen = _inseg_unpack(body, off)
                off += _INSEG_LEN
                end = off + plen
                if end > n:
                    raise RemoteProtocolError(
                        f"InSegment payload of {plen} bytes overruns the frame at offset {off}"
                    )
                if flags & ~7:
                    raise RemoteProtocolError(f"unknown InSegment flags {flags:#x}")
                app(
                    InSegment(
                        conn,
                        sq,
                        ack,
                        win,
                        bool(flags & _INSEG_FIN),
                        tsv if flags & _INSEG_TSV else None,
                        tse if flags & _INSEG_TSE else None,
                        bytes(mv[off:end]),
                    )
                )
                off = end
            elif tag == TAG_READ:
                _, conn, order, kind, length = _read_unpack(body, off)
                off += _READ_LEN
                if kind >= len(_READ_KINDS):
                    raise RemoteProtocolError(f"unknown read kind {kind}")
                app(ReadResult(conn, order, _READ_KINDS[kind], length))
            elif tag == TAG_WRITEMARK:
                _, conn, total, csum = _REC_WMARK.unpack_from(body, off)
                off += _REC_WMARK.size
                app(WriteMark(conn, total, csum))
            elif tag == TAG_CLOSE:
                _, conn, how = _REC_CLOSE.unpack_from(body, off)
                off += _REC_CLOSE.size
                if how >= len(_CLOSE_HOWS):
                    raise RemoteProtocolError(f"unknown close kind {how}")
                app(Close(conn, _CLOSE_HOWS[how]))
            elif tag == TAG_FINISHED:
                _, conn = _REC_FIN.unpack_from(body, off)
                off += _REC_FIN.size
                app(Finished(conn))
            elif tag == TAG_HANDSHAKE:
                hs, off = _decode_handshake(body, off)
                app(hs)
            else:
                raise RemoteProtocolError(f"unknown record tag {tag} at offset {off}")
    except struct.error as e:
        raise RemoteProtocolError(f"truncated record at offset {off}: {e}") from None
    return out


def decode_record_at(body: bytes, off: int) -> tuple[Record, int]:
    """Decode the one record starting at `off`; return it and the offset after it."""
    tag = body[off]
    if tag == TAG_HANDSHAKE:
        try:
            return _decode_handshake(body, off)
        except struct.error as e:
            raise RemoteProtocolError(f"truncated record at offset {off}: {e}") from None
    size = _FIXED_SIZES.get(tag)
    if size is None:
        end = len(body) if tag != TAG_INSEGMENT else _inseg_end(body, off)
    else:
        end = off + size
    (rec,) = decode_records(body[off:end])
    return rec, end


def _inseg_end(body: bytes, off: int) -> int:
    return off + _INSEG_LEN + _inseg_unpack(body, off)[8]


def validate_records(body: bytes) -> int:
    """Check a RECORDS body's structure without building records; return the count.

    Accepts exactly what `decode_records` accepts (same errors); the logger uses
    it so a malformed frame is refused before any of it is applied.
    """
    off = 0
    n = len(body)
    count = 0
    unpack = _inseg_unpack
    try:
        while off < n:
            tag = body[off]
            count += 1
            if tag == TAG_INSEGMENT:
                flags = body[off + 21]
                plen = unpack(body, off)[8]
                off += _INSEG_LEN + plen
                if off > n:
                    raise RemoteProtocolError(
                        f"InSegment payload of {plen} bytes overruns the frame at offset "
                        f"{off - plen}"
                    )
                if flags & ~7:
                    raise RemoteProtocolError(f"unknown InSegment flags {flags:#x}")
            elif tag == TAG_READ:
                if off + _READ_LEN > n:
                    raise struct.error("short ReadResult")
                if body[off + 17] >= len(_READ_KINDS):
                    raise RemoteProtocolError(f"unknown read kind {body[off + 17]}")
                off += _READ_LEN
            elif tag == TAG_HANDSHAKE:
                _, off = _decode_handshake(body, off)
            elif tag in _FIXED_SIZES:
                end = off + _FIXED_SIZES[tag]
                if end > n:
                    raise struct.error(f"short record with tag {tag}")
                if tag == TAG_CLOSE and body[end - 1] >= len(_CLOSE_HOWS):
                    raise RemoteProtocolError(f"unknown close kind {body[end - 1]}")
                off = end
            else:
                raise RemoteProtocolError(f"unknown record tag {tag} at offset {off}")
    except (struct.error, IndexError) as e:
        raise RemoteProtocolError(f"truncated record at offset {off}: {e}") from None
    return count


def _decode_handshake(body: bytes | memoryview, off: int) -> tuple[Handshake, int]:
    _, conn, order, c_isn, s_isn, cport, sport, lc, ls = _REC_HS.unpack_from(body, off)
    off += _REC_HS.size
    end = off + lc + ls + 2 * _SYNOPT.size
    if end > len(body):
        raise RemoteProtocolError(f"truncated Handshake record at offset {off}")
    try:
        cip = bytes(body[off : off + lc]).decode()
        sip = bytes(body[off + lc : off + lc + ls]).decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("Handshake address is not UTF-8") from None
    off += lc + ls
    copts = _decode_opts(body, off)
    sopts = _decode_opts(body, off + _SYNOPT.size)
    hs = Handshake(conn, order, cip, cport, sip, sport, c_isn, s_isn, copts, sopts)
    return hs, end


# ---------------------------------------------------------------------------
# frame encoding


def frame(ftype: FrameType, body: bytes = b"") -> bytes:
    return _HEADER.pack(MAGIC, VERSION, ftype, len(body)) + body


def encode_records(records: Iterable[Record]) -> bytes:
    """A complete RECORDS frame (hot path): header and records joined in one copy."""
    parts = _records_parts(records, [b""])
    size = sum(map(len, parts))
    parts[0] = _HEADER.pack(MAGIC, VERSION, FrameType.RECORDS, size)
    return b"".join(parts)


_ACK = struct.Struct("!BQII")
ACK_STREAM, ACK_HANDSHAKE, ACK_READS, ACK_BATCH, ACK_FINISHED, ACK_DELETED = 1, 2, 3, 4, 5, 6


def encode_acks_body(acks: Iterable[Ack]) -> bytes:
    p = _ACK.pack
    parts = []
    for a in acks:
        cls = type(a)
        if cls is StreamAck:
            parts.append(p(ACK_STREAM, a.conn_id, a.stable_seq, a.ack_limit))
        elif cls is BatchAck:
            parts.append(p(ACK_BATCH, a.batch, 0, 0))
        elif cls is ReadsAck:
            parts.append(p(ACK_READS, a.next_order, 0, 0))
        elif cls is HandshakeAck:
            parts.append(p(ACK_HANDSHAKE, a.conn_id, 0, 0))
        elif cls is FinishedAck:
            parts.append(p(ACK_FINISHED, a.conn_id, 0, 0))
        elif cls is DeleteAck:
            parts.append(p(ACK_DELETED, a.req_id, 0, 0))
        else:
            raise LocalProtocolError(f"not an ack: {a!r}")
    return b"".join(parts)


_RC_HEAD = struct.Struct("!IIIBIBIBIQQBQQH")
_RR_HEAD = struct.Struct("!IQ")
_RR_ITEM = READ_ITEM
_RI_HEAD = struct.Struct("!IQQ")
_U32 = struct.Struct("!I")
_U32U32 = struct.Struct("!II")
_QQ = struct.Struct("!QQ")
_DEL_HEAD = struct.Struct("!IB")
_ERR_HEAD = struct.Struct("!HB")
_HELLO_HEAD = struct.Struct("!BB32s")
_LEASE = struct.Struct("!IIB")
_LEASE_ANSWER = struct.Struct("!IBIIQ")


def encode(f: Frame) -> bytes:
    """Any frame as bytes."""
    try:
        return _encode(f)
    except (struct.error, TypeError, ValueError) as e:
        raise LocalProtocolError(f"cannot encode {type(f).__name__}: {e}") from e


def _encode(f: Frame) -> bytes:
    match f:
        case Records(records=recs):
            return encode_records(recs)
        case RawRecords(raw=raw):
            return frame(FrameType.RECORDS, raw)
        case Acks(acks=acks):
            return frame(FrameType.ACKS, encode_acks_body(acks))
        case Hello(role=role, app_id=app_id, nonce=nonce, flags=flags):
            aid = app_id.encode()
            if not 0 < len(aid) <= MAX_APP_ID or len(nonce) != NONCE_LEN:
                raise ValueError("app id must be 1..255 bytes, nonce 32 bytes")
            return frame(FrameType.HELLO, _HELLO_HEAD.pack(role, flags, nonce) + aid)
        case Challenge(nonce=nonce):
            if len(nonce) != NONCE_LEN:
                raise ValueError("nonce must be 32 bytes")
            return frame(FrameType.CHALLENGE, nonce)
        case Auth(mac=mac):
            return frame(FrameType.AUTH, mac)
        case AuthOk(mac=mac):
            return frame(FrameType.AUTH_OK, mac)
        case Recover(req_id=req):
            return frame(FrameType.RECOVER, _U32.pack(req))
        case RecoverConn():
            return frame(FrameType.RECOVER_CONN, _encode_recover_conn(f))
        case RecoverReads(req_id=req, conn_id=conn, reads=reads):
            if not isinstance(reads, ReadLog):
                reads = ReadLog.from_results(conn, reads)
            return frame(FrameType.RECOVER_READS, _RR_HEAD.pack(req, conn) + reads.packed)
        case RecoverInstream(req_id=req, conn_id=conn, offset=off, data=data):
            return frame(FrameType.RECOVER_INSTREAM, _RI_HEAD.pack(req, conn, off) + data)
        case RecoverEnd(req_id=req, n_conns=n):
            return frame(FrameType.RECOVER_END, _U32U32.pack(req, n))
        case Delete(req_id=req, conn_ids=ids, all=all_):
            body = _DEL_HEAD.pack(req, DELETE_ALL if all_ else 0)
            body += struct.pack(f"!{len(ids)}Q", *ids)
            return frame(FrameType.DELETE, body)
        case Error(code=code, reason=reason, fatal=fatal):
            return frame(FrameType.ERROR, _ERR_HEAD.pack(code, fatal) + reason.encode()[:4000])
        case Ping(token=t, time_ns=ns):
            return frame(FrameType.PING, _QQ.pack(t, ns))
        case Pong(token=t, time_ns=ns):
            return frame(FrameType.PONG, _QQ.pack(t, ns))
        case Lease(req=req, epoch=epoch, flags=flags):
            return frame(FrameType.LEASE, _LEASE.pack(req, epoch, flags))
        case LeaseAnswer(req=req, kind=kind, epoch=epoch, ms=ms, next_order=nxt):
            return frame(FrameType.LEASE_ANSWER, _LEASE_ANSWER.pack(req, kind, epoch, ms, nxt))
    raise LocalProtocolError(f"not a frame: {f!r}")


def _encode_recover_conn(f: RecoverConn) -> bytes:
    wm = f.write_mark
    head = _RC_HEAD.pack(
        f.req_id,
        f.stable_seq,
        f.server_seq,
        f.client_fin,
        f.client_window,
        f.client_ts_val is not None,
        f.client_ts_val or 0,
        f.client_ts_ecr is not None,
        f.client_ts_ecr or 0,
        f.instream_len,
        f.n_reads,
        wm is not None,
        wm.total if wm else 0,
        wm.checksum if wm else 0,
        len(f.closes),
    )
    closes = bytes(c.how for c in f.closes)
    return head + closes + _encode_handshake(f.handshake)


def recovery_conn_frames(
    req_id: int, log: ConnectionLog, instream_len: int | None = None, chunk: int = 1 << 20
) -> list[bytes]:
    """A connection's RECOVER_CONN and RECOVER_READS frames (its instream follows).

    `instream_len`: the instream's length when `log.instream` is a buffer that may
    have grown since the log was taken (default: its length)."""
    conn = log.handshake.conn_id
    out = [
        encode(
            RecoverConn(
                req_id,
                log.handshake,
                log.stable_seq,
                log.server_seq,
                log.client_fin,
                log.client_window,
                log.client_ts_val,
                log.client_ts_ecr,
                len(log.instream) if instream_len is None else instream_len,
                len(log.reads),
                log.write_mark,
                tuple(log.closes),
            )
        )
    ]
    per = max(1, chunk // _RR_ITEM.size)
    for i in range(0, len(log.reads), per):
        out.append(encode(RecoverReads(req_id, conn, log.reads[i : i + per])))
    return out


def recovery_instream_head(req_id: int, conn_id: int, offset: int, n: int) -> bytes:
    """Header of a RECOVER_INSTREAM frame carrying `n` instream bytes from `offset`:
    the frame is this followed by the bytes (sent as they are, not copied into it)."""
    return _HEADER.pack(MAGIC, VERSION, FrameType.RECOVER_INSTREAM, _RI_HEAD.size + n) + (
        _RI_HEAD.pack(req_id, conn_id, offset)
    )


def recovery_frames(
    req_id: int, logs: Sequence[ConnectionLog], chunk: int = 1 << 20
) -> Iterable[bytes]:
    """Encode a recovery answer: per connection a header, its reads, its instream; then END."""
    for log in logs:
        conn = log.handshake.conn_id
        yield from recovery_conn_frames(req_id, log, chunk=chunk)
        # instream frames as header + a view of the logged bytes: no per-chunk copy (a
        # transport takes bytes-like pieces; the frames are whole once joined)
        data = memoryview(log.instream)
        for i in range(0, len(data), chunk):
            piece = data[i : i + chunk]
            yield recovery_instream_head(req_id, conn, i, len(piece))
            yield piece
    yield encode(RecoverEnd(req_id, len(logs)))


# ---------------------------------------------------------------------------
# decoding


class Decoder:
    """Incremental frame decoder: `feed(bytes)` returns the complete frames.

    Anything malformed raises `RemoteProtocolError` naming what was wrong; after
    that the decoder is unusable (the peer should be disconnected).

    `stream_instream=True` (the supervisor's side of a recovery): a RECOVER_INSTREAM
    frame is not held back until its whole body is in; each `feed` hands on the part
    of the body it brought, as `RecoverInstream` frames whose offsets continue one
    another (a view into the fed bytes: consume it before the next `feed`). A large
    answer then goes from the socket to its place in the assembled instream with no
    buffering and no joining.
    """

    __slots__ = ("max_frame", "raw_records", "stream_instream", "_buf", "_failed", "_stream")

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        raw_records: bool = False,
        stream_instream: bool = False,
    ) -> None:
        self.max_frame = max_frame
        self.raw_records = raw_records  # RECORDS -> RawRecords (validated, not decoded)
        self.stream_instream = stream_instream
        self._buf = bytearray()
        self._failed = False
        # inside a streamed RECOVER_INSTREAM body: [req, conn, next offset, bytes left]
        self._stream: list[int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._failed:
            raise RemoteProtocolError("decoder already failed")
        out: list[Frame] = []
        if self._stream is not None:
            if type(data) is not bytes:
                data = bytes(data)  # the views handed on must not change under the caller
            data = self._continue_stream(memoryview(data), out)
            if not data:
                return out
        buf = self._buf
        buf += data
        off = 0
        n = len(buf)
        mv = memoryview(buf)
        try:
            while n - off >= HEADER_LEN:
                magic, ver, ftype, length = _HEADER.unpack_from(buf, off)
                if magic != MAGIC:
                    raise RemoteProtocolError(f"bad frame magic {bytes(magic)!r}: not an ftcp peer")
                if ver != VERSION:
                    raise RemoteProtocolError(
                        f"unsupported protocol version {ver} (this side speaks {VERSION})"
                    )
                if ftype not in _FRAME_TYPES:
                    raise RemoteProtocolError(f"unknown frame type {ftype}")
                if length > self.max_frame:
                    raise RemoteProtocolError(
                        f"oversized {FrameType(ftype).name} frame: {length} bytes "
                        f"> max {self.max_frame}"
                    )
                end = off + HEADER_LEN + length
                if ftype == 10 and self.stream_instream:  # FrameType.RECOVER_INSTREAM
                    if length < _RI_HEAD.size:
                        raise RemoteProtocolError(f"RECOVER_INSTREAM frame body of {length} bytes")
                    start = off + HEADER_LEN + _RI_HEAD.size
                    if start > n:
                        break
                    req, conn, ioff = _RI_HEAD.unpack_from(buf, off + HEADER_LEN)
                    have = min(end, n) - start
                    if have:
                        out.append(
                            RecoverInstream(req, conn, ioff, bytes(mv[start : start + have]))
                        )
                    off = start + have
                    if end > n:
                        self._stream = [req, conn, ioff + have, end - n]
                        break
                    continue
                if end > n:
                    break
                body = bytes(mv[off + HEADER_LEN : end])
                off = end
                if ftype == 5 and self.raw_records:  # FrameType.RECORDS
                    out.append(RawRecords(body, validate_records(body)))
                else:
                    out.append(decode_body(FrameType(ftype), body))
        except RemoteProtocolError:
            self._failed = True
            raise
        finally:
            mv.release()
        if off:
            del buf[:off]
        return out

    def _continue_stream(self, data: memoryview, out: list[Frame]) -> memoryview:
        """The next piece of a streamed RECOVER_INSTREAM body; returns what follows it."""
        st = self._stream
        assert st is not None
        req, conn, ioff, left = st
        k = min(left, len(data))
        if k:
            out.append(RecoverInstream(req, conn, ioff, data[:k]))
        if k == left:
            self._stream = None
        else:
            st[2] = ioff + k
            st[3] = left - k
        return data[k:]


def decode_body(ftype: FrameType, body: bytes) -> Frame:
    """Decode one frame body of the given type."""
    try:
        return _decode_body(ftype, body)
    except RemoteProtocolError:
        raise
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
        raise RemoteProtocolError(f"malformed {ftype.name} frame: {e}") from None


def _exact(ftype: FrameType, body: bytes, size: int) -> None:
    if len(body) != size:
        raise RemoteProtocolError(f"{ftype.name} frame body is {len(body)} bytes, expected {size}")


def _decode_body(ftype: FrameType, body: bytes) -> Frame:
    T = FrameType
    if ftype == T.RECORDS:
        return Records(decode_records(body), body)
    if ftype == T.ACKS:
        return Acks(_decode_acks(body))
    if ftype == T.HELLO:
        if len(body) <= _HELLO_HEAD.size or len(body) > _HELLO_HEAD.size + MAX_APP_ID:
            raise RemoteProtocolError(f"HELLO frame body of {len(body)} bytes")
        role, flags, nonce = _HELLO_HEAD.unpack_from(body)
        if role not in (1, 2, 3):
            raise RemoteProtocolError(f"unknown role {role}")
        if flags & ~_HELLO_FLAGS:
            raise RemoteProtocolError(f"unknown HELLO flags {flags:#x}")
        app_id = body[_HELLO_HEAD.size :].decode()
        return Hello(Role(role), app_id, nonce, flags)
    if ftype == T.CHALLENGE:
        _exact(ftype, body, NONCE_LEN)
        return Challenge(body)
    if ftype == T.AUTH:
        _exact(ftype, body, MAC_LEN)
        return Auth(body)
    if ftype == T.AUTH_OK:
        _exact(ftype, body, MAC_LEN)
        return AuthOk(body)
    if ftype == T.RECOVER:
        _exact(ftype, body, 4)
        return Recover(_U32.unpack(body)[0])
    if ftype == T.RECOVER_CONN:
        return _decode_recover_conn(body)
    if ftype == T.RECOVER_READS:
        req, conn = _RR_HEAD.unpack_from(body)
        rest = len(body) - _RR_HEAD.size
        if rest % _RR_ITEM.size:
            raise RemoteProtocolError("RECOVER_READS body is not a whole number of reads")
        return RecoverReads(req, conn, ReadLog(conn, body[_RR_HEAD.size :]))  # checks kinds
    if ftype == T.RECOVER_INSTREAM:
        req, conn, off = _RI_HEAD.unpack_from(body)
        return RecoverInstream(req, conn, off, memoryview(body)[_RI_HEAD.size :])
    if ftype == T.RECOVER_END:
        _exact(ftype, body, 8)
        req, n = _U32U32.unpack(body)
        return RecoverEnd(req, n)
    if ftype == T.DELETE:
        req, flags = _DEL_HEAD.unpack_from(body)
        rest = body[_DEL_HEAD.size :]
        if flags & ~DELETE_ALL or len(rest) % 8:
            raise RemoteProtocolError("malformed DELETE frame")
        ids = struct.unpack(f"!{len(rest) // 8}Q", rest)
        return Delete(req, ids, bool(flags & DELETE_ALL))
    if ftype == T.ERROR:
        code, fatal = _ERR_HEAD.unpack_from(body)
        try:
            ecode = ErrorCode(code)
        except ValueError:
            ecode = ErrorCode.INTERNAL
        reason = body[_ERR_HEAD.size :].decode(errors="replace")
        return Error(ecode, reason, bool(fatal))
    if ftype == T.PING:
        _exact(ftype, body, 16)
        return Ping(*_QQ.unpack(body))
    if ftype == T.PONG:
        _exact(ftype, body, 16)
        return Pong(*_QQ.unpack(body))
    if ftype == T.LEASE:
        _exact(ftype, body, _LEASE.size)
        req, epoch, flags = _LEASE.unpack(body)
        if flags & ~(LEASE_BIND | LEASE_RELEASE) or (flags and not epoch):
            raise RemoteProtocolError(f"LEASE flags {flags:#x} (epoch {epoch})")
        return Lease(req, epoch, flags)
    if ftype == T.LEASE_ANSWER:
        _exact(ftype, body, _LEASE_ANSWER.size)
        req, kind, epoch, ms, nxt = _LEASE_ANSWER.unpack(body)
        return LeaseAnswer(req, LeaseKind(kind), epoch, ms, nxt)
    raise RemoteProtocolError(f"unknown frame type {ftype}")  # pragma: no cover


def _decode_acks(body: bytes) -> list[Ack]:
    if len(body) % _ACK.size:
        raise RemoteProtocolError(f"ACKS body of {len(body)} bytes is not whole entries")
    out: list[Ack] = []
    for kind, ident, a, b in _ACK.iter_unpack(body):
        if kind == ACK_STREAM:
            out.append(StreamAck(ident, a, b))
        elif kind == ACK_BATCH:
            out.append(BatchAck(ident))
        elif kind == ACK_READS:
            out.append(ReadsAck(ident))
        elif kind == ACK_HANDSHAKE:
            out.append(HandshakeAck(ident))
        elif kind == ACK_FINISHED:
            out.append(FinishedAck(ident))
        elif kind == ACK_DELETED:
            out.append(DeleteAck(ident))
        else:
            raise RemoteProtocolError(f"unknown ack kind {kind}")
    return out


def _decode_recover_conn(body: bytes) -> RecoverConn:
    (
        req,
        stable,
        server_seq,
        fin,
        win,
        has_ts,
        ts,
        has_tse,
        tse,
        ilen,
        nreads,
        has_wm,
        wtotal,
        wsum,
        nclose,
    ) = _RC_HEAD.unpack_from(body)
    off = _RC_HEAD.size
    raw = body[off : off + nclose]
    if len(raw) != nclose or any(h >= len(_CLOSE_HOWS) for h in raw):
        raise RemoteProtocolError("malformed closes in RECOVER_CONN")
    off += nclose
    if off >= len(body) or body[off] != TAG_HANDSHAKE:
        raise RemoteProtocolError("RECOVER_CONN without a handshake")
    hs, end = _decode_handshake(body, off)
    if end != len(body):
        raise RemoteProtocolError("trailing bytes in RECOVER_CONN")
    closes = tuple(Close(hs.conn_id, _CLOSE_HOWS[h]) for h in raw)
    wm = WriteMark(hs.conn_id, wtotal, wsum) if has_wm else None
    return RecoverConn(
        req,
        hs,
        stable,
        server_seq,
        bool(fin),
        win,
        ts if has_ts else None,
        tse if has_tse else None,
        ilen,
        nreads,
        wm,
        closes,
    )


MAX_INSTREAM = (1 << 31) - 1  # a logged instream spans less than half the sequence space
