"""What is logged: the records SSW/NSW send to the logger and recovery reads back.

These are the shared vocabulary of `wire` (encoding), the logger (storage) and
`replay` (recovery planning). They are small frozen dataclasses; sequence
numbers are 32-bit ints handled with `ftcp.core.seq`.

A connection is named by `conn_id`, a 64-bit id the supervisor assigns at
accept time (unique for the life of an application); the 4-tuple is in its
`Handshake` record.
"""

from __future__ import annotations

import enum
import itertools
import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload


@dataclass(frozen=True, slots=True)
class SynOptions:
    """TCP options carried by one side's SYN (or SYN-ACK)."""

    mss: int | None = None
    wscale: int | None = None  # None: window scaling not offered
    sack_ok: bool = False
    ts_val: int | None = None  # None: timestamps not offered
    ts_ecr: int | None = None


@dataclass(frozen=True, slots=True)
class Handshake:
    """Both ISNs and both SYNs' options: logged before the SYN-ACK may leave."""

    conn_id: int
    accept_order: int  # order of accept() among this application's connections
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    c_isn: int
    s_isn: int
    client_opts: SynOptions
    server_opts: SynOptions


@dataclass(frozen=True, slots=True)
class InSegment:
    """One client->server segment as SSW saw it (payload may be empty).

    `ack` (client view) is how the logger learns `server_seq`; `seq`/`payload`
    feed instream reassembly; `fin` marks a client FIN at `seq + len(payload)`.
    """

    conn_id: int
    seq: int
    ack: int
    window: int
    fin: bool = False
    ts_val: int | None = None
    ts_ecr: int | None = None
    payload: bytes = b""


class ReadKind(enum.IntEnum):
    DATA = 0
    EOF = 1
    EAGAIN = 2
    ERROR = 3  # the call failed with an errno other than EAGAIN/EINTR: `length` holds it


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What one read-family call returned on a protected socket.

    `order` is the application-wide order of read results (assigned by the
    supervisor, which serialises NSW reports); `length` is the byte count for
    DATA, the errno for ERROR, and 0 otherwise.
    """

    conn_id: int
    order: int
    kind: ReadKind
    length: int = 0


READ_ITEM = struct.Struct("!QBI")  # order, kind, length: a RECOVER_READS entry
_BULK = 1024  # entries unpacked per struct call (`ReadLog._columns`)
_READ_BULK = struct.Struct("!" + "QBI" * _BULK)
_KINDS = tuple(ReadKind)


class ReadLog(Sequence[ReadResult]):
    """One connection's logged read results in order, packed as the wire carries them.

    Recovery moves a connection's reads from the logger's state to the NSW shim's
    replay script; a small-read connection has one per ~1.4 KB of its instream (700
    for 1 MB), and an object per read at each step was most of a 1 MB replay's time.
    This keeps them as 13-byte entries (`!QBI`: order, kind, length) from the
    logger's answer to the script (`script()`); it reads as a sequence of
    `ReadResult` for everything else.
    """

    __slots__ = ("conn_id", "packed", "_n")
    ITEM = READ_ITEM.size

    def __init__(self, conn_id: int, packed: bytes = b"") -> None:
        if len(packed) % READ_ITEM.size:
            raise ValueError(f"{len(packed)} bytes of reads is not a whole number of entries")
        kinds = packed[8 :: READ_ITEM.size]
        if kinds and max(kinds) >= len(_KINDS):
            raise ValueError(f"unknown read kind {max(kinds)}")
        self.conn_id = conn_id
        self.packed = bytes(packed)
        self._n = len(packed) // READ_ITEM.size

    @classmethod
    def from_results(cls, conn_id: int, reads: Iterable[ReadResult]) -> ReadLog:
        return cls.from_tuples(conn_id, ((r.order, int(r.kind), r.length) for r in reads))

    @classmethod
    def from_tuples(cls, conn_id: int, reads: Iterable[tuple[int, int, int]]) -> ReadLog:
        """From (order, kind, length) tuples, in the order given."""
        return cls(conn_id, b"".join(itertools.starmap(READ_ITEM.pack, reads)))

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> ReadResult: ...
    @overload
    def __getitem__(self, i: slice) -> ReadLog: ...
    def __getitem__(self, i: int | slice) -> ReadResult | ReadLog:
        size = READ_ITEM.size
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step != 1:
                picked = [self[j] for j in range(start, stop, step)]
                return ReadLog.from_results(self.conn_id, picked)
            return ReadLog(self.conn_id, self.packed[start * size : max(start, stop) * size])
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("read index out of range")
        o, k, n = READ_ITEM.unpack_from(self.packed, i * size)
        return ReadResult(self.conn_id, o, _KINDS[k], n)

    def __iter__(self) -> Iterator[ReadResult]:
        cid, kinds = self.conn_id, _KINDS
        for o, k, n in READ_ITEM.iter_unpack(self.packed):
            yield ReadResult(cid, o, kinds[k], n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReadLog):
            return self.conn_id == other.conn_id and self.packed == other.packed
        if isinstance(other, Sequence):
            return len(other) == self._n and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ReadLog(conn {self.conn_id}, {self._n} reads)"

    def summary(self) -> tuple[bool, int]:
        """(orders strictly ascending, bytes the DATA reads returned): what planning
        checks, in one pass. Unpacked a thousand entries per struct call: a 1 GiB log
        of 64 KiB reads has 16k of them, and an entry at a time took ~7 ms of the
        restart (~2 ms now)."""
        flat: list[int] = []
        mv = memoryview(self.packed)
        whole = len(mv) // _READ_BULK.size * _READ_BULK.size
        for t in _READ_BULK.iter_unpack(mv[:whole]):
            flat.extend(t)
        rest = (len(mv) - whole) // READ_ITEM.size
        if rest:
            flat.extend(struct.unpack("!" + "QBI" * rest, mv[whole:]))
        orders, kinds, lengths = flat[0::3], flat[1::3], flat[2::3]
        del flat
        ordered = all(map(operator.lt, orders, itertools.islice(orders, 1, None)))
        if kinds.count(ReadKind.DATA) == len(kinds):
            return ordered, sum(lengths)
        return ordered, sum(itertools.compress(lengths, map(ReadKind.DATA.__eq__, kinds)))

    def in_order(self) -> bool:
        """Orders strictly ascending (what the logger sends)."""
        return self.summary()[0]

    def data_bytes(self) -> int:
        """Bytes the DATA reads returned."""
        return self.summary()[1]

    def script(self) -> bytes:
        """The NSW replay script: (kind, value) as two little-endian u32 per read, in
        order (`ftcp.nsw.proto` SCRIPT entries)."""
        p, size = self.packed, READ_ITEM.size
        out = bytearray(8 * self._n)
        # byte slices, not a loop over the entries: it runs between the rebuilt
        # connection and the replaying accept's return (720 reads: 5 µs, against 66 µs
        # for a loop, timed alone; ~0.15 ms inside a recovery)
        out[0::8] = p[8::size]  # the kind, one byte: the low byte of a u32
        for i in range(4):  # the length: big-endian in the entry, little-endian here
            out[4 + i :: 8] = p[12 - i :: size]
        return bytes(out)


@dataclass(frozen=True, slots=True)
class WriteMark:
    """Outstream progress as NSW saw it: total bytes written and their checksum.

    Used to detect divergence during replay (a non-deterministic server).
    """

    conn_id: int
    total: int
    checksum: int


class CloseHow(enum.IntEnum):
    SHUT_RD = 0
    SHUT_WR = 1
    SHUT_RDWR = 2
    CLOSE = 3


@dataclass(frozen=True, slots=True)
class Close:
    """The application shut down or closed the socket (reported before it runs)."""

    conn_id: int
    how: CloseHow


@dataclass(frozen=True, slots=True)
class Finished:
    """The connection is over on both sides: its records may be deleted."""

    conn_id: int


Record = Handshake | InSegment | ReadResult | WriteMark | Close | Finished


class Arrival:
    """How much of a connection's logged instream has arrived so far.

    Recovery streams the logger's answer into the rebuild: a connection is planned
    once its head and reads are in, and its instream buffer (allocated at its full
    length) fills while the rebuild already runs; what reads it (refill, TCP_REPAIR
    queue, checksum sums) stops at `received`."""

    __slots__ = ("received", "total")

    def __init__(self, total: int, received: int = 0) -> None:
        self.total = total
        self.received = received

    @property
    def complete(self) -> bool:
        return self.received >= self.total

    def __repr__(self) -> str:
        return f"Arrival({self.received}/{self.total})"


@dataclass(slots=True)
class ConnectionLog:
    """Everything logged about one connection, as recovery receives it."""

    handshake: Handshake
    stable_seq: int  # first instream byte not logged (contiguous from c_isn + 1)
    server_seq: int  # highest client ack seen (client view of the outstream)
    instream: bytes  # logged bytes [c_isn + 1, stable_seq), FIN excluded
    client_fin: bool  # a client FIN at stable_seq is logged
    reads: Sequence[ReadResult] = field(default_factory=list)  # a ReadLog from the logger
    write_mark: WriteMark | None = None
    closes: list[Close] = field(default_factory=list)
    client_window: int = 0
    client_ts_val: int | None = None
    # the latest TSecr the client sent: a TSval it had from the server (a rebuild on
    # another host starts its TSvals past it: the client's PAWS check)
    client_ts_ecr: int | None = None
