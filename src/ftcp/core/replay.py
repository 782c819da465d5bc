"""Recovery planning from logged records (DESIGN.md "Recovery after a process crash").

`plan_recovery(log)` turns one `ConnectionLog` into a `RecoveryPlan`: the SYN
to fabricate, the third ack, the instream to refill, the read results to
replay, how many output bytes to discard and the sequence/timestamp mapping.
The same plan drives both sides of recovery:

* SSW's `Connection` (`Rebuild(now, plan)`): SYN, third ack, refill,
  translation by `delta_seq` and the timestamp offset;
* NSW's agent: `plan.read_replayer()` answers each read of the restarted
  application with the logged result, `plan.write_filter()` swallows the
  first `discard` output bytes and checks the regenerated outstream against
  the logged checksums (divergence detection).

Everything is sans-IO: no sockets, no clock.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ftcp.core import seq
from ftcp.core.events import ACK, FIN, PSH, SYN, OutSegment
from ftcp.core.packet import BlockSums
from ftcp.core.records import (
    Arrival,
    Close,
    CloseHow,
    ConnectionLog,
    ReadKind,
    ReadLog,
    ReadResult,
    SynOptions,
    WriteMark,
)
from ftcp.errors import FtcpError, LocalProtocolError

TS_HZ = 1000  # assumed timestamp clock of the server's TCP (Linux: 1 kHz)
TS_UNKNOWN_JUMP = 1 << 30  # forward jump when the last TSval sent is unknown
DEFAULT_MSS = 536

_FIN_CLOSES = (CloseHow.SHUT_WR, CloseHow.SHUT_RDWR, CloseHow.CLOSE)


def outstream_checksum(data: bytes, prev: int = 0) -> int:
    """Running checksum of an outstream (CRC-32, chained): what `WriteMark` carries."""
    return zlib.crc32(data, prev)


@dataclass(frozen=True, slots=True)
class Divergence:
    """Replay produced something other than what was logged (a nondeterministic server).

    `offset`: the outstream byte offset (or read order, for `what="read"`) where
    the mismatch was detected; `verified`: the outstream is known to agree up to
    this offset.
    """

    conn_id: int
    what: str  # "write" | "read"
    offset: int
    verified: int
    detail: str


class DivergenceError(FtcpError):
    """Raised by the replay helpers when their policy is `"raise"`."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(
            f"connection {divergence.conn_id}: {divergence.what} diverged at offset "
            f"{divergence.offset} (verified up to {divergence.verified}): {divergence.detail}"
        )
        self.divergence = divergence


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
    # checksum block sums of `instream` (`presum` while the application starts):
    # refill payloads carry their sum, so building a segment folds its headers only
    sums: BlockSums = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sums", BlockSums(self.instream))

    def presum(self, max_blocks: int | None = None) -> bool:
        """Sum up to `max_blocks` more blocks of the instream that has arrived; True when
        all of those are."""
        return self.sums.precompute(max_blocks, self.instream_ready)

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

    # ------------------------------------------------------------- the handshake

    def syn(self) -> OutSegment:
        """The SYN to inject toward the new server TCP, as if from the client.

        Original client ISN, so the instream needs no remapping; original client
        options, but only those the original handshake negotiated (an option the
        server had refused must not be agreed with the new kernel: the client
        would not understand it).
        """
        o = self.client_opts
        opts = SynOptions(
            mss=o.mss,
            wscale=o.wscale if self.ws_ok else None,
            sack_ok=self.sack_ok,
            ts_val=o.ts_val if self.ts_ok else None,
            ts_ecr=0 if self.ts_ok else None,
        )
        window = min(0xFFFF, self.client_window << self.client_wscale)
        return OutSegment(
            seq=self.c_isn,
            ack=0,
            flags=SYN,
            window=window,
            syn_opts=opts,
            ts_val=opts.ts_val,
            ts_ecr=opts.ts_ecr,
        )

    def third_ack(self, n_isn: int, n_tsval: int | None) -> OutSegment:
        """The ack completing the rebuilt handshake (kernel view)."""
        return OutSegment(
            seq=seq.add(self.c_isn, 1),
            ack=seq.add(n_isn, 1),
            flags=ACK,
            window=self.client_window,
            ts_val=self._client_ts() if self.ts_ok else None,
            ts_ecr=n_tsval if self.ts_ok else None,
        )

    def _client_ts(self) -> int | None:
        return self.client_ts_val if self.client_ts_val is not None else self.client_opts.ts_val

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
        return (self.s_isn + self.discard - n_isn) & seq.MASK

    def ts_offset(self, n_tsval: int, floor: int | None) -> int:
        """Offset added to the new kernel's TSvals (client view = kernel + offset).

        The first TSval the new kernel sent (`n_tsval`, in its SYN-ACK) maps to
        `floor` (at least one tick past the last TSval the client saw), so the
        client's PAWS check never sees time run backwards. Unknown floor: jump a
        quarter of the TS space forward from the original SYN-ACK's TSval.
        """
        if floor is None:
            floor = seq.add(self.server_opts.ts_val or 0, TS_UNKNOWN_JUMP)
        return (floor - n_tsval) & seq.MASK

    # ------------------------------------------------------------------- refill

    def instream_chunks(self, start: int, limit: int, mss: int) -> Iterator[tuple[int, bytes]]:
        """Logged instream bytes in `[start, min(limit, stable_seq))`, in `mss` pieces
        (only what has arrived: see `arrival`)."""
        base = seq.add(self.c_isn, 1)
        start = seq.max_(start, base)
        end = seq.min_(limit, self.stable_seq)
        if self.arrival is not None:
            end = seq.min_(end, seq.add(base, self.instream_ready))
        while seq.lt(start, end):
            n = min(mss, seq.sub(end, start))
            off = seq.sub(start, base)
            yield start, self.sums.summed(off, off + n)
            start = seq.add(start, n)

    def refill_segment(
        self,
        sq: int,
        payload: bytes,
        ack: int,
        window: int,
        ts_ecr: int | None,
        fin: bool = False,
        ts_val: int | None = None,
    ) -> OutSegment:
        """One refill segment toward the new server TCP (kernel view).

        `ts_val`: the client's latest TSval (default: the logged one). It must not
        be older than what the new kernel has seen, or PAWS drops the segment.
        """
        if ts_val is None:
            ts_val = self._client_ts()
        return OutSegment(
            seq=sq,
            ack=ack,
            flags=ACK | (FIN if fin else PSH if payload else 0),
            window=window,
            payload=payload,
            ts_val=ts_val if self.ts_ok else None,
            ts_ecr=ts_ecr if self.ts_ok else None,
        )

    # --------------------------------------------------------------- NSW helpers

    def read_replayer(self, on_divergence: str = "raise") -> ReadReplayer:
        return ReadReplayer(self.conn_id, self.reads, self.instream, on_divergence)

    def write_filter(self, on_divergence: str = "raise") -> WriteFilter:
        return WriteFilter(self.conn_id, self.discard, self.write_marks, on_divergence)


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


# ------------------------------------------------------------------ NSW: reads


@dataclass(frozen=True, slots=True)
class ReplayRead:
    """The answer to one read call of the restarted application.

    `kind is None`: replay is over, do the real read (the connection is live).
    `ready=False`: return nothing yet; wait until `length` bytes are readable
    (the refill is still under way), then ask again.
    Otherwise return exactly the logged result: `length` bytes (`data` is what
    the log says they are), EOF, or EAGAIN.
    """

    kind: ReadKind | None
    length: int = 0
    data: bytes = b""
    order: int = -1
    ready: bool = True


_LIVE = ReplayRead(kind=None)


class ReadReplayer:
    """Serves the logged read results of one connection, in order."""

    __slots__ = ("conn_id", "_reads", "_instream", "_i", "_pos", "_policy", "divergences")

    def __init__(
        self,
        conn_id: int,
        reads: Sequence[ReadResult],
        instream: bytes,
        on_divergence: str = "raise",
    ) -> None:
        self.conn_id = conn_id
        self._reads = list(reads)
        self._instream = instream
        self._i = 0
        self._pos = 0  # instream bytes consumed by replayed reads
        self._policy = on_divergence
        self.divergences: list[Divergence] = []

    @property
    def done(self) -> bool:
        return self._i >= len(self._reads)

    @property
    def consumed(self) -> int:
        """Instream bytes handed to the application so far."""
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._reads) - self._i

    def peek(self) -> ReadResult | None:
        """The next logged result (its `order` sequences whole-history replay)."""
        return self._reads[self._i] if self._i < len(self._reads) else None

    def read(self, max_len: int, available: int) -> ReplayRead:
        """A read of up to `max_len` bytes while `available` are readable in the kernel."""
        r = self.peek()
        if r is None:
            return _LIVE
        if r.kind == ReadKind.DATA:
            if max_len < r.length:
                self._diverge(
                    r.order, f"read asks for {max_len} bytes, the log returned {r.length}"
                )
                r = ReadResult(r.conn_id, r.order, r.kind, max_len)  # best effort
            if available < r.length:
                return ReplayRead(ReadKind.DATA, r.length, order=r.order, ready=False)
            data = self._instream[self._pos : self._pos + r.length]
            self._pos += r.length
            self._i += 1
            return ReplayRead(ReadKind.DATA, r.length, data, r.order)
        self._i += 1
        return ReplayRead(r.kind, 0, b"", r.order)

    def _diverge(self, order: int, detail: str) -> None:
        d = Divergence(self.conn_id, "read", order, self._pos, detail)
        self.divergences.append(d)
        if self._policy == "raise":
            raise DivergenceError(d)


# ----------------------------------------------------------------- NSW: writes


class OutstreamDigest:
    """NSW's running count and checksum of one outstream (normal operation)."""

    __slots__ = ("conn_id", "total", "checksum")

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.total = 0
        self.checksum = 0

    def update(self, data: bytes) -> WriteMark:
        self.checksum = outstream_checksum(data, self.checksum)
        self.total += len(data)
        return WriteMark(self.conn_id, self.total, self.checksum)


@dataclass(frozen=True, slots=True)
class FilteredWrite:
    """What to do with one write: swallow `discard` leading bytes, send the rest."""

    discard: int
    send: int


class WriteFilter:
    """Discards the first `discard` output bytes of the restarted application.

    A write that straddles the boundary is trimmed: its head is swallowed, its
    tail goes to the kernel. Every byte, swallowed or not, feeds a running
    checksum compared against each logged `WriteMark`; a mismatch is a
    `Divergence` at that mark's offset (verified up to the previous mark).
    """

    __slots__ = (
        "conn_id",
        "discard",
        "total",
        "checksum",
        "_marks",
        "_mi",
        "_verified",
        "_policy",
        "divergences",
    )

    def __init__(
        self,
        conn_id: int,
        discard: int,
        marks: Sequence[WriteMark] = (),
        on_divergence: str = "raise",
    ) -> None:
        if discard < 0:
            raise ValueError("discard must be >= 0")
        self.conn_id = conn_id
        self.discard = discard
        self.total = 0
        self.checksum = 0
        self._marks = sorted(marks, key=lambda m: m.total)
        self._mi = 0
        self._verified = 0
        self._policy = on_divergence
        self.divergences: list[Divergence] = []

    @property
    def discarding(self) -> bool:
        """Still swallowing already-acknowledged output."""
        return self.total < self.discard

    @property
    def verified(self) -> int:
        return self._verified

    def write(self, data: bytes) -> FilteredWrite:
        start = self.total
        swallow = max(0, min(len(data), self.discard - start))
        pos = 0
        while self._mi < len(self._marks) and self._marks[self._mi].total <= start + len(data):
            m = self._marks[self._mi]
            cut = m.total - start
            if cut >= pos:
                self.checksum = outstream_checksum(data[pos:cut], self.checksum)
                pos = cut
            self._mi += 1
            if self.checksum != m.checksum:
                d = Divergence(
                    self.conn_id,
                    "write",
                    m.total,
                    self._verified,
                    f"checksum {self.checksum:#010x} != logged {m.checksum:#010x}",
                )
                self.divergences.append(d)
                if self._policy == "raise":
                    self.total = start + pos
                    raise DivergenceError(d)
            else:
                self._verified = m.total
        self.checksum = outstream_checksum(data[pos:], self.checksum)
        self.total = start + len(data)
        return FilteredWrite(swallow, len(data) - swallow)
