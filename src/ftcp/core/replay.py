"""Recovery from logged records (DESIGN.md "Recovery after a process crash",
invariant 5), sans-IO.

`plan_recovery(log)` turns one `ConnectionLog` into a `RecoveryPlan`: the
read results to replay, how many output bytes to discard, the instream to
refill, and the handshake and sequence/timestamp mapping of the rebuild. The
same plan drives both sides of recovery:

* SSW's `Connection` (`Rebuild(now, plan)`): SYN, third ack, refill,
  translation by `delta_seq` and the timestamp offset;
* the NSW shim: it serves `plan.reads` to the restarted application as its
  script (each read returns exactly the logged result) and swallows its first
  `plan.discard` output bytes.

`OutstreamCheck` is invariant 5's check: the output the restarted application
regenerates must be the output it produced before the crash, compared as
`(bytes, CRC-32C)` points the shim reports (`outstream_crc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ftcp.core import seq
from ftcp.core.records import (
    Arrival,
    Close,
    CloseHow,
    ConnectionLog,
    ReadLog,
    SynOptions,
    WriteMark,
)
from ftcp.errors import LocalProtocolError

TS_HZ = 1000  # assumed timestamp clock of the server's TCP (Linux: 1 kHz)
TS_UNKNOWN_JUMP = 1 << 30  # forward jump when the last TSval sent is unknown
# past the client's latest echo of our TSval: a rebuild on another host starts there (the
# old server sent at most seconds' worth of ticks more; a repeated takeover moves on from
# the new echo, so the jumps never add up to half the TSval space)
TS_ECHO_JUMP = 1 << 20
DEFAULT_MSS = 536

_FIN_CLOSES = (CloseHow.SHUT_WR, CloseHow.SHUT_RDWR, CloseHow.CLOSE)


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def outstream_crc(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data`, continuing from `crc`: the running checksum of
    an outstream, as the shim computes it (in C, with the CPU's crc32 instruction)."""
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in bytes(data):
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Divergence:
    """Replay produced something other than what was logged (a nondeterministic server):
    on connection `conn_id`, at outstream byte `offset` (-1: a read could not be
    replayed)."""

    conn_id: int
    offset: int
    detail: str


class OutstreamCheck:
    """Invariant 5's check, for one application across its restarts.

    Before a crash the shim reports each connection's output so far, `(total bytes,
    CRC-32C)`, at every live read and at a close (`note`). In replay it reports the
    same after each replayed read that moved it, where the discarded prefix ends, and
    where replay ends (`check`): where the same prefix was noted before, the two must
    agree. Prefixes are compared at equal byte offsets, so a server whose threads
    interleave reads and writes differently from one run to the next still agrees.
    A connection diverges at most once per recovery (`new_recovery`).
    """

    __slots__ = ("_marks", "_diverged")

    def __init__(self) -> None:
        self._marks: dict[int, dict[int, int]] = {}  # conn -> {output bytes: their CRC}
        self._diverged: set[int] = set()

    def note(self, conn_id: int, total: int, crc: int) -> None:
        """The application had written `total` bytes with CRC `crc` (live)."""
        if total:
            self._marks.setdefault(conn_id, {})[total] = crc

    def check(self, conn_id: int, total: int, crc: int, where: str) -> Divergence | None:
        """The replayed application has written `total` bytes with CRC `crc`."""
        want = self._marks.get(conn_id, {}).get(total)
        if want is None or want == crc or conn_id in self._diverged:
            return None
        self._diverged.add(conn_id)
        return Divergence(
            conn_id,
            total,
            f"{where}: the first {total} output bytes have crc {crc:#010x}, "
            f"before the crash {want:#010x}",
        )

    def unreplayable(self, conn_id: int, index: int, why: str) -> Divergence:
        """The shim could not return logged read `index` as it was (`why`)."""
        return Divergence(conn_id, -1, f"read {index} could not be replayed ({why})")

    def new_recovery(self) -> None:
        self._diverged.clear()

    def forget(self, conn_id: int) -> None:
        """The connection is over: its points are not needed any more."""
        self._marks.pop(conn_id, None)
        self._diverged.discard(conn_id)


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """Everything one connection's recovery needs (see module docstring)."""

    conn_id: int
    accept_order: int
    c_isn: int
    s_isn: int
    client_opts: SynOptions
    server_opts: SynOptions
    stable_seq: int  # instream logged contiguously up to here
    client_fin: bool  # a client FIN at stable_seq is logged
    server_seq: int  # highest client ack known (client view of the outstream)
    discard: int  # A: output bytes already acknowledged by the client
    fin_acked: bool  # the client already acknowledged our FIN
    instream: bytes  # [c_isn + 1, stable_seq)
    reads: ReadLog  # in order
    write_marks: tuple[WriteMark, ...]
    closes: tuple[Close, ...]
    client_window: int  # latest raw window field of the client
    client_ts_val: int | None  # latest client TSval logged
    ts_floor: int | None  # lowest TSval the client may see next (None: unknown)
    # the instream still arriving from the logger (None: all of it is here)
    arrival: Arrival | None = field(default=None, compare=False)

    @property
    def instream_ready(self) -> int:
        """Instream bytes here (the whole log unless it is still arriving)."""
        n = len(self.instream)
        return n if self.arrival is None else min(n, self.arrival.received)

    @property
    def instream_complete(self) -> bool:
        return self.instream_ready >= len(self.instream)

    # ---------------------------------------------------------------- negotiated

    @property
    def ws_ok(self) -> bool:
        return self.client_opts.wscale is not None and self.server_opts.wscale is not None

    @property
    def ts_ok(self) -> bool:
        return self.client_opts.ts_val is not None and self.server_opts.ts_val is not None

    @property
    def sack_ok(self) -> bool:
        return self.client_opts.sack_ok and self.server_opts.sack_ok

    @property
    def client_wscale(self) -> int:
        """Scale of the client's window fields (as both kernels see them)."""
        return (self.client_opts.wscale or 0) if self.ws_ok else 0

    @property
    def server_wscale(self) -> int:
        """Scale the client applies to our window fields (the original SYN-ACK's)."""
        return (self.server_opts.wscale or 0) if self.ws_ok else 0

    @property
    def ack_limit(self) -> int:
        return seq.add(self.stable_seq, 1) if self.client_fin else self.stable_seq

    # ------------------------------------------------------------ the mapping

    def delta_seq(self, n_isn: int) -> int:
        """`client view - kernel view` for outstream sequence numbers after rebuild.

        Application output byte `i` (0-based, counted since the application
        started) has client-view sequence number `s_isn + 1 + i`. The restarted
        application writes the same bytes; NSW swallows the first `A = discard`
        of them, so the new kernel's byte `j` (kernel view `n_isn + 1 + j`) is
        output byte `A + j`, i.e. client view `s_isn + 1 + A + j`. The
        difference is `s_isn + A - n_isn` for every `j` (and for the FIN, which
        follows the last byte in both views): DESIGN.md step 6. The paper's
        `s_isn - n_isn` is the special case `A = 0`; with writes discarded it
        would map the first regenerated byte onto output byte 0.
        """
        return seq.usub(seq.add(self.s_isn, self.discard), n_isn)

    def ts_offset(self, n_tsval: int, floor: int | None) -> int:
        """Offset added to the new kernel's TSvals (client view = kernel + offset).

        The first TSval the new kernel sent (`n_tsval`, in its SYN-ACK) maps to
        `floor` (at least one tick past the last TSval the client saw), so the
        client's PAWS check never sees time run backwards. Unknown floor: jump a
        quarter of the TS space forward from the original SYN-ACK's TSval.
        """
        if floor is None:
            floor = seq.add(self.server_opts.ts_val or 0, TS_UNKNOWN_JUMP)
        return seq.usub(floor, n_tsval)


def plan_recovery(
    log: ConnectionLog,
    *,
    server_seq_hint: int | None = None,
    last_ts_out: int | None = None,
    ts_elapsed: float = 0.0,
    write_marks: Sequence[WriteMark] = (),
    arrival: Arrival | None = None,
) -> RecoveryPlan:
    """Plan one connection's recovery from its log.

    `arrival`: the log's instream is still arriving (its buffer has its full length;
    see `Arrival`).

    `server_seq_hint`: a client ack the surviving SSW saw (may be newer than the
    logged one; the client has those bytes, so they are safe to discard).
    `last_ts_out`/`ts_elapsed`: the last TSval the client was sent and the seconds
    since, when SSW knows them. `write_marks`: extra checkpoints besides
    `log.write_mark` for divergence detection.
    """
    hs = log.handshake
    first_out = seq.add(hs.s_isn, 1)
    server_seq = log.server_seq
    if server_seq_hint is not None:
        server_seq = seq.max_(server_seq, server_seq_hint)
    acked = seq.sub(server_seq, first_out)
    if acked < 0:
        raise LocalProtocolError(f"server_seq {server_seq} is before s_isn + 1 = {first_out}")
    marks = sorted(
        {*write_marks, *([log.write_mark] if log.write_mark else [])}, key=lambda m: m.total
    )
    fin_closed = any(c.how in _FIN_CLOSES for c in log.closes)
    total = marks[-1].total if marks else None
    fin_acked = False
    if fin_closed and total is not None and acked == total + 1:
        # A FIN-producing close is logged after every earlier WriteMark, so `total` is
        # final and the client acknowledged our FIN as well: it is not an output byte.
        acked = total
        fin_acked = True
    instream = log.instream
    if len(instream) != seq.sub(log.stable_seq, seq.add(hs.c_isn, 1)):
        raise LocalProtocolError(
            f"conn {hs.conn_id}: instream has {len(instream)} bytes, stable_seq says "
            f"{seq.sub(log.stable_seq, seq.add(hs.c_isn, 1))}"
        )
    reads = log.reads
    ordered, data_read = reads.summary() if isinstance(reads, ReadLog) else (False, 0)
    if not ordered:
        reads = ReadLog.from_results(hs.conn_id, sorted(reads, key=lambda r: r.order))
        data_read = reads.data_bytes()
    if data_read > len(instream):
        raise LocalProtocolError(
            f"conn {hs.conn_id}: reads consumed {data_read} bytes, only {len(instream)} logged"
        )
    floor = None
    if last_ts_out is not None:
        floor = seq.add(last_ts_out, 1 + max(0, int(ts_elapsed * TS_HZ)))
    elif log.client_ts_ecr is not None:  # this host never sent it anything (a takeover)
        floor = seq.add(log.client_ts_ecr, TS_ECHO_JUMP)
    return RecoveryPlan(
        conn_id=hs.conn_id,
        accept_order=hs.accept_order,
        c_isn=hs.c_isn,
        s_isn=hs.s_isn,
        client_opts=hs.client_opts,
        server_opts=hs.server_opts,
        stable_seq=log.stable_seq,
        client_fin=log.client_fin,
        server_seq=server_seq,
        discard=acked,
        fin_acked=fin_acked,
        instream=instream,
        reads=reads,
        write_marks=tuple(marks),
        closes=tuple(log.closes),
        client_window=log.client_window,
        client_ts_val=log.client_ts_val,
        ts_floor=floor,
        arrival=arrival,
    )


def recovery_order(logs: Sequence[ConnectionLog]) -> list[ConnectionLog]:
    """Connections in their original accept order (DESIGN.md step 4)."""
    return sorted(logs, key=lambda lg: lg.handshake.accept_order)
