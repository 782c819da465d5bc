"""What the logger knows about each application and connection (sans-IO).

`AppState.apply(records)` is the only place records change state. The daemon
calls it when a batch arrives (before the batch is durable; acks computed
here are held until it is), and the store calls it again, with the same
batches in the same order, when it replays its segments at startup — so a
record refused live (say, a segment for an unknown connection) is refused in
exactly the same way during replay, and the two states agree.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass, field

from ftcp.core import seq, wire
from ftcp.core.reassembly import Reassembler
from ftcp.core.records import (
    READ_ITEM,
    Close,
    ConnectionLog,
    Finished,
    Handshake,
    ReadLog,
    Record,
    WriteMark,
)
from ftcp.errors import LocalProtocolError, RemoteProtocolError

_INSEG_UNPACK = wire.INSEG.unpack_from
_INSEG_LEN = wire.INSEG.size
_READ_LEN = wire.READ.size
_T_INSEG = wire.TAG_INSEGMENT
_T_READ = wire.TAG_READ
_READ_ENTRY_AT = _READ_LEN - READ_ITEM.size  # where a READ record's entry starts
_READ_HEAD = struct.Struct("!xQQ").unpack_from  # a READ record's connection and order
# a READ record is tag, connection, then the entry (order, kind, length), which
# `_READ_HEAD` and `_READ_ENTRY_AT` rely on
assert wire.READ.format == "!BQ" + READ_ITEM.format.lstrip("!")


class ConnState:
    """One connection: reassembled instream plus everything recovery needs."""

    __slots__ = (
        "handshake",
        "reasm",
        "server_seq",
        "client_window",
        "client_ts_val",
        "client_ts_ecr",
        "reads",
        "reads_in_order",
        "write_mark",
        "closes",
        "finished",
        "acked",
    )

    def __init__(self, hs: Handshake) -> None:
        self.handshake = hs
        self.reasm = Reassembler(hs.c_isn)
        self.server_seq = seq.add(hs.s_isn, 1)
        self.client_window = 0
        self.client_ts_val: int | None = None
        self.client_ts_ecr: int | None = None
        # the reads as a RECOVER_READS body (`READ_ITEM`s), as they arrived: a recovery
        # sends it as it is unless one was stored ahead of the read-order watermark
        # (the only way they can be out of order), instead of sorting and packing ~700
        # tuples for 1 MB of small reads (0.10-0.19 ms of each answer)
        self.reads = bytearray()
        self.reads_in_order = True  # False once a read was stored ahead of the watermark
        self.write_mark: WriteMark | None = None
        self.closes: list[Close] = []
        self.finished = False
        # last (stable_seq, ack_limit) reported; the handshake ack implies the initial one
        self.acked: tuple[int, int] | None = (self.reasm.stable_seq, self.reasm.ack_limit)

    def to_log(self, live: bool = False) -> ConnectionLog:
        """`live`: the instream is the live buffer, not a copy (`Reassembler.live`: it
        may grow after this; its first `stable_seq - c_isn - 1` bytes are the log)."""
        r = self.reasm
        cid = self.handshake.conn_id
        if self.reads_in_order:
            reads = ReadLog(cid, self.reads)
        else:
            reads = ReadLog.from_tuples(cid, sorted(READ_ITEM.iter_unpack(self.reads)))
        return ConnectionLog(
            handshake=self.handshake,
            stable_seq=r.stable_seq,
            server_seq=self.server_seq,
            instream=r.live() if live else r.contiguous,  # type: ignore[arg-type]
            client_fin=r.fin_reached,
            reads=reads,
            write_mark=self.write_mark,
            closes=list(self.closes),
            client_window=self.client_window,
            client_ts_val=self.client_ts_val,
            client_ts_ecr=self.client_ts_ecr,
        )


@dataclass(slots=True)
class Applied:
    """What one batch changed: the acks to send once it is durable."""

    streams: dict[int, tuple[int, int]] = field(default_factory=dict)  # conn -> (stable, limit)
    handshakes: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    next_order: int | None = None  # set when the read watermark moved
    conns: set[int] = field(default_factory=set)  # every conn id the batch names
    tombstones: set[int] = field(default_factory=set)  # conns deleted by this batch
    errors: list[str] = field(default_factory=list)


class AppState:
    """Every connection of one application, and the global read-order watermark."""

    def __init__(self, app_id: str, whole_history: bool = False) -> None:
        self.app_id = app_id
        self.whole_history = whole_history
        self.conns: dict[int, ConnState] = {}
        self.deleted: set[int] = set()
        self.next_order = 0  # every read order < next_order is stored
        self._ooo: list[int] = []  # heap of stored orders > next_order
        self._ooo_set: set[int] = set()

    # -- read order watermark -------------------------------------------------

    def ooo_orders(self) -> tuple[int, ...]:
        return tuple(sorted(self._ooo_set))

    def restore_orders(self, next_order: int, ooo: tuple[int, ...]) -> None:
        """Merge a checkpoint (from the start of a segment)."""
        if next_order > self.next_order:
            self.next_order = next_order
        for o in ooo:
            self._add_order(o)
        self._advance()

    def _add_order(self, o: int) -> None:
        if o >= self.next_order and o not in self._ooo_set:
            self._ooo_set.add(o)
            heapq.heappush(self._ooo, o)

    def _advance(self) -> None:
        heap = self._ooo
        s = self._ooo_set
        while heap and heap[0] <= self.next_order:
            o = heapq.heappop(heap)
            s.discard(o)
            if o == self.next_order:
                self.next_order += 1

    # -- applying records -------------------------------------------------------

    def apply(self, records: list[Record]) -> Applied:
        """Apply record objects (tests, tools): the same path as the wire bytes."""
        return self.apply_raw(wire.encode_records_body(records))

    def apply_raw(self, body: bytes) -> Applied:
        """Apply one validated RECORDS body, in order (`wire.validate_records` first).

        Decoding is fused with applying: InSegments and ReadResults, the hot
        path, never become objects. Refused records are listed in `errors`.
        """
        out = Applied()
        conns = self.conns
        deleted = self.deleted
        out_conns = out.conns
        touched: set[int] = set()
        order_before = self.next_order
        inseg = _INSEG_UNPACK
        off = 0
        n = len(body)
        while off < n:
            tag = body[off]
            if tag == _T_INSEG:
                _, cid, sq, ack, win, flags, tsv, tse, plen = inseg(body, off)
                off += _INSEG_LEN
                end = off + plen
                payload = body[off:end]
                off = end
                out_conns.add(cid)
                c = conns.get(cid)
                if c is None:
                    if cid not in deleted:
                        out.errors.append(f"InSegment for unknown connection {cid}")
                    continue
                try:
                    c.reasm.add(sq, payload, bool(flags & 1))
                except RemoteProtocolError as e:
                    out.errors.append(f"connection {cid}: {e}")
                    continue
                if 0 < ((ack - c.server_seq) & 0xFFFFFFFF) < 0x80000000:  # seq.gt, inline
                    c.server_seq = ack
                c.client_window = win
                if flags & 2:
                    old = c.client_ts_val
                    if old is None or 0 < ((tsv - old) & 0xFFFFFFFF) < 0x80000000:
                        c.client_ts_val = tsv
                if flags & 4:
                    old = c.client_ts_ecr
                    if old is None or 0 < ((tse - old) & 0xFFFFFFFF) < 0x80000000:
                        c.client_ts_ecr = tse
                touched.add(cid)
            elif tag == _T_READ:
                cid, o = _READ_HEAD(body, off)
                entry = off + _READ_ENTRY_AT
                off += _READ_LEN
                out_conns.add(cid)
                c = conns.get(cid)
                if c is None:
                    if cid not in deleted:
                        out.errors.append(f"ReadResult for unknown connection {cid}")
                    continue
                if o < self.next_order or o in self._ooo_set:
                    continue  # already stored: a supervisor resending after a reconnect
                # the record's last 13 bytes are the RECOVER_READS entry (order, kind,
                # length), byte for byte
                c.reads += body[entry:off]
                if o == self.next_order:
                    # every lower order is stored: o is above all of this connection's
                    self.next_order = o + 1
                    if self._ooo:
                        self._advance()
                else:
                    # ahead of the watermark: a lower order of this connection may follow
                    c.reads_in_order = False
                    self._add_order(o)
            else:
                r, off = wire.decode_record_at(body, off)
                self._apply_other(r, out, touched)
        for cid in touched:
            c = conns.get(cid)
            if c is None:
                continue
            rs = c.reasm
            w = (rs.stable_seq, rs.ack_limit)
            if w != c.acked:
                c.acked = w
                out.streams[cid] = w
        if self.next_order != order_before:
            out.next_order = self.next_order
        return out

    def _apply_other(self, r: Record, out: Applied, touched: set[int]) -> None:
        cid = r.conn_id
        out.conns.add(cid)
        cls = type(r)
        if cls is Handshake:
            self._handshake(r, out)  # type: ignore[arg-type]
            return
        c = self.conns.get(cid)
        if c is None:
            if cid not in self.deleted:
                out.errors.append(f"{cls.__name__} for unknown connection {cid}")
            return
        if cls is WriteMark:
            wm = c.write_mark
            if wm is None or r.total >= wm.total:  # type: ignore[union-attr]
                c.write_mark = r  # type: ignore[assignment]
        elif cls is Close:
            if r not in c.closes:  # a resend after a reconnect is not a second close
                c.closes.append(r)  # type: ignore[arg-type]
        elif cls is Finished:
            c.finished = True
            out.finished.append(cid)
            if not self.whole_history:
                # what this batch logged before the Finished (a client FIN, typically)
                # is acknowledged all the same: the SSW may be waiting for it
                touched.discard(cid)
                rs = c.reasm
                w = (rs.stable_seq, rs.ack_limit)
                if w != c.acked:
                    c.acked = w
                    out.streams[cid] = w
                del self.conns[cid]
                self.deleted.add(cid)
                out.tombstones.add(cid)
        else:  # pragma: no cover - wire decodes only the types above
            raise LocalProtocolError(f"cannot apply {r!r}")

    def _handshake(self, r: Handshake, out: Applied) -> None:
        cid = r.conn_id
        if cid in self.deleted:
            out.errors.append(f"Handshake for deleted connection {cid}")
            return
        c = self.conns.get(cid)
        if c is not None:
            if c.handshake != r:
                out.errors.append(f"connection {cid}: second Handshake differs from the first")
                return
        else:
            self.conns[cid] = ConnState(r)
        out.handshakes.append(cid)

    def delete(self, conn_ids: tuple[int, ...]) -> set[int]:
        """Drop connections (explicit DELETE); returns those that existed."""
        gone = set()
        for cid in conn_ids:
            if self.conns.pop(cid, None) is not None:
                gone.add(cid)
            self.deleted.add(cid)
        return gone

    def recovery(self, live: bool = False) -> list[ConnectionLog]:
        """Live connections in accept order (`live`: see `ConnState.to_log`)."""
        conns = sorted(self.conns.values(), key=lambda c: c.handshake.accept_order)
        return [c.to_log(live) for c in conns]
