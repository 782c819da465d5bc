"""In-memory world for sans-IO tests of the FT core.

client TCP  ⇄ (faulty link) ⇄  SSW (`Connection`)  ⇄  toy kernel TCP  ⇄  toy shim  ⇄  toy app
                                        ⇅
                                  in-memory logger

The TCPs are toys (go-back-N, cumulative acks, window scaling, timestamps with
PAWS, ack-of-unsent-data drops like Linux) but honest about what FT-TCP relies
on; so is the shim (`App`): it does what `nsw/shim.c` does, mechanically. Every
decision is production's own code: the connection's (`Connection`), output
commit's (`OutputCommit`), the recovery plan's (`plan_recovery`) and the
outstream check's (`OutstreamCheck`). Everything is driven by a discrete clock;
faults come from one seeded RNG. Monitors check DESIGN.md invariants 1-6 at
every step and collect violations.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ftcp.core import seq
from ftcp.core.ackpolicy import make_policy
from ftcp.core.commit import OutputCommit
from ftcp.core.conn import Connection, State
from ftcp.core.events import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    ClientSegment,
    CloseReported,
    Deliver,
    Direction,
    Drop,
    Fabricate,
    Hold,
    Log,
    LoggerAck,
    ProcessDied,
    ReadReported,
    Rebuild,
    ReplayDone,
    ServerSegment,
    StartRecovery,
    Timer,
)
from ftcp.core.reassembly import Reassembler
from ftcp.core.records import (
    Close,
    CloseHow,
    ConnectionLog,
    Finished,
    Handshake,
    InSegment,
    ReadKind,
    ReadResult,
    SynOptions,
    WriteMark,
)
from ftcp.core.replay import (
    Divergence,
    OutstreamCheck,
    RecoveryPlan,
    outstream_crc,
    plan_recovery,
)
from ftcp.core.wire import ReadsAck

OOW_LIMIT = 0.1  # s between answers to unacceptable pure acks (Linux: tcp_invalid_ratelimit)

# ----------------------------------------------------------------------------- segments


@dataclass(frozen=True, slots=True)
class Seg:
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    syn_opts: SynOptions | None = None
    ts_val: int | None = None
    ts_ecr: int | None = None
    sack: tuple[tuple[int, int], ...] = ()

    @property
    def seg_len(self) -> int:
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


class Link:
    """One direction of the client link: delay plus seeded loss, duplication, reordering."""

    def __init__(
        self,
        rng: random.Random,
        delay: float,
        loss: float = 0.0,
        dup: float = 0.0,
        reorder: float = 0.0,
    ) -> None:
        self.rng, self.delay, self.loss, self.dup, self.reorder = rng, delay, loss, dup, reorder
        self._q: list[tuple[float, int, Seg]] = []
        self._n = itertools.count()

    def send(self, now: float, s: Seg) -> None:
        r = self.rng
        if r.random() < self.loss:
            return
        for _ in range(2 if r.random() < self.dup else 1):
            d = self.delay + (r.uniform(0, 4 * self.delay) if r.random() < self.reorder else 0)
            heapq.heappush(self._q, (now + d, next(self._n), s))

    def due(self, now: float) -> list[Seg]:
        out = []
        while self._q and self._q[0][0] <= now:
            out.append(heapq.heappop(self._q)[2])
        return out

    def __len__(self) -> int:
        return len(self._q)


# ------------------------------------------------------------------------------ toy TCP


class ToyTCP:
    """A small honest TCP: go-back-N sender, in-order receiver, scaled windows, PAWS.

    Offsets are relative to ISN+1 in each direction; the FIN takes offset
    `len(out)` on the sending side. `history` keeps every in-order byte ever
    received, so an overlapping retransmission that differs is caught.
    """

    def __init__(
        self,
        name: str,
        *,
        iss: int,
        mss: int,
        wscale: int | None,
        rcvbuf: int,
        ts_base: int | None,
        rto: float,
        sack_ok: bool = False,
    ) -> None:
        self.name = name
        self.iss = iss
        self.mss = mss
        self.my_ws_offer = wscale
        self.rcvbuf = rcvbuf
        self.ts_base = ts_base
        self.rto = rto
        self.sack_ok = sack_ok
        self.state = "CLOSED"
        self.out = bytearray()
        self.close_requested = False
        self.una = -1  # -1: SYN not acked
        self.nxt = -1
        self.max_sent = -1
        self.edge = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.inbuf = bytearray()
        self.history = bytearray()
        self.fin_rcvd = False
        self.peer_ws = 0
        self.my_ws = 0
        self.ts_ok = False
        self.ts_recent: int | None = None
        self.rtx_at: float | None = None
        self.errors: list[str] = []
        self.last_adv_window = 0
        self.peer_syn_opts: SynOptions | None = None
        # Linux's sequence check: acceptable is [rcv_wup, max(rcv_nxt, edge)]
        self.rcv_wup = 0  # rcv_nxt when the last ack was sent
        self.adv_edge = 0  # the right edge of the window advertised (it never shrinks)
        self.last_oow = -1.0  # last answer to an unacceptable pure ack (rate-limited)
        self.max_window = 0  # the largest window the peer advertised (RFC 5961 5.2)

    # -- helpers
    def ts_now(self, now: float) -> int | None:
        if self.ts_base is None:
            return None
        return seq.add(self.ts_base, int(now * 1000))

    def window(self) -> int:
        return min(0xFFFF, max(0, self.rcvbuf - len(self.inbuf)) >> self.my_ws)

    def _seg(self, now: float, off: int, flags: int, payload: bytes = b"") -> Seg:
        w = self.window()
        self.last_adv_window = w
        self.rcv_wup = self.rcv_nxt
        self.adv_edge = max(self.adv_edge, self.rcv_nxt + (w << self.my_ws))
        return Seg(
            seq=seq.add(self.iss, 1 + off),
            ack=seq.add(self.irs, 1 + self.rcv_nxt),
            flags=flags | ACK,
            window=w,
            payload=payload,
            ts_val=self.ts_now(now) if self.ts_ok else None,
            ts_ecr=self.ts_recent if self.ts_ok else None,
        )

    def _syn_opts(self, now: float, peer: SynOptions | None) -> SynOptions:
        if peer is None:  # active open: offer everything we do
            return SynOptions(
                mss=self.mss,
                wscale=self.my_ws_offer,
                sack_ok=self.sack_ok,
                ts_val=self.ts_now(now),
                ts_ecr=0 if self.ts_base is not None else None,
            )
        return SynOptions(
            mss=self.mss,
            wscale=self.my_ws_offer if peer.wscale is not None else None,
            sack_ok=self.sack_ok and peer.sack_ok,
            ts_val=self.ts_now(now) if peer.ts_val is not None else None,
            ts_ecr=peer.ts_val if peer.ts_val is not None else None,
        )

    def _negotiate(self, mine: SynOptions, peer: SynOptions) -> None:
        if mine.wscale is not None and peer.wscale is not None:
            self.my_ws, self.peer_ws = mine.wscale, peer.wscale
        self.ts_ok = mine.ts_val is not None and peer.ts_val is not None
        if self.ts_ok:
            self.ts_recent = peer.ts_val

    # -- opening
    def connect(self, now: float) -> list[Seg]:
        self.state = "SYN_SENT"
        self.rtx_at = now + self.rto
        self.nxt = 0
        self.max_sent = 0
        return [self._syn(now)]

    def _syn(self, now: float) -> Seg:
        o = self._syn_opts(now, None)
        self.adv_edge = max(self.adv_edge, min(0xFFFF, self.rcvbuf))
        return Seg(
            self.iss, 0, SYN, min(0xFFFF, self.rcvbuf), syn_opts=o, ts_val=o.ts_val, ts_ecr=0
        )

    def listen(self) -> None:
        self.state = "LISTEN"

    def _synack(self, now: float) -> Seg:
        o = self._syn_opts(now, self.peer_syn_opts)
        self.adv_edge = max(self.adv_edge, min(0xFFFF, self.rcvbuf))
        return Seg(
            self.iss,
            seq.add(self.irs, 1),
            SYN | ACK,
            min(0xFFFF, self.rcvbuf),
            syn_opts=o,
            ts_val=o.ts_val,
            ts_ecr=o.ts_ecr,
        )

    # -- application side
    def write(self, data: bytes) -> None:
        assert not self.close_requested
        self.out += data

    def close(self) -> None:
        self.close_requested = True

    def read(self, n: int) -> bytes:
        d = bytes(self.inbuf[:n])
        del self.inbuf[:n]
        return d

    @property
    def all_acked(self) -> bool:
        return self.una == len(self.out) + (1 if self.close_requested else 0)

    # -- input
    def receive(self, now: float, s: Seg) -> list[Seg]:
        st = self.state
        if st in ("CLOSED", "RESET"):
            return []
        if s.flags & RST:
            self.state = "RESET"
            self.errors.append(f"{self.name}: connection reset")
            return []
        if st == "LISTEN":
            if s.flags & SYN and not s.flags & ACK:
                self.irs = s.seq
                self.peer_syn_opts = s.syn_opts or SynOptions()
                mine = self._syn_opts(now, self.peer_syn_opts)
                self._negotiate(mine, self.peer_syn_opts)
                self.state = "SYN_RCVD"
                self.nxt = self.max_sent = 0
                self.rtx_at = now + self.rto
                return [self._synack(now)]
            return []
        if st == "SYN_SENT":
            if s.flags & SYN and s.flags & ACK and s.ack == seq.add(self.iss, 1):
                self.irs = s.seq
                self._negotiate(self._syn_opts(now, None), s.syn_opts or SynOptions())
                self.una = 0
                self.edge = s.window  # SYN window: unscaled
                self.state = "ESTABLISHED"
                self.rtx_at = None
                return [self._seg(now, 0, 0)] + self.output(now)
            return []
        if s.flags & SYN:
            if st == "SYN_RCVD" and not s.flags & ACK and s.seq == self.irs:
                return [self._synack(now)]  # retransmitted SYN
            # SYN-ACK again (our ack was lost): ack it
            return [self._seg(now, max(self.nxt, 0), 0)]
        paws = self.ts_ok and s.ts_val is not None and self.ts_recent is not None
        if paws and seq.lt(s.ts_val, self.ts_recent):
            return [self._seg(now, max(self.nxt, 0), 0)]  # PAWS: old duplicate
        if st == "SYN_RCVD":
            if s.flags & ACK and s.ack == seq.add(self.iss, 1):
                self.una = 0
                self.edge = 0
                self.state = "ESTABLISHED"
                self.rtx_at = None
            else:
                return []
        off = seq.sub(s.seq, seq.add(self.irs, 1))
        seg_len = len(s.payload) + (1 if s.flags & FIN else 0)
        if off + seg_len < self.rcv_wup or off > max(self.rcv_nxt, self.adv_edge):
            # Linux's tcp_sequence: the whole segment is dropped, its ack unseen; a dupack
            # answers (for a pure ack at most every OOW_LIMIT: no ack loops)
            if seg_len or now - self.last_oow >= OOW_LIMIT:
                if not seg_len:
                    self.last_oow = now
                return [self._seg(now, max(self.nxt, 0), 0)]
            return []
        out: list[Seg] = []
        if s.flags & ACK:
            a = seq.sub(s.ack, seq.add(self.iss, 1))
            if a > self.max_sent:
                return []  # ack of unsent data: Linux drops the whole segment
            if a < self.una - min(self.max_window, self.una):
                return []  # an ack too old (RFC 5961 5.2): Linux drops the whole segment
            if a >= self.una:
                if a > self.una:
                    self.una = a
                    self.rtx_at = now + self.rto if self.una < self.max_sent else None
                    self.nxt = max(self.nxt, self.una)
                self.edge = a + (s.window << self.peer_ws)
                self.max_window = max(self.max_window, s.window << self.peer_ws)
        need_ack = False
        if s.payload:
            need_ack = True
            if off <= self.rcv_nxt:
                # overlap with history must match exactly (no byte changes on retransmission)
                overlap = min(len(s.payload), self.rcv_nxt - off)
                old = self.history[off : off + overlap] if off >= 0 else None
                if overlap > 0 and old is not None and old != s.payload[:overlap]:
                    self.errors.append(f"{self.name}: retransmitted bytes differ at {off}")
                new = s.payload[max(0, self.rcv_nxt - off) :]
                room = max(0, self.rcvbuf - len(self.inbuf))
                new = new[:room]
                self.inbuf += new
                self.history += new
                self.rcv_nxt += len(new)
        if s.flags & FIN:
            need_ack = True
            fin_off = off + len(s.payload)
            if fin_off == self.rcv_nxt and not self.fin_rcvd:
                self.fin_rcvd = True
                self.rcv_nxt += 1
        if (
            self.ts_ok
            and s.ts_val is not None
            and off <= self.rcv_nxt
            and (self.ts_recent is None or seq.ge(s.ts_val, self.ts_recent))
        ):
            self.ts_recent = s.ts_val
        if need_ack:
            out.append(self._seg(now, max(self.nxt, 0), 0))
        out += self.output(now)
        return out

    def output(self, now: float) -> list[Seg]:
        if self.state not in ("ESTABLISHED",):
            return []
        out: list[Seg] = []
        limit = min(len(self.out), self.edge)
        while self.nxt < limit:
            n = min(self.mss, limit - self.nxt)
            out.append(self._seg(now, self.nxt, PSH, bytes(self.out[self.nxt : self.nxt + n])))
            self.nxt += n
        if self.close_requested and self.nxt == len(self.out):
            out.append(self._seg(now, self.nxt, FIN))
            self.nxt += 1
        if out:
            self.max_sent = max(self.max_sent, self.nxt)
            if self.rtx_at is None:
                self.rtx_at = now + self.rto
        return out

    def window_update(self, now: float, before: int) -> list[Seg]:
        """After the application read: tell the peer when the window opened a lot."""
        if self.state != "ESTABLISHED":
            return []
        w = self.window()
        if (w - before) << self.my_ws >= 2 * self.mss or (before == 0 and w > 0):
            return [self._seg(now, max(self.nxt, 0), 0)]
        return []

    def tick(self, now: float) -> list[Seg]:
        if self.rtx_at is None or now < self.rtx_at:
            return []
        self.rtx_at = now + self.rto
        if self.state == "SYN_SENT":
            return [self._syn(now)]
        if self.state == "SYN_RCVD":
            return [self._synack(now)]
        if self.state != "ESTABLISHED":
            return []
        pending = self.una < len(self.out) + (1 if self.close_requested else 0)
        if not pending:
            self.rtx_at = None
            return []
        if self.edge <= self.una and self.una < len(self.out):  # zero window: probe
            return [self._seg(now, self.una - 1, 0)]
        self.nxt = self.una  # go back N
        return self.output(now)


# ------------------------------------------------------------------------------ logger


class Logger:
    """In-memory logger: applies records after a seeded delay, acks after another."""

    def __init__(self, rng: random.Random, delay: tuple[float, float]) -> None:
        self.rng = rng
        self.delay = delay
        self.inbox: list[tuple[float, object]] = []
        self.outbox: list[tuple[float, tuple[int | None, object]]] = []
        self.hs: dict[int, Handshake] = {}
        self.reasm: dict[int, Reassembler] = {}
        self.server_seq: dict[int, int] = {}
        self.reads: dict[int, list[ReadResult]] = {}
        self.read_upto = -1
        self.marks: dict[int, WriteMark] = {}
        self.closes: dict[int, list[Close]] = {}
        self.client_window: dict[int, int] = {}
        self.client_ts: dict[int, int | None] = {}
        self.finished: set[int] = set()

    def _at(self, box: list, now: float) -> float:
        t = now + self.rng.uniform(*self.delay)
        return max(t, box[-1][0]) if box else t  # FIFO, like one TCP connection

    def send(self, now: float, rec: object) -> None:
        self.inbox.append((self._at(self.inbox, now), rec))

    def ack_limit(self, conn_id: int) -> int | None:
        r = self.reasm.get(conn_id)
        return None if r is None else r.ack_limit

    def step(self, now: float) -> list[tuple[int | None, object]]:
        """Apply due records; return the due acks as (conn_id or None, LoggerAck/ReadsAck)."""
        touched: set[int] = set()
        reads = False
        while self.inbox and self.inbox[0][0] <= now:
            _, rec = self.inbox.pop(0)
            match rec:
                case Handshake():
                    self.hs[rec.conn_id] = rec
                    self.reasm[rec.conn_id] = Reassembler(rec.c_isn)
                    self.server_seq[rec.conn_id] = seq.add(rec.s_isn, 1)
                    self.reads[rec.conn_id] = []
                    self.closes[rec.conn_id] = []
                    touched.add(rec.conn_id)
                case InSegment():
                    c = rec.conn_id
                    self.reasm[c].add(rec.seq, rec.payload, rec.fin)
                    self.server_seq[c] = seq.max_(self.server_seq[c], rec.ack)
                    self.client_window[c] = rec.window
                    if rec.ts_val is not None:
                        self.client_ts[c] = rec.ts_val
                    touched.add(c)
                case ReadResult():
                    self.reads[rec.conn_id].append(rec)
                    self.read_upto = max(self.read_upto, rec.order)
                    reads = True
                case WriteMark():
                    self.marks[rec.conn_id] = rec
                case Close():
                    self.closes[rec.conn_id].append(rec)
                case Finished():
                    self.finished.add(rec.conn_id)
                case _:
                    raise AssertionError(rec)
        for c in touched:
            r = self.reasm[c]
            self.outbox.append(
                (
                    self._at(self.outbox, now),
                    (c, LoggerAck(now, r.stable_seq, fin=r.fin_reached, handshake=True)),
                )
            )
        if reads:
            ack = (None, ReadsAck(self.read_upto + 1))
            self.outbox.append((self._at(self.outbox, now), ack))
        due = []
        while self.outbox and self.outbox[0][0] <= now:
            due.append(self.outbox.pop(0)[1])
        return due

    @property
    def idle(self) -> bool:
        return not self.inbox

    def to_log(self, c: int) -> ConnectionLog:
        r = self.reasm[c]
        return ConnectionLog(
            handshake=self.hs[c],
            stable_seq=r.stable_seq,
            server_seq=self.server_seq[c],
            instream=r.contiguous,
            client_fin=r.fin_reached,
            reads=list(self.reads[c]),
            write_mark=self.marks.get(c),
            closes=list(self.closes[c]),
            client_window=self.client_window.get(c, 0),
            client_ts_val=self.client_ts.get(c),
        )


# ------------------------------------------------------------------------ application


class EchoLogic:
    """A deterministic server: output depends on read results (lengths, EAGAINs, EOF).

    Each complete request line is answered with its upper-cased text, the number
    of DATA reads so far and the EAGAIN count mod 5, so a replay that returned
    different read lengths or dropped an EAGAIN would produce different bytes.
    """

    SIZES = (5, 64, 13, 1, 200, 7)

    def __init__(self, salt: int | None = None) -> None:
        self.salt = salt  # not None: a nondeterministic server (it writes its incarnation)
        self.calls = 0
        self.buf = b""
        self.nreads = 0
        self.eagains = 0
        self.output = bytearray()
        self.reads: list[tuple[ReadKind, bytes]] = []

    def next_max(self) -> int:
        return self.SIZES[self.calls % len(self.SIZES)]

    def on_read(self, kind: ReadKind, data: bytes) -> tuple[bytes, bool]:
        self.calls += 1
        self.reads.append((kind, data))
        out = b""
        if kind == ReadKind.EAGAIN:
            self.eagains += 1
            return out, False
        if kind == ReadKind.EOF:
            out = b"BYE\n"
            self.output += out
            return out, True
        self.nreads += 1
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            out += b"%s|%d|%d\n" % (line.upper(), self.nreads, self.eagains % 5)
            if self.salt is not None:
                out = out[:-2] + b"%d\n" % (self.salt % 10)
        self.output += out
        return out, False


@dataclass
class _Op:
    kind: str  # "write" | "close"
    data: bytes = b""


class App:
    """One incarnation of the server application under its NSW shim.

    The shim part does what `shim.c` does. Live: each read is reported with the
    process's next number, and its output so far, `(bytes, CRC-32C)`; a write or
    close waits until the supervisor has released every read the process reported
    (`page`, the shared page's count). Replay: reads are served from the plan's
    script, exactly as logged (a DATA read waits until that many bytes are there),
    the first `discard` output bytes are swallowed, and the output so far is
    reported where it moved after a replayed read, where the discarded prefix ends
    and where replay ends.
    """

    def __init__(self, world: World, plan: RecoveryPlan | None, source: int) -> None:
        self.w = world
        self.logic = EchoLogic(source if world.cfg.nondeterministic else None)
        self.plan = plan
        self.source = source  # the process (an NSW session)
        self.seq = 0  # live reads reported
        self.page = 0  # released count (the supervisor's decision)
        self.script = list(plan.reads) if plan is not None else []
        self.pos = 0
        self.discard = plan.discard if plan is not None else 0
        self.replaying = plan is not None
        self.wtotal = 0  # output bytes so far (swallowed ones included)
        self.wcrc = 0
        self.rep_wtotal = 0
        self.kconn: ToyTCP | None = None
        self.conn_id: int | None = None
        self.ops: list[_Op] = []  # output waiting for its reads' release
        self.closed = False
        self.rebuild_sent = False
        self.reported: list[int] = []  # logger orders of its logged reads (monitor)

    def step(self, now: float) -> None:
        if self.kconn is None:
            self._accept(now)
            return
        self.step_output(now)
        if self.ops or self.closed or self._send_blocked:
            return
        self._read(now)

    @property
    def _send_blocked(self) -> bool:
        """Like a blocking send into a full send buffer: no read until acks free room."""
        k, cap = self.kconn, self.w.cfg.sndbuf
        return cap is not None and k is not None and len(k.out) - max(k.una, 0) >= cap

    def _accept(self, now: float) -> None:
        w = self.w
        conn = w.ssw.conn
        if self.plan is not None and conn is not None and not self.rebuild_sent:
            self.rebuild_sent = True
            w.ssw.feed(Rebuild(now, self.plan))
        k = w.kernel
        if k is not None and k.state == "ESTABLISHED" and conn is not None:
            self.kconn = k
            self.conn_id = conn.conn_id
            self._replay_check_done(now)

    def _check(self, where: str) -> None:
        assert self.conn_id is not None
        w = self.w
        w.compared.append((self.source - 1, self.wtotal, w.noted_by.get(self.wtotal, -1)))
        w.checked(self, w.check.check(self.conn_id, self.wtotal, self.wcrc, where))

    def _replay_check_done(self, now: float) -> None:
        if self.replaying and self.pos >= len(self.script) and self.wtotal >= self.discard:
            self.replaying = False
            self._check("replay done")
            self.w.ssw.feed(ReplayDone(now))

    def _read(self, now: float) -> None:
        w, k = self.w, self.kconn
        assert k is not None and self.conn_id is not None
        max_len = self.logic.next_max()
        if self.replaying and self.pos < len(self.script):
            r = self.script[self.pos]
            data = b""
            if r.kind == ReadKind.DATA:
                want = r.length
                if max_len < want:
                    w.checked(self, w.check.unreplayable(self.conn_id, self.pos, "short buffer"))
                    want = max_len
                if len(k.inbuf) < want:
                    return  # wait for the refill
                before = k.window()
                data = k.read(want)
                w.kernel_out += k.window_update(now, before)
            self.pos += 1
            if self.wtotal != self.rep_wtotal:
                self.rep_wtotal = self.wtotal
                self._check(f"replayed read {self.pos - 1}")
            self._replay_check_done(now)
            self._after_read(now, r.kind, data)
            return
        if k.inbuf:
            before = k.window()
            data = k.read(max_len)
            w.kernel_out += k.window_update(now, before)
            kind = ReadKind.DATA
        elif k.fin_rcvd:
            data, kind = b"", ReadKind.EOF
        else:
            data, kind = b"", ReadKind.EAGAIN
        self.seq += 1
        w.note(self)
        order = w.ssw.read(now, self.source, self.seq, kind, len(data))
        if order is not None:
            self.reported.append(order)
        self._after_read(now, kind, data)

    def _after_read(self, now: float, kind: ReadKind, data: bytes) -> None:
        out, close = self.logic.on_read(kind, data)
        if out:
            self._write(now, out)
        if close:
            self.closed = True
            self._output(now, _Op("close"))

    def _write(self, now: float, data: bytes) -> None:
        if self.replaying and self.wtotal < self.discard:
            n = min(len(data), self.discard - self.wtotal)
            self.wcrc = outstream_crc(data[:n], self.wcrc)
            self.wtotal += n
            if self.wtotal == self.discard:
                self._check("replay discard end")
            self._replay_check_done(now)
            data = data[n:]
            if not data:
                return
        self._output(now, _Op("write", data))

    def _output(self, now: float, op: _Op) -> None:
        self.ops.append(op)
        self.step_output(now)

    def step_output(self, now: float) -> None:
        w = self.w
        while self.ops and self.page >= self.seq:  # the shim's commit_wait
            op = self.ops.pop(0)
            self._commit_check(op)
            assert self.kconn is not None and self.conn_id is not None
            if op.kind == "write":
                self.kconn.write(op.data)
                self.wcrc = outstream_crc(op.data, self.wcrc)
                self.wtotal += len(op.data)
                self._replay_check_done(now)
            else:
                w.note(self)
                w.ssw.feed(CloseReported(now, CloseHow.CLOSE))
                self.kconn.close()
                w.close_seen = True
            w.kernel_out += self.kconn.output(now)

    def _commit_check(self, op: _Op) -> None:
        """Invariant 3: output leaves only after every earlier read result is logged."""
        if self.reported and self.w.logger.read_upto < self.reported[-1]:
            self.w.violations.append(
                f"output commit: {op.kind} while read {self.reported[-1]} is unlogged"
            )


# ------------------------------------------------------------------------------- SSW


class SSWGlue:
    """The SSW I/O layer, as thin as the real one: feed inputs, carry out actions."""

    def __init__(self, world: World, policy: str) -> None:
        self.w = world
        self.policy = policy
        self.conn: Connection | None = None
        self.pending: dict[int, tuple[Direction, Seg]] = {}
        self.started_recovery = 0
        self.conn_ids = itertools.count(1)
        self.commit = OutputCommit()  # invariant 3, as the engine keeps it

    def read(self, now: float, source: int, seq_no: int, kind: ReadKind, n: int) -> int | None:
        """A live read of process `source` (the engine's `on_read`): its logger order, or
        None when its connection is not protected."""
        conn = self.conn
        protected = conn is not None and conn.logs_reads
        order = self.commit.read(source, seq_no, conn.conn_id if conn else 0, protected)
        if order is not None:
            assert conn is not None
            self.feed(ReadReported(now, ReadResult(conn.conn_id, order, kind, n)))
        self.publish()
        return order

    def reads_logged(self, ack: ReadsAck) -> None:
        self.commit.logged(ack.next_order)
        self.publish()

    def publish(self) -> None:
        app = self.w.app
        for source, count in self.commit.releases().items():
            if app is not None and app.source == source:
                app.page = count

    def feed(self, ev: object) -> None:
        assert self.conn is not None
        self.run(self.conn.handle(ev))  # type: ignore[arg-type]

    def from_client(self, now: float, s: Seg) -> None:
        w = self.w
        new_conn = self.conn is None or self.conn.state is State.CLOSED
        if s.flags & SYN and not s.flags & ACK and new_conn:
            if w.app is None or w.down:
                return  # new SYNs wait (dropped: the client retries) while recovering
            self.conn = Connection(
                next(self.conn_ids),
                client=("10.0.0.1", 40000),
                server=("10.0.0.2", 80),
                policy=make_policy(self.policy),
            )
        if self.conn is None:
            return
        ident = next(w.idents)
        self.pending[ident] = (Direction.TO_SERVER, s)
        self.feed(ClientSegment(ident, now, **_fields(s)))

    def from_kernel(self, now: float, s: Seg) -> None:
        if self.conn is None:
            return
        ident = next(self.w.idents)
        self.pending[ident] = (Direction.TO_CLIENT, s)
        self.feed(ServerSegment(ident, now, **_fields(s)))

    def run(self, actions: list) -> None:
        w = self.w
        for a in actions:
            match a:
                case Deliver():
                    d, s = self.pending.pop(a.ident)
                    new = s
                    if a.rewrite is not None:
                        rw = a.rewrite
                        new = replace(
                            s,
                            **{
                                k: getattr(rw, k)
                                for k in ("seq", "ack", "window", "ts_val", "ts_ecr", "sack")
                                if getattr(rw, k) is not None
                            },
                        )
                    if d is Direction.TO_CLIENT:
                        w.to_client(new, s)
                    else:
                        w.to_kernel(new)
                case Drop():
                    d, s = self.pending.pop(a.ident, (None, None))
                    mut = w.cfg.mutations
                    if s is not None and "deliver_dropped_close" in mut and s.flags & (FIN | RST):
                        w.to_client(s, s)
                case Hold():
                    assert a.ident in self.pending
                    d, s = self.pending[a.ident]
                    if "no_handshake_hold" in w.cfg.mutations and s.flags & SYN:
                        w.to_client(s, s)
                case Log():
                    w.logger.send(w.now, a.record)
                case Fabricate():
                    o = a.segment
                    data = bytes(o.payload)
                    s = Seg(o.seq, o.ack, o.flags, o.window, data, o.syn_opts, o.ts_val, o.ts_ecr)
                    w.fabricated[a.reason.split(":")[0]] += 1
                    if a.direction is Direction.TO_CLIENT:
                        w.to_client(s, None)
                    else:
                        w.to_kernel(s)
                case StartRecovery():
                    self.started_recovery += 1
                case _:
                    raise AssertionError(a)


def _fields(s: Seg) -> dict:
    return {
        "seq": s.seq,
        "ack": s.ack,
        "flags": s.flags,
        "window": s.window,
        "payload_len": len(s.payload),
        "payload": s.payload,
        "syn_opts": s.syn_opts,
        "ts_val": s.ts_val,
        "ts_ecr": s.ts_ecr,
        "sack": s.sack,
    }


# ------------------------------------------------------------------------------ world


REQUESTS = (
    b"hello world\n",
    b"a second request, somewhat longer than one segment of the toy tcp\n",
    b"x" * 150 + b"\n",
    b"last one\n",
)


@dataclass
class Config:
    seed: int = 1
    policy: str = "conditional"
    loss: float = 0.05
    dup: float = 0.03
    reorder: float = 0.1
    link_delay: float = 0.003
    logger_delay: tuple[float, float] = (0.001, 0.008)
    client_iss: int = seq.MASK - 40  # wraps during the exchange
    client_ws: int | None = 1
    server_ws: tuple[int | None, ...] = (2, 0, 3)  # per incarnation
    server_isns: tuple[int, ...] = (seq.MASK - 100, 7, seq.HALF - 20)
    server_ts_bases: tuple[int | None, ...] = (seq.MASK - 500, 1000, 5)
    client_ts_base: int | None = seq.MASK - 3000
    mss: int = 40
    rcvbuf: int = 160
    rto: float = 0.06
    restart_delay: float = 0.02
    crash_at: tuple[int, ...] = ()  # steps at which the server crashes
    crash_kind: Callable[[random.Random], str] | None = None
    max_steps: int = 20000
    mutations: frozenset[str] = frozenset()  # break the SSW glue on purpose (monitor tests)
    requests: tuple[bytes, ...] = REQUESTS
    pipelined: bool = False  # the client sends every request at once, not one per answer
    sndbuf: int | None = None  # the server blocks in write while this much is unacked
    server_rcvbufs: tuple[int, ...] = ()  # per incarnation (default: rcvbuf)
    nondeterministic: bool = False  # each incarnation writes its number into its answers


@dataclass
class Result:
    steps: int
    violations: list[str]
    client_received: bytes
    expected: bytes
    crashes: int
    recoveries: int
    to_client: int
    fabricated: dict[str, int]
    trace: list[str] = field(default_factory=list)
    divergences: int = 0


class World:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self.dt = 0.001
        self.idents = itertools.count(1)
        self.violations: list[str] = []
        self.c2s = Link(self.rng, cfg.link_delay, cfg.loss, cfg.dup, cfg.reorder)
        self.s2c = Link(self.rng, cfg.link_delay, cfg.loss, cfg.dup, cfg.reorder)
        self.logger = Logger(self.rng, cfg.logger_delay)
        self.ssw = SSWGlue(self, cfg.policy)
        self.client = ToyTCP(
            "client",
            iss=cfg.client_iss,
            mss=cfg.mss,
            wscale=cfg.client_ws,
            rcvbuf=4096,
            ts_base=cfg.client_ts_base,
            rto=cfg.rto,
            sack_ok=True,
        )
        self.incarnation = 0
        self.kernel: ToyTCP | None = None
        self.app: App | None = None
        self.down = False
        self.down_until = 0.0
        self.kernel_out: list[Seg] = []
        self.close_seen = False
        self.check = OutstreamCheck()  # invariant 5, as the supervisor keeps it
        self.outputs: list[bytearray] = []  # each incarnation's output, swallowed bytes too
        self.noted_by: dict[int, int] = {}  # output bytes -> the incarnation that noted them
        self.compared: list[tuple[int, int, int]] = []  # (incarnation, bytes, noted by)
        self.diverged_in: set[int] = set()
        self.crashes = 0
        self.recoveries = 0
        self.sent_to_client = 0
        self.fabricated: dict[str, int] = {}
        self.fabricated = _Counter()
        self.last_ts_to_client: int | None = None
        self.req_i = 0
        self.client_closed = False
        self.traces: list[str] = []
        self._start_server()

    # -- server incarnations
    def _start_server(self, plan: RecoveryPlan | None = None) -> None:
        cfg, i = self.cfg, self.incarnation
        self.kernel = ToyTCP(
            f"kernel{i}",
            iss=cfg.server_isns[i % len(cfg.server_isns)],
            mss=cfg.mss,
            wscale=cfg.server_ws[i % len(cfg.server_ws)],
            rcvbuf=(cfg.server_rcvbufs or (cfg.rcvbuf,))[i % max(1, len(cfg.server_rcvbufs))],
            ts_base=cfg.server_ts_bases[i % len(cfg.server_ts_bases)],
            rto=cfg.rto,
            sack_ok=True,
        )
        self.kernel.listen()
        self.app = App(self, plan, source=i + 1)
        self.outputs.append(self.app.logic.output)
        self.last_app = self.app
        self.close_seen = False
        self.incarnation += 1

    def crash(self, kind: str) -> None:
        """Kill the application: its kernel connection and state vanish."""
        self.crashes += 1
        if self.app is not None:
            self.ssw.commit.end(self.app.source)
        if self.close_seen:  # the socket is closed: the orphan lives on in the kernel
            self.app = None
            if self.ssw.conn is not None:
                self.ssw.feed(ProcessDied(self.now))
            return
        k = self.kernel
        if k is not None and k.state == "ESTABLISHED" and kind in ("fin", "rst"):
            flags = FIN if kind == "fin" else RST
            off = max(k.nxt, 0)
            self.kernel_out.append(k._seg(self.now, off, flags))
            self._drain()
        self.kernel = None
        self.app = None
        self.kernel_out.clear()
        self.close_seen = False
        conn = self.ssw.conn
        if conn is not None:
            self.ssw.feed(ProcessDied(self.now))
            self.traces += conn.trace
        self.down = True
        self.down_until = self.now + self.cfg.restart_delay

    def _maybe_restart(self) -> None:
        if not self.down or self.now < self.down_until or not self.logger.idle:
            return  # the supervisor syncs with the logger before planning
        self.down = False
        conn = self.ssw.conn
        plan = None
        if conn is not None and conn.state is State.CRASHED:
            plan = plan_recovery(self.logger.to_log(conn.conn_id), **conn.recovery_hints(self.now))  # type: ignore[arg-type]
            self.recoveries += 1
            self.check.new_recovery()
        self._start_server(plan)

    # -- invariant 5: what the shim reports, and the truth to hold the check to
    def note(self, app: App) -> None:
        assert app.conn_id is not None
        self.check.note(app.conn_id, app.wtotal, app.wcrc)
        if app.wtotal:
            self.noted_by[app.wtotal] = app.source - 1

    def checked(self, app: App, d: Divergence | None) -> None:
        if d is not None:
            self.diverged_in.add(app.source - 1)

    def _monitor_divergence(self) -> None:
        """The check reports a divergence in an incarnation iff one of the prefixes it
        compared differs from what the incarnation that noted it wrote (byte for byte)."""
        truth = {
            i
            for i, n, j in self.compared
            if j >= 0 and bytes(self.outputs[i][:n]) != bytes(self.outputs[j][:n])
        }
        for i in sorted(truth - self.diverged_in):
            self.violations.append(f"inv5: incarnation {i} diverged unreported")
        for i in sorted(self.diverged_in - truth):
            self.violations.append(f"inv5: incarnation {i} reported a divergence it did not have")

    # -- plumbing
    def to_kernel(self, s: Seg) -> None:
        if self.kernel is None:
            return
        self.kernel_out += self.kernel.receive(self.now, s)

    def to_client(self, new: Seg, orig: Seg | None) -> None:
        self._monitor_out(new, orig)
        self.sent_to_client += 1
        self.s2c.send(self.now, new)

    def _drain(self) -> None:
        rounds = 0
        while self.kernel_out:
            rounds += 1
            assert rounds < 10000
            s = self.kernel_out.pop(0)
            self.ssw.from_kernel(self.now, s)

    # -- invariants
    def _monitor_out(self, s: Seg, orig: Seg | None) -> None:
        v = self.violations
        conn = self.ssw.conn
        assert conn is not None
        lim = self.logger.ack_limit(conn.conn_id)
        if s.flags & SYN:
            if conn.conn_id not in self.logger.hs:
                v.append("inv2: SYN-ACK reached the client before the handshake was logged")
        elif s.flags & ACK and (lim is None or seq.gt(s.ack, lim)):
            v.append(f"inv1: ack {s.ack} beyond the logged instream {lim}")
        if s.flags & (FIN | RST) and not self.close_seen:
            v.append(f"inv4: {'FIN' if s.flags & FIN else 'RST'} without an application close")
        if s.ts_val is not None:
            if self.last_ts_to_client is not None and seq.lt(s.ts_val, self.last_ts_to_client):
                v.append(f"TSval ran backwards: {s.ts_val} < {self.last_ts_to_client}")
            self.last_ts_to_client = s.ts_val
        if orig is not None and orig.flags & ACK and not s.flags & SYN:
            kedge = seq.add(orig.ack, orig.window << conn.k_wscale)
            edge = seq.add(s.ack, s.window << conn.s_wscale)
            # a shut window at an ack the client already had (a refill's kernel is
            # behind it) offers no buffer at all
            offers = s.window > 0 or not seq.gt(s.ack, orig.ack)
            if seq.gt(edge, kedge) and offers:
                v.append(f"inv1: right edge {edge} beyond the kernel's {kedge}")

    def _monitor_step(self) -> None:
        c = self.client
        conn = self.ssw.conn
        if c.una > 0 and conn is not None:
            lim = self.logger.ack_limit(conn.conn_id)
            logged = -1 if lim is None else seq.sub(lim, seq.add(c.iss, 1))
            if c.una > logged:
                self.violations.append(
                    f"inv6: client discarded {c.una} instream bytes, logger holds {logged}"
                )
        self.violations += c.errors
        c.errors.clear()
        if self.kernel is not None:
            self.violations += [e for e in self.kernel.errors if "reset" not in e]
            self.kernel.errors.clear()

    # -- the client application: request, wait for the answer, ..., close
    def _client_app(self) -> None:
        c = self.client
        if c.state != "ESTABLISHED":
            return
        c.read(len(c.inbuf))
        answered = bytes(c.history).count(b"\n")
        reqs = self.cfg.requests
        while self.req_i < len(reqs) and (self.cfg.pipelined or answered >= self.req_i):
            c.write(reqs[self.req_i])
            self.req_i += 1
        if self.req_i == len(reqs) and answered >= len(reqs) and not self.client_closed:
            self.client_closed = True
            c.close()

    @property
    def finished(self) -> bool:
        c = self.client
        return c.fin_rcvd and self.client_closed and c.all_acked

    def step(self, n: int) -> None:
        now = self.now
        cfg = self.cfg
        if n in cfg.crash_at and not self.down:
            kind = cfg.crash_kind(self.rng) if cfg.crash_kind else "silent"
            self.crash(kind)
        for s in self.c2s.due(now):
            self.ssw.from_client(now, s)
            self._drain()
        for s in self.s2c.due(now):
            for o in self.client.receive(now, s):
                self.c2s.send(now, o)
        for cid, a in self.logger.step(now):
            conn = self.ssw.conn
            if isinstance(a, ReadsAck):
                self.ssw.reads_logged(a)
                if self.app is not None:
                    self.app.step_output(now)
                self._drain()
            elif conn is not None and cid == conn.conn_id:
                self.ssw.feed(a)
                self._drain()
        self._maybe_restart()
        if self.app is not None:
            self.app.step(now)
            self._drain()
        self._client_app()
        for o in self.client.output(now) + self.client.tick(now):
            self.c2s.send(now, o)
        if self.kernel is not None:
            self.kernel_out += self.kernel.output(now) + self.kernel.tick(now)
            self._drain()
        conn = self.ssw.conn
        if conn is not None:
            t = conn.get_timer()
            if t is not None and t <= now:
                self.ssw.feed(Timer(now))
                self._drain()
        self._monitor_step()
        self.now = round(now + self.dt, 6)

    def run(self) -> Result:
        self.client_out = self.client.connect(self.now)
        for s in self.client_out:
            self.c2s.send(self.now, s)
        n = 0
        while not self.finished:
            assert n < self.cfg.max_steps, f"no progress after {n} steps: {self.summary()}"
            self.step(n)
            n += 1
        app = self.last_app
        expected = bytes(app.logic.output) if app is not None else b""
        instream = b"".join(d for k, d in app.logic.reads if k == ReadKind.DATA) if app else b""
        if instream != bytes(self.client.out):
            self.violations.append("the application did not read exactly the client's bytes")
        self._monitor_divergence()
        if self.ssw.conn is not None:
            self.traces += self.ssw.conn.trace
        return Result(
            steps=n,
            violations=self.violations,
            client_received=bytes(self.client.history),
            expected=expected,
            crashes=self.crashes,
            recoveries=self.recoveries,
            to_client=self.sent_to_client,
            fabricated=dict(self.fabricated),
            trace=self.traces,
            divergences=len(self.diverged_in),
        )

    def summary(self) -> str:
        c, conn = self.client, self.ssw.conn
        return (
            f"client={c.state} una={c.una}/{len(c.out)} rcv={c.rcv_nxt} fin={c.fin_rcvd} "
            f"conn={conn.state.name if conn else None} kernel="
            f"{self.kernel.state if self.kernel else None} app={self.app is not None} "
            f"down={self.down} violations={self.violations[:3]}"
        )


class _Counter(dict):
    def __missing__(self, key: str) -> int:
        return 0


def run(cfg: Config) -> Result:
    return World(cfg).run()
