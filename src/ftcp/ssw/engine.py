"""The SSW packet loop: NFQUEUE in, `ftcp.core.conn.Connection` decides, verdicts out.

One asyncio loop runs everything: the queue socket is registered with
`loop.add_reader`; each readable event drains one `Queue.receive()` batch,
feeds every packet to its connection and carries out the actions:

* `Deliver` without a rewrite: `accept(id)` with no payload (the kernel
  finishes a partial checksum itself);
* `Deliver` with a rewrite: the fields are changed on the `TcpPacket` and the
  packet leaves as `accept(id, payload=pkt.finalize())` (complete checksum);
* `Drop`: `drop(id)`; `Hold`: the packet id stays pending until a later
  `Deliver`/`Drop` names it (a logger ack usually);
* `Log`: the record joins the batch sent to the logger once per loop pass;
* `Fabricate`: `build_tcp` + `Injector.send` (the mark makes it bypass the queue).

Fail-closed: a packet that does not parse, belongs to no protected
connection, or whose connection raised is dropped, never passed unmodified.
Verdicts are flushed once per receive batch (and after every logger ack or
agent event that released held packets).

Other inputs reach the connections through `on_logger_acks` (the
`LoggerClient` callback) and the NSW side's public calls (`ftcp.nsw.bridge`):
`on_read` puts each read result in the application's read order
(`ftcp.core.commit.OutputCommit`, invariant 3), logs the protected ones, and
`publish`es each process's released count once the logger's `ReadsAck` covers
its reads; `on_close` reports a shutdown/close to its connection.

`ack_trace` (a text file, optional) receives one line
``<wall time> <conn_id> <client ip> <client port> <ack_limit>`` whenever a
connection's ack limit is set or advances, written before any segment
carrying that ack can be released: a client-side capture can be checked
against it (invariant 1). Other events share the file, with a word in place of
the ack limit (each written before the segments it allows can be released):
``... hs`` the handshake record is durable (invariant 2), ``... rlog <bytes>``
the conn's read results are durable up to `<bytes>` read in all (invariant 3),
``... close <how>`` NSW reported a shutdown/close (invariant 4).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ftcp.core import seq, wire
from ftcp.core.ackpolicy import make_policy
from ftcp.core.commit import OutputCommit
from ftcp.core.conn import Connection, State
from ftcp.core.events import (
    Action,
    ClientSegment,
    CloseReported,
    Deliver,
    Direction,
    Drop,
    Fabricate,
    Finish,
    Hold,
    Input,
    Log,
    LoggerAck,
    ProcessDied,
    ReadReported,
    ResetClient,
    Rewrite,
    ServerSegment,
    StartRecovery,
    Timer,
)
from ftcp.core.packet import (
    ACK,
    FIN,
    RST,
    SYN,
    BlockSums,
    PacketError,
    TcpPacket,
    build_tcp,
    encode_options,
)
from ftcp.core.records import CloseHow, Handshake, ReadKind, ReadResult, Record, SynOptions
from ftcp.core.replay import RecoveryPlan
from ftcp.errors import FtcpError
from ftcp.ssw.nfqueue import Queue, QueuedPacket

log = logging.getLogger("ftcp.ssw")

NF_INET_LOCAL_IN = 1
NF_INET_LOCAL_OUT = 3

# (client ip, client port, server ip, server port), addresses as 4 raw bytes
Key = tuple[bytes, int, bytes, int]


@dataclass(slots=True)
class EngineStats:
    packets: int = 0
    client_segments: int = 0
    server_segments: int = 0
    parse_errors: int = 0
    unknown: int = 0  # no protected connection: dropped
    errors: int = 0  # the core raised: dropped
    rewritten: int = 0
    held: int = 0
    dropped: int = 0
    fabricated: int = 0
    records: int = 0
    log_sends: int = 0
    conns: int = 0


@dataclass(slots=True)
class Conn:
    """One protected connection: the core object plus what the I/O layer needs."""

    key: Key
    core: Connection
    created: float
    finished_at: float | None = None
    app_closed: bool = False
    client_fin: bool = False
    server_fin: bool = False
    accepted: bool = False  # the application accept()ed it (NSW said so)
    last_limit: int | None = None
    read_logged: int = 0  # ack trace only: bytes read with the read results durable
    # checksum block sums of the logged instream of `sums_of` (a recovery plan): refill
    # payloads are ranges of it, so building a segment folds its headers only
    sums: BlockSums | None = None
    sums_of: RecoveryPlan | None = None


class Engine:
    """The SSW datapath of one protected port (see the module docstring)."""

    def __init__(
        self,
        *,
        port: int,
        queue: Queue,
        injector: Any,
        ack_strategy: str = "lazy",
        send_records: Callable[[list[Record]], object] | None = None,
        publish: Callable[[int, int], None] | None = None,
        ack_trace: IO[str] | None = None,
        linger: float = 30.0,
        conn_id_base: int | None = None,
        refill_chunk: int | None = None,
    ) -> None:
        make_policy(ack_strategy)  # validate early
        self.port = port
        self.queue = queue
        self.injector = injector
        self.ack_strategy = ack_strategy
        self.send_records = send_records
        # invariant 3: `publish(source, count)` tells a process its reads up to `count`
        # are released (the NSW agent writes it to the shim's shared page)
        self.commit = OutputCommit()
        self.publish = publish
        self.ack_trace = ack_trace
        self.linger = linger
        # largest segment a rebuilt connection is refilled with (None: its MSS); the
        # injector's segments go over loopback, where far larger ones fit
        self.refill_chunk = refill_chunk
        self.stats = EngineStats()
        self.conns: dict[Key, Conn] = {}
        self.by_id: dict[int, Conn] = {}
        # conn ids unique across runs sharing one logger app id: seconds since the epoch
        # in the high bits, a counter below
        base = conn_id_base if conn_id_base is not None else (int(time.time()) & 0xFFFFFFFF) << 24
        self._ids = itertools.count(base + 1)
        self._next_accept = 0  # accept order of the next new connection
        self._pkts: dict[int, tuple[QueuedPacket, TcpPacket]] = {}
        self._held: set[int] = set()
        self._records: list[Record] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # timers without a scan of every connection: the core timers of the conns that
        # have one (recomputed for the conns fed since the last rearm), and a heap of
        # (linger end, conn id, conn) for finished ones
        self._core_timers: dict[int, tuple[float, Conn]] = {}
        self._touched: dict[int, Conn] = {}
        self._lingering: list[tuple[float, int, Conn]] = []
        # ack trace only: (logger order, conn, bytes read) of reads not yet durable
        self._trace_reads: collections.deque[tuple[int, Conn, int]] = collections.deque()
        self.on_recovery_needed: Callable[[int, str], None] | None = None
        self.fatal: BaseException | None = None
        # recovery (`hold_syns`): new client SYNs wait here, held, not refused
        self._syn_gate: list[QueuedPacket] | None = None
        # tells a dying application's RSTs from the kernel's refusals (`app_started`)
        self._app_alive: Callable[[], bool] | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        if hasattr(self.queue, "zero_copy"):
            self.queue.zero_copy = True  # payloads as views: logged without another copy
        self._loop.add_reader(self.queue.fileno(), self._on_queue)

    def pause_intake(self) -> None:
        """Stop reading the queue (packets wait in the kernel, then are dropped)."""
        if self._loop is not None:
            self._loop.remove_reader(self.queue.fileno())

    def resume_intake(self) -> None:
        if self._loop is not None:
            self._loop.add_reader(self.queue.fileno(), self._on_queue)

    def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.queue.fileno())
        if self._timer is not None:
            self._timer.cancel()
        self.send_logs()
        if self.ack_trace is not None:
            with contextlib.suppress(Exception):
                self.ack_trace.flush()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # ------------------------------------------------------------------ packets

    def _on_queue(self) -> None:
        try:
            batch = self.queue.receive()
        except OSError as e:
            log.error("ssw: NFQUEUE receive failed: %s", e)
            return
        now = self._now()
        for p in batch:
            self._packet(p, now)
        self._after_batch()

    def _after_batch(self) -> None:
        self.send_logs()
        try:
            self.queue.flush()
        except OSError as e:
            log.error("ssw: NFQUEUE verdicts failed: %s", e)
        self._rearm_timer()

    def _packet(self, p: QueuedPacket, now: float) -> None:
        st = self.stats
        st.packets += 1
        if p.truncated:
            st.parse_errors += 1
            self._drop_raw(p.id)
            return
        try:
            # a read-only view where the queue handed the bytes over (no copy): only a
            # segment that must change is copied (`_writable`)
            pkt = TcpPacket.parse(p.payload, csum_partial=p.csum_partial, copy=False)
        except PacketError as e:
            st.parse_errors += 1
            log.debug("ssw: unparsable packet %d dropped: %s", p.id, e)
            self._drop_raw(p.id)
            return
        inbound = p.hook == NF_INET_LOCAL_IN
        flags = pkt.flags
        if inbound:
            key: Key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        else:
            key = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        c = self.conns.get(key)
        if (
            inbound
            and flags & SYN
            and not flags & (ACK | RST)
            and pkt.dport == self.port
            and (c is None or c.core.state is State.CLOSED)
        ):
            if self._syn_gate is not None:  # recovering: the SYN waits (ftcp.recovery)
                self._syn_gate.append(p)
                return
            c = self._new_conn(key, pkt, now)
        if c is None:
            st.unknown += 1
            self._drop_raw(p.id)
            return
        ev: Input
        opts = None
        if flags & SYN:
            o = pkt.options()
            opts = SynOptions(
                mss=o.mss, wscale=o.wscale, sack_ok=o.sack_ok, ts_val=o.ts_val, ts_ecr=o.ts_ecr
            )
        ts = pkt.ts()
        ts_val, ts_ecr = ts if ts is not None else (None, None)
        if inbound:
            st.client_segments += 1
            sack: tuple[tuple[int, int], ...] = ()
            if pkt.has_sack:
                sack = tuple(pkt.options().sack_blocks)
            plen = pkt.payload_len
            ev = ClientSegment(
                p.id, now, pkt.seq, pkt.ack, flags, pkt.window, plen,
                pkt.payload if plen else b"", opts, ts_val, ts_ecr, sack,
            )  # fmt: skip
            if flags & FIN:
                c.client_fin = True
        else:
            st.server_segments += 1
            if (
                flags & RST
                and not c.accepted
                and c.core.state is State.ESTABLISHED
                and (self._app_alive is None or self._app_alive())
            ):
                self._reset_unaccepted(c, p, pkt, now)
                return
            ev = ServerSegment(
                p.id, now, pkt.seq, pkt.ack, flags, pkt.window, pkt.payload_len,
                b"", opts, ts_val, ts_ecr,
            )  # fmt: skip
            if flags & FIN:
                c.server_fin = True
        self._pkts[p.id] = (p, pkt)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("ssw: conn %d %s: %r", c.core.conn_id, c.core.state.name, pkt)
        self._feed(c, ev)
        if p.id in self._pkts and p.id not in self._held:
            # the core neither delivered, dropped nor held it (it raised): fail closed
            self._verdict_drop(p.id)
        self._maybe_finish(c, now)

    def _reset_unaccepted(self, c: Conn, p: QueuedPacket, pkt: TcpPacket, now: float) -> None:
        """The server's TCP resets a connection the application never accepted.

        That is the kernel refusing it (accept queue overflow, say), not a crash:
        the client would see the same reset without ftcp. The RST goes out (its ack,
        if any, clamped) and the connection is over. (The core cannot tell this case
        from a dying process, as it is not told about accepts.)"""
        core = c.core
        log.info("ssw: conn %d: reset by the server TCP before accept", core.conn_id)
        pkt = _writable(pkt, p.csum_partial)
        if pkt.flags & ACK:
            lim = core.ack_limit
            if seq.gt(pkt.ack, lim):
                pkt.set_ack(lim)
        if pkt.changed:
            self.stats.rewritten += 1
            self.queue.accept(p.id, payload=pkt.finalize())
        else:
            self.queue.accept(p.id)
        self._finish(c, now)

    def _new_conn(self, key: Key, pkt: TcpPacket, now: float) -> Conn:
        old = self.conns.pop(key, None)
        if old is not None:
            oid = old.core.conn_id
            self.by_id.pop(oid, None)
            self._core_timers.pop(oid, None)
            self._touched.pop(oid, None)
        cid = next(self._ids)
        core = Connection(
            cid,
            client=(pkt.src_ip, pkt.sport),
            server=(pkt.dst_ip, pkt.dport),
            accept_order=self._take_accept_order(),
            policy=make_policy(self.ack_strategy),
            refill_chunk=self.refill_chunk,
        )
        c = Conn(key, core, now)
        self.conns[key] = c
        self.by_id[cid] = c
        self.stats.conns += 1
        return c

    def _take_accept_order(self) -> int:
        n = self._next_accept
        self._next_accept += 1
        return n

    def adopt(self, hs: Handshake, plan: RecoveryPlan, now: float) -> Conn:
        """A connection known only from the log (host failover: this kernel never saw
        it): CRASHED until rebuilt, its client held with closed-window acks."""
        key: Key = (
            socket.inet_aton(hs.client_ip), hs.client_port,
            socket.inet_aton(hs.server_ip), hs.server_port,
        )  # fmt: skip
        core = Connection.restored(
            plan,
            now,
            policy=make_policy(self.ack_strategy),
            client=(hs.client_ip, hs.client_port),
            server=(hs.server_ip, hs.server_port),
            refill_chunk=self.refill_chunk,
        )
        c = Conn(key, core, now, accepted=False)
        self.conns[key] = c
        self.by_id[core.conn_id] = c
        self._next_accept = max(self._next_accept, plan.accept_order + 1)
        self.stats.conns += 1
        self._touched[core.conn_id] = c
        self._after_batch()
        return c

    def continue_reads(self, next_order: int) -> None:
        """Read orders continue from `next_order` (a new lease holder: its log holds
        every order below it). Only before any read was reported."""
        if self.commit.next_order == 0:
            self.commit = OutputCommit(next_order)

    def _drop_raw(self, ident: int) -> None:
        self.stats.dropped += 1
        self.queue.drop(ident)

    # ------------------------------------------------------------------ actions

    def _feed(self, c: Conn, ev: Input) -> list[Action] | None:
        """Feed one input and carry out its actions; None if the core refused it."""
        try:
            actions = c.core.handle(ev)
        except FtcpError as e:
            self._touched[c.core.conn_id] = c
            self.stats.errors += 1
            log.error("ssw: conn %d: %s (%s)", c.core.conn_id, e, type(ev).__name__)
            return None
        self._touched[c.core.conn_id] = c
        self._trace_limit(c)  # before the actions: a fabricated ack leaves at once
        self._carry_out(c, actions)
        return actions

    def _carry_out(self, c: Conn, actions: list[Action]) -> None:
        for a in actions:
            t = type(a)
            if t is Deliver:
                self._deliver(a.ident, a.rewrite)  # type: ignore[union-attr]
            elif t is Log:
                self._log(a.record)  # type: ignore[union-attr]
            elif t is Hold:
                self._held.add(a.ident)  # type: ignore[union-attr]
                self.stats.held += 1
            elif t is Drop:
                log.debug("ssw: conn %d: drop %d: %s", c.core.conn_id, a.ident, a.reason)  # type: ignore[union-attr]
                self._verdict_drop(a.ident)  # type: ignore[union-attr]
            elif t is Fabricate:
                self._fabricate(c, a)  # type: ignore[arg-type]
            elif t is StartRecovery:
                log.error(
                    "ssw: conn %d (client %s:%d): %s",
                    c.core.conn_id,
                    *c.core.client,
                    a.reason,  # type: ignore[union-attr]
                )
                if self.on_recovery_needed is not None:
                    self.on_recovery_needed(c.core.conn_id, a.reason)  # type: ignore[union-attr]

    def _deliver(self, ident: int, rw: Rewrite | None) -> None:
        entry = self._pkts.pop(ident, None)
        self._held.discard(ident)
        if entry is None:
            log.error("ssw: deliver of unknown packet %d", ident)
            return
        p, pkt = entry
        if rw is None:  # unchanged: no payload, the kernel finishes a partial checksum
            self.queue.accept(ident)
            return
        try:
            pkt = _writable(pkt, p.csum_partial)
            apply_rewrite(pkt, rw)
        except (ValueError, FtcpError) as e:
            log.error("ssw: cannot rewrite packet %d (%s): dropped", ident, e)
            self._drop_raw(ident)
            return
        if pkt.changed:
            self.stats.rewritten += 1
            self.queue.accept(ident, payload=pkt.finalize())
        else:
            self.queue.accept(ident)

    def _verdict_drop(self, ident: int) -> None:
        self._held.discard(ident)
        if self._pkts.pop(ident, None) is not None:
            self._drop_raw(ident)

    def _fabricate(self, c: Conn, a: Fabricate) -> None:
        s = a.segment
        cip, cport, sip, sport = c.key
        if a.direction is Direction.TO_CLIENT:
            src, dst, sp, dp = sip, cip, sport, cport
        else:
            src, dst, sp, dp = cip, sip, cport, sport
        o = s.syn_opts
        ts = (s.ts_val, s.ts_ecr or 0) if s.ts_val is not None else None
        if o is not None:
            opts = encode_options(mss=o.mss, wscale=o.wscale, sack_ok=o.sack_ok, ts=ts)
        else:
            opts = encode_options(ts=ts)
        payload = s.payload
        if s.payload_at >= 0 and c.core.plan is not None:
            payload = self._sums(c, c.core.plan).summed(s.payload_at, s.payload_at + len(payload))
        try:
            raw = build_tcp(src, dst, sp, dp, s.seq, s.ack, s.flags, s.window, opts, payload)
            self.injector.send(raw)
        except (OSError, ValueError) as e:
            log.error("ssw: conn %d: cannot inject (%s): %s", c.core.conn_id, a.reason, e)
            return
        self.stats.fabricated += 1

    @staticmethod
    def _sums(c: Conn, plan: RecoveryPlan) -> BlockSums:
        if c.sums is None or c.sums_of is not plan:
            c.sums, c.sums_of = BlockSums(plan.instream), plan
        return c.sums

    def presum(self, conn_id: int, plan: RecoveryPlan, max_blocks: int) -> bool:
        """Sum up to `max_blocks` more checksum blocks of `plan`'s instream (what has
        arrived), ahead of its refill; True when those are all summed."""
        c = self.by_id.get(conn_id)
        if c is None:
            return True
        return self._sums(c, plan).precompute(max_blocks, plan.instream_ready)

    def _log(self, r: Record) -> None:
        self._records.append(r)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        self._after_batch()

    def send_logs(self) -> None:
        """Send the records waiting for the logger now (they go once per batch)."""
        if not self._records:
            return
        recs, self._records = self._records, []
        self.stats.records += len(recs)
        self.stats.log_sends += 1
        if self.send_records is None:
            return
        try:
            self.send_records(recs)
        except Exception as e:  # the link is gone: nothing more becomes stable
            if self.fatal is None:
                self.fatal = e
                log.error("ssw: cannot send to the logger: %s", e)

    def _trace_limit(self, c: Conn) -> None:
        core = c.core
        if core.state is State.LISTEN:
            return
        lim = core.ack_limit
        if lim == c.last_limit:
            return
        c.last_limit = lim
        if self.ack_trace is not None:
            ip, port = core.client
            self.ack_trace.write(f"{time.time():.6f} {core.conn_id} {ip} {port} {lim}\n")

    def _trace_event(self, c: Conn, what: str) -> None:
        if self.ack_trace is not None:
            ip, port = c.core.client
            self.ack_trace.write(f"{time.time():.6f} {c.core.conn_id} {ip} {port} {what}\n")

    def _trace_logged_reads(self, next_order: int) -> None:
        """Trace the bytes each conn has read with its read results durable (`rlog`)."""
        reads = self._trace_reads
        touched: dict[int, Conn] = {}
        while reads and reads[0][0] < next_order:
            _, c, n = reads.popleft()
            c.read_logged += n
            touched[c.core.conn_id] = c
        for c in touched.values():
            self._trace_event(c, f"rlog {c.read_logged}")

    # ---------------------------------------------------------------- lifecycle

    def _maybe_finish(self, c: Conn, now: float) -> None:
        """Finish a connection that is over: reset, or closed both ways with the client's
        FIN logged (a `Finished` sent before that would leave the FIN unacknowledged)."""
        if c.finished_at is not None:
            return
        if c.core.state is State.CLOSED or (
            c.app_closed and c.client_fin and c.server_fin and c.core.fin_logged
        ):
            self._finish(c, now)

    def _finish(self, c: Conn, now: float) -> None:
        """The connection is over: tell the core (its records may go), forget it later."""
        if c.finished_at is not None:
            return
        c.finished_at = now
        heapq.heappush(self._lingering, (now + self.linger, c.core.conn_id, c))
        if c.core.state is not State.CLOSED:
            self._feed(c, Finish(now))
        self._rearm_timer()

    def _rearm_timer(self) -> None:
        if self._loop is None:
            return
        timers = self._core_timers
        if self._touched:
            for cid, c in self._touched.items():
                t = c.core.get_timer()
                if t is None or self.by_id.get(cid) is not c:
                    timers.pop(cid, None)
                else:
                    timers[cid] = (t, c)
            self._touched.clear()
        when: float | None = None
        if timers:
            when = min(t for t, _ in timers.values())
        if self._lingering:
            t = self._lingering[0][0]
            if when is None or t < when:
                when = t
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._now()
        lingering = self._lingering
        while lingering and lingering[0][0] <= now:
            _, _, c = heapq.heappop(lingering)
            self._forget(c)
        # a full scan here (timers are rare): it also rebuilds the core timer table
        self._core_timers.clear()
        self._touched.clear()
        for c in list(self.conns.values()):
            t = c.core.get_timer()
            if t is not None and now >= t:
                self._feed(c, Timer(now))
            else:
                self._touched[c.core.conn_id] = c
        self._after_batch()

    def _forget(self, c: Conn) -> None:
        for ident in [i for i, (p, _) in self._pkts.items() if self._owner(i) is c]:
            self._verdict_drop(ident)
        if self.conns.get(c.key) is c:
            del self.conns[c.key]
        cid = c.core.conn_id
        if self.by_id.get(cid) is c:
            del self.by_id[cid]
            self._core_timers.pop(cid, None)
            self._touched.pop(cid, None)

    def _owner(self, ident: int) -> Conn | None:
        entry = self._pkts.get(ident)
        if entry is None:
            return None
        p, pkt = entry
        if p.hook == NF_INET_LOCAL_IN:
            key: Key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        else:
            key = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        return self.conns.get(key)

    # ------------------------------------------------------------------- logger

    def on_logger_acks(self, acks: list[wire.Ack]) -> None:
        """`LoggerClient(on_ack=...)`: stream watermarks become `LoggerAck` inputs, the
        read watermark releases output (`OutputCommit`)."""
        now = self._now()
        streams: dict[int, tuple[int, int]] = {}
        for a in acks:
            t = type(a)
            if t is wire.HandshakeAck:
                c = self.by_id.get(a.conn_id)  # type: ignore[union-attr]
                if c is not None:
                    self._trace_event(c, "hs")
                    self._feed(c, LoggerAck(now, handshake=True))
            elif t is wire.StreamAck:
                streams[a.conn_id] = (a.stable_seq, a.ack_limit)  # type: ignore[union-attr]
            elif t is wire.ReadsAck:
                self._reads_acked(a.next_order)  # type: ignore[union-attr]
        for cid, (stable, limit) in streams.items():
            c = self.by_id.get(cid)
            if c is not None:
                self._feed(c, LoggerAck(now, stable_seq=stable, fin=limit != stable))
                self._maybe_finish(c, now)
        self._after_batch()

    # ------------------------------------------------------------------- NSW

    def on_read(self, source: int, seq_no: int, conn_id: int, kind: ReadKind, value: int) -> None:
        """Process `source` reported its live read `seq_no` on `conn_id` (`value`: the
        length, or the errno of an error): it takes its place in the read order, and is
        logged if the connection is protected."""
        c = self.by_id.get(conn_id)
        protected = c is not None and c.core.logs_reads
        order = self.commit.read(source, seq_no, conn_id, protected)
        if order is not None:
            assert c is not None
            r = ReadResult(conn_id, order, kind, value)
            if self.ack_trace is not None:
                self._trace_reads.append((order, c, value if kind is ReadKind.DATA else 0))
            self._feed(c, ReadReported(self._now(), r))
            self._schedule_flush()
        else:
            log.debug("ssw: read %d of source %d on unprotected conn %d", seq_no, source, conn_id)
            self._publish()

    def end_source(self, source: int) -> None:
        """Process `source` is gone (its reads keep their places in the order)."""
        self.commit.end(source)

    def _reads_acked(self, next_order: int) -> None:
        self.commit.logged(next_order)
        if self._trace_reads:
            self._trace_logged_reads(next_order)
        self._publish()

    def _publish(self) -> None:
        moved = self.commit.releases()
        if moved and self.publish is not None:
            for source, count in moved.items():
                self.publish(source, count)

    def conn_for_accept(self, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        """The conn id SSW gave the connection the application just accepted."""
        c = self.conn_by_addr(local, remote)
        if c is None:
            return None
        c.accepted = True
        return c.core.conn_id

    def conn_by_addr(self, local: tuple[str, int], remote: tuple[str, int]) -> Conn | None:
        """The protected connection from `remote` to `local` (IPv4), if any."""
        try:
            cip = socket.inet_aton(remote[0])
            sip = socket.inet_aton(local[0])
        except OSError:
            return None
        return self.conns.get((cip, remote[1], sip, local[1]))

    def new_unprotected_id(self) -> int:
        return next(self._ids)

    def on_close(self, conn_id: int, how: CloseHow) -> None:
        """The application shuts down or closes `conn_id` (its output commit is done)."""
        c = self.by_id.get(conn_id)
        if c is None:
            return
        if how is CloseHow.CLOSE:
            c.app_closed = True
        self._trace_event(c, f"close {how.name}")
        self._feed(c, CloseReported(self._now(), how))
        self._schedule_flush()

    # ---------------------------------------------------- recovery (ftcp.recovery)

    def feed(self, c: Conn, ev: Input) -> list[Action] | None:
        """Feed one supervisor input (`Rebuild`, `Repaired`, ...) and flush."""
        actions = self._feed(c, ev)
        self._after_batch()
        return actions

    def app_started(self, alive: Callable[[], bool]) -> None:
        """An application process runs; `alive()` says whether it still does."""
        self._app_alive = alive

    def app_died(self, now: float) -> list[Conn]:
        """The application died: every live connection gets `ProcessDied` (none counts
        as accepted any more); the connections now waiting for a recovery."""
        for c in list(self.conns.values()):
            c.accepted = False
            if c.finished_at is None and c.core.state is not State.CLOSED:
                self._feed(c, ProcessDied(now))
        self._after_batch()
        return [c for c in self.conns.values() if c.core.state is State.CRASHED]

    def reset_client(self, c: Conn) -> None:
        """Give up on `c`: its client gets a reset now (the core's), and it is over."""
        now = self._now()
        self._feed(c, ResetClient(now))
        self._finish(c, now)
        self._after_batch()

    @property
    def holding_syns(self) -> bool:
        return self._syn_gate is not None

    def hold_syns(self) -> None:
        """A recovery starts: new client SYNs wait (held, not refused) until it ends."""
        if self._syn_gate is None:
            self._syn_gate = []

    def release_syns(self) -> None:
        """Recovery is over: the SYNs held go on, in arrival order."""
        held, self._syn_gate = self._syn_gate or [], None
        now = self._now()
        for p in held:
            self._packet(p, now)
        self._after_batch()

    def snapshot(self) -> list[dict[str, object]]:
        """Protected connections, for `ftcp status`."""
        out = []
        for c in self.conns.values():
            core = c.core
            out.append(
                {
                    "conn_id": core.conn_id,
                    "client": f"{core.client[0]}:{core.client[1]}",
                    "state": core.state.name,
                    "stable_seq": core.stable_seq,
                    "server_seq": core.server_seq,
                    "unstable_reads": self.commit.unstable(core.conn_id),
                    "unlogged_bytes": core.unlogged_bytes,
                    "logged_bytes": core.logged_bytes,
                    "finished": c.finished_at is not None,
                    "refill": core.refill_view(),
                }
            )
        return out


def _writable(pkt: TcpPacket, csum_partial: bool) -> TcpPacket:
    """`pkt` itself if it owns a mutable buffer, else a parsed copy that does."""
    if type(pkt.buf) is bytearray:
        return pkt
    return TcpPacket.parse(bytearray(pkt.buf[: pkt.total_len]), csum_partial=csum_partial)


def apply_rewrite(pkt: TcpPacket, rw: Rewrite) -> None:
    """Change `pkt`'s header fields as `rw` says (checksum kept right by `TcpPacket`)."""
    if rw.seq is not None:
        pkt.set_seq(rw.seq)
    if rw.ack is not None:
        pkt.set_ack(rw.ack)
    if rw.window is not None:
        pkt.set_window(rw.window)
    if (rw.ts_val is not None or rw.ts_ecr is not None) and not pkt.set_ts(rw.ts_val, rw.ts_ecr):
        raise ValueError("timestamp rewrite on a segment without timestamps")
    if rw.sack is not None:
        old = pkt.options().sack_blocks
        if len(old) != len(rw.sack):
            raise ValueError(f"SACK rewrite changes the block count {len(old)} -> {len(rw.sack)}")
        edges = iter([e for block in rw.sack for e in block])
        pkt.map_sack(lambda _e: next(edges))
