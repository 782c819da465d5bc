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
from dataclasses import dataclass, field


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


@dataclass(slots=True)
class ConnectionLog:
    """Everything logged about one connection, as recovery receives it."""

    handshake: Handshake
    stable_seq: int  # first instream byte not logged (contiguous from c_isn + 1)
    server_seq: int  # highest client ack seen (client view of the outstream)
    instream: bytes  # logged bytes [c_isn + 1, stable_seq), FIN excluded
    client_fin: bool  # a client FIN at stable_seq is logged
    reads: list[ReadResult] = field(default_factory=list)
    write_mark: WriteMark | None = None
    closes: list[Close] = field(default_factory=list)
    client_window: int = 0
    client_ts_val: int | None = None
