"""Inputs to and actions from the per-connection FT core (`ftcp.core.conn`).

Sans-IO in the style of h11/aioquic: the I/O layers (SSW's packet loop, the
NSW agent, the supervisor) turn what they see into *inputs*, feed them to
`Connection.handle()`, and carry out the *actions* it returns. Every input
carries `now` (seconds, any monotonic origin); the core never reads a clock.

Segments are described by parsed fields, never bytes. A segment the core may
hold or deliver carries an `ident` chosen by the I/O layer (an NFQUEUE packet
id, say); actions name it back. Sequence numbers are 32-bit ints, compared
only through `ftcp.core.seq`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ftcp.core.records import CloseHow, ReadResult, Record, SynOptions
from ftcp.core.replay import RecoveryPlan

# TCP flags (same values as `ftcp.core.packet`; defined here so the core does not
# depend on the byte-level module).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

SackBlocks = tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class _Segment:
    """Parsed TCP header fields of one segment (shared by both directions).

    `window` is the raw 16-bit field (unscaled). `payload_len` is the TCP
    payload length; `payload` may be left empty for server segments (the core
    never needs their bytes) but must be given for client segments (they are
    logged). `syn_opts` is set on a SYN; `ts_val`/`ts_ecr` when the segment
    carries a timestamp option; `sack` holds SACK block edges `(left, right)`.
    """

    ident: int
    now: float
    seq: int
    ack: int
    flags: int
    window: int
    payload_len: int = 0
    payload: bytes = b""
    syn_opts: SynOptions | None = None
    ts_val: int | None = None
    ts_ecr: int | None = None
    sack: SackBlocks = ()

    def __post_init__(self) -> None:
        if self.payload and self.payload_len == 0:
            object.__setattr__(self, "payload_len", len(self.payload))
        elif self.payload and len(self.payload) != self.payload_len:
            raise ValueError(f"payload_len {self.payload_len} != len(payload) {len(self.payload)}")

    @property
    def seg_len(self) -> int:
        """Sequence space consumed: payload plus one for SYN and one for FIN."""
        return self.payload_len + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


@dataclass(frozen=True, slots=True)
class ClientSegment(_Segment):
    """A segment from IP toward the server's TCP (client view of everything)."""


@dataclass(frozen=True, slots=True)
class ServerSegment(_Segment):
    """A segment from the server's TCP toward IP (kernel view of the outstream)."""


@dataclass(frozen=True, slots=True)
class LoggerAck:
    """The logger made more of this connection durable.

    `stable_seq`: the instream is logged contiguously up to (excluding) it.
    `fin`: a client FIN right at `stable_seq` is logged (ack limit is one more).
    `handshake`: the `Handshake` record is logged.
    """

    now: float
    stable_seq: int | None = None
    fin: bool = False
    handshake: bool = False


@dataclass(frozen=True, slots=True)
class ReadReported:
    """NSW reports one read result of the application on this socket."""

    now: float
    result: ReadResult


@dataclass(frozen=True, slots=True)
class CloseReported:
    """NSW saw the application shut down or close the socket (before the call runs,
    after the process's output commit: `ftcp.core.commit`). Invariant 4: from now on
    a FIN (or, after a close, an RST) from the server's TCP is the application's."""

    now: float
    how: CloseHow


@dataclass(frozen=True, slots=True)
class Timer:
    """The deadline from `Connection.get_timer()` passed."""

    now: float


@dataclass(frozen=True, slots=True)
class ProcessDied:
    """The supervisor learned the application died (pidfd/waitpid)."""

    now: float


@dataclass(frozen=True, slots=True)
class Rebuild:
    """The restarted application calls accept: rebuild the kernel connection.

    The same `plan` is what the shim replays (its `reads`, its `discard`), so both
    sides of the recovery agree on it.
    """

    now: float
    plan: RecoveryPlan
    # `--restore repair`: the fabricated handshake only makes the application's accept
    # return; the accepted socket is then rebuilt in place with TCP_REPAIR (`Repaired`)
    repair: bool = False


@dataclass(frozen=True, slots=True)
class Repaired:
    """The accepted socket was rebuilt with TCP_REPAIR (`--restore repair`).

    It has the original sequence numbers (send: `s_isn + 1 + discard`), options,
    window scales and a TSval clock at the client's floor, so nothing is translated
    (`delta_seq = 0`); its receive queue holds the logged instream up to `rcv_nxt`
    (the rest, and a logged client FIN, are refilled by SSW as in a handshake rebuild).
    `ok=False`: the repair failed before the socket was touched; the handshake
    connection is kept and translated as in `--restore handshake`.
    """

    now: float
    rcv_nxt: int = 0
    rcv_wnd: int = 0
    ok: bool = True


@dataclass(frozen=True, slots=True)
class InstreamArrived:
    """More of the logged instream arrived from the logger (the plan's `arrival`
    grew): refill what the window allows."""

    now: float


@dataclass(frozen=True, slots=True)
class ReplayDone:
    """NSW replayed the last logged read result: the connection is live again."""

    now: float


@dataclass(frozen=True, slots=True)
class ResetClient:
    """The connection cannot be recovered (recovery gave up, a failed repair, a
    divergence that cannot go on): the client gets the reset it would have got
    without ftcp, now, and the connection is over."""

    now: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The connection is over on both sides (the socket is gone)."""

    now: float


Input = (
    ClientSegment
    | ServerSegment
    | LoggerAck
    | ReadReported
    | CloseReported
    | Timer
    | ProcessDied
    | Rebuild
    | Repaired
    | InstreamArrived
    | ReplayDone
    | ResetClient
    | Finish
)


# -------------------------------------------------------------------------- actions


class Direction(enum.Enum):
    TO_CLIENT = "to_client"  # toward IP / the client
    TO_SERVER = "to_server"  # toward the server's TCP


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Header fields to change on a delivered segment; `None` = unchanged."""

    seq: int | None = None
    ack: int | None = None
    window: int | None = None
    ts_val: int | None = None
    ts_ecr: int | None = None
    sack: SackBlocks | None = None

    @property
    def empty(self) -> bool:
        return (
            self.seq is None
            and self.ack is None
            and self.window is None
            and self.ts_val is None
            and self.ts_ecr is None
            and self.sack is None
        )


@dataclass(frozen=True, slots=True)
class Deliver:
    """Let segment `ident` through (now, or out of `Hold`); `rewrite=None`: untouched."""

    ident: int
    rewrite: Rewrite | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """Discard segment `ident` (fresh or held)."""

    ident: int
    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep segment `ident`; a later `Deliver` or `Drop` names it again."""

    ident: int
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """Send a record to the logger."""

    record: Record


@dataclass(frozen=True, slots=True)
class OutSegment:
    """Fields of a segment the core makes up (the I/O layer builds the bytes)."""

    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes | memoryview = b""  # a refill's is a view of the logged instream
    syn_opts: SynOptions | None = None
    ts_val: int | None = None
    ts_ecr: int | None = None
    # the payload's offset in the connection's logged instream (-1: not from it): the
    # I/O layer may have its checksum summed already (`ftcp.ssw.engine`)
    payload_at: int = -1


@dataclass(frozen=True, slots=True)
class Fabricate:
    """Inject a segment: toward the client (an ack) or the server (recovery)."""

    direction: Direction
    segment: OutSegment
    reason: str


@dataclass(frozen=True, slots=True)
class StartRecovery:
    """SSW saw a FIN/RST the application did not ask for: the process died."""

    conn_id: int
    reason: str


Action = Deliver | Drop | Hold | Log | Fabricate | StartRecovery
