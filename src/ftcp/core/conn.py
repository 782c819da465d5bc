"""Per-connection FT-TCP state machine (paper section IV; invariants 1, 2, 4 and 6 of
docs/DESIGN.md).

Sans-IO: `Connection.handle(input) -> list[Action]`; `get_timer()` says when to
feed `Timer(now)`. The SSW packet loop feeds `ClientSegment`/`ServerSegment`
and carries out `Deliver`/`Drop`/`Hold`/`Fabricate`; the supervisor feeds
`LoggerAck`/`ProcessDied`/`Rebuild`/`Finish` and sends `Log` records; the NSW
side feeds `ReadReported` (a read result to log; its ordering and output commit,
invariant 3, are `ftcp.core.commit`'s), `CloseReported` and `ReplayDone`.

What is enforced here:

1. ack clamping (`clamp_ack_window`): every ack toward the client is
   `<= ack_limit` (`stable_seq`, +1 for a logged client FIN) and `<=` the
   server TCP's own ack; the window is widened so the right edge stays where
   the kernel put it, within the limits stated on `clamp_ack_window`;
2. handshake commit: the SYN-ACK is held until the logger has the `Handshake`;
4. a FIN/RST from the server's TCP passes only after NSW reported a
   shutdown/close; otherwise it is dropped and `StartRecovery` is emitted;
6. a rebuild from a log that ends before what the client was acked is refused;

plus logging of every client segment (`Log(InSegment)`), closed-window acks
while no server connection exists, and translation after recovery (outbound
seq `+delta_seq`, inbound ack/SACK `-delta_seq`, TSval/TSecr by the timestamp
offset, window scale). The rebuilt kernel connection itself (handshake, refill)
is a `ftcp.core.rebuild.KernelRebuild` the connection owns from `Rebuild` on.

States change only in `_set_state`, along `TRANSITIONS`; an input with no
entry for the current state raises `LocalProtocolError` naming both.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import replace

from ftcp.core import seq
from ftcp.core.ackpolicy import AckPolicy, AckView, Basic
from ftcp.core.events import (
    ACK,
    FIN,
    RST,
    SYN,
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
    InstreamArrived,
    Log,
    LoggerAck,
    OutSegment,
    ProcessDied,
    ReadReported,
    Rebuild,
    Repaired,
    ReplayDone,
    ResetClient,
    Rewrite,
    SackBlocks,
    ServerSegment,
    StartRecovery,
    Timer,
)
from ftcp.core.rebuild import KernelRebuild, Late
from ftcp.core.records import (
    Close,
    CloseHow,
    Finished,
    Handshake,
    InSegment,
    SynOptions,
)
from ftcp.core.repair import RepairSpec
from ftcp.core.replay import DEFAULT_MSS, TS_HZ, TS_UNKNOWN_JUMP, RecoveryPlan
from ftcp.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

MAX_WINDOW = 0xFFFF
PROBE_FIRST = 0.05  # seconds from a crash to the first closed-window ack


class State(enum.Enum):
    LISTEN = "LISTEN"  # nothing seen yet
    SYN_RECEIVED = "SYN_RECEIVED"  # client SYN passed to the server's TCP
    SYN_RCVD_UNLOGGED = "SYN_RCVD_UNLOGGED"  # SYN-ACK held until the Handshake is logged
    ESTABLISHED = "ESTABLISHED"  # normal operation (paper IV-C/D)
    CRASHED = "CRASHED"  # no server connection: closed-window acks, client data logged
    REPLAY_SYN_SENT = "REPLAY_SYN_SENT"  # fabricated SYN injected, awaiting the new SYN-ACK
    REPLAYING = "REPLAYING"  # rebuilt; refill and read replay under way (restarting)
    CLOSED = "CLOSED"  # over: translate what still passes, protect nothing


class Trigger(enum.Enum):
    CLIENT_SYN = enum.auto()
    CLIENT_SEGMENT = enum.auto()
    CLIENT_RESET = enum.auto()
    SERVER_SYNACK = enum.auto()  # a SYN-ACK answering the client's (or our) SYN
    SERVER_SEGMENT = enum.auto()
    SERVER_FIN = enum.auto()  # FIN after the application shut down writing
    SERVER_RESET = enum.auto()  # RST after the application closed
    SERVER_UNEXPLAINED = enum.auto()  # FIN/RST the application did not ask for
    HANDSHAKE_LOGGED = enum.auto()
    LOGGER_ACK = enum.auto()
    READ_REPORTED = enum.auto()
    CLOSE_REPORTED = enum.auto()
    TIMER = enum.auto()
    PROCESS_DIED = enum.auto()
    APP_GONE = enum.auto()  # the process died after closing this socket: nothing to do
    RESTORE = enum.auto()  # a connection rebuilt from the log alone (SSW restarted)
    REBUILD = enum.auto()
    REPAIR_SYNACK = enum.auto()  # the rebuilt SYN-ACK, when TCP_REPAIR will finish the job
    REPAIRED = enum.auto()  # the accepted socket was rebuilt with TCP_REPAIR
    REPLAY_DONE = enum.auto()
    RESET_CLIENT = enum.auto()  # give up on the connection: the client gets a reset
    FINISH = enum.auto()


S, T = State, Trigger

_CLIENT_SELF = (T.CLIENT_SYN, T.CLIENT_SEGMENT)
_SERVER_ALL = (
    T.SERVER_SYNACK,
    T.SERVER_SEGMENT,
    T.SERVER_FIN,
    T.SERVER_RESET,
    T.SERVER_UNEXPLAINED,
)
_NSW = (T.READ_REPORTED, T.CLOSE_REPORTED)


def _same(state: State, *triggers: Trigger) -> dict[Trigger, State]:
    return dict.fromkeys(triggers, state)


# The whole state machine: state -> trigger -> next state (and, from every state,
# RESET_CLIENT -> CLOSED: added below).
TRANSITIONS: dict[State, dict[Trigger, State]] = {
    S.LISTEN: {
        T.CLIENT_SYN: S.SYN_RECEIVED,
        T.RESTORE: S.CRASHED,
        T.FINISH: S.CLOSED,
        **_same(S.LISTEN, T.TIMER),
    },
    S.SYN_RECEIVED: {
        T.SERVER_SYNACK: S.SYN_RCVD_UNLOGGED,
        T.SERVER_SEGMENT: S.SYN_RECEIVED,
        T.SERVER_FIN: S.SYN_RECEIVED,
        T.CLIENT_RESET: S.CLOSED,
        T.SERVER_RESET: S.CLOSED,
        T.SERVER_UNEXPLAINED: S.CLOSED,
        T.PROCESS_DIED: S.CLOSED,
        T.APP_GONE: S.CLOSED,
        T.FINISH: S.CLOSED,
        **_same(S.SYN_RECEIVED, *_CLIENT_SELF, T.LOGGER_ACK, T.TIMER),
    },
    S.SYN_RCVD_UNLOGGED: {
        T.HANDSHAKE_LOGGED: S.ESTABLISHED,
        T.CLIENT_RESET: S.CLOSED,
        T.SERVER_RESET: S.CLOSED,
        T.SERVER_UNEXPLAINED: S.CLOSED,
        T.PROCESS_DIED: S.CLOSED,
        T.APP_GONE: S.CLOSED,
        T.FINISH: S.CLOSED,
        **_same(
            S.SYN_RCVD_UNLOGGED,
            *_CLIENT_SELF,
            T.SERVER_SYNACK,
            T.SERVER_SEGMENT,
            T.SERVER_FIN,
            T.LOGGER_ACK,
            T.TIMER,
        ),
    },
    S.ESTABLISHED: {
        T.CLIENT_RESET: S.CLOSED,
        T.SERVER_RESET: S.CLOSED,
        T.SERVER_UNEXPLAINED: S.CRASHED,
        T.PROCESS_DIED: S.CRASHED,
        T.FINISH: S.CLOSED,
        **_same(
            S.ESTABLISHED,
            *_CLIENT_SELF,
            T.SERVER_SYNACK,
            T.SERVER_SEGMENT,
            T.SERVER_FIN,
            T.HANDSHAKE_LOGGED,
            T.LOGGER_ACK,
            *_NSW,
            T.TIMER,
            T.APP_GONE,
        ),
    },
    S.CRASHED: {
        T.REBUILD: S.REPLAY_SYN_SENT,
        T.CLIENT_RESET: S.CLOSED,
        T.FINISH: S.CLOSED,
        **_same(
            S.CRASHED,
            *_CLIENT_SELF,
            *_SERVER_ALL,
            T.HANDSHAKE_LOGGED,
            T.LOGGER_ACK,
            T.TIMER,
            T.PROCESS_DIED,
            T.APP_GONE,
        ),
    },
    S.REPLAY_SYN_SENT: {
        T.SERVER_SYNACK: S.REPLAYING,
        T.REPAIR_SYNACK: S.REPLAY_SYN_SENT,  # --restore repair: wait for the accept
        T.REPAIRED: S.REPLAYING,
        T.PROCESS_DIED: S.CRASHED,
        T.APP_GONE: S.CRASHED,
        T.CLIENT_RESET: S.CLOSED,
        T.FINISH: S.CLOSED,
        **_same(
            S.REPLAY_SYN_SENT,
            *_CLIENT_SELF,
            T.SERVER_SEGMENT,
            T.SERVER_FIN,
            T.SERVER_RESET,
            T.SERVER_UNEXPLAINED,
            T.HANDSHAKE_LOGGED,
            T.LOGGER_ACK,
            T.TIMER,
        ),
    },
    S.REPLAYING: {
        T.REPLAY_DONE: S.ESTABLISHED,
        T.CLIENT_RESET: S.CLOSED,
        T.SERVER_RESET: S.CLOSED,
        T.SERVER_UNEXPLAINED: S.CRASHED,
        T.PROCESS_DIED: S.CRASHED,
        T.FINISH: S.CLOSED,
        **_same(
            S.REPLAYING,
            *_CLIENT_SELF,
            T.SERVER_SYNACK,
            T.SERVER_SEGMENT,
            T.SERVER_FIN,
            T.HANDSHAKE_LOGGED,
            T.LOGGER_ACK,
            *_NSW,
            T.TIMER,
            T.APP_GONE,
        ),
    },
    S.CLOSED: _same(
        S.CLOSED,
        T.CLIENT_SEGMENT,
        T.CLIENT_RESET,
        *_SERVER_ALL,
        T.HANDSHAKE_LOGGED,
        T.LOGGER_ACK,
        *_NSW,
        T.TIMER,
        T.PROCESS_DIED,
        T.APP_GONE,
        T.FINISH,
    ),
}

for _row in TRANSITIONS.values():
    _row[T.RESET_CLIENT] = S.CLOSED

_LIVE = (S.ESTABLISHED, S.REPLAYING, S.CLOSED)  # a server TCP connection exists
_DARK = (S.CRASHED, S.REPLAY_SYN_SENT)  # none does: SSW answers the client itself


def clamp_ack_window(
    kernel_ack: int,
    raw_window: int,
    kernel_wscale: int,
    ack_limit: int,
    client_wscale: int,
) -> tuple[int, int]:
    """Clamp a server ack to `ack_limit` and widen the window to compensate.

    Returns `(ack, raw_window)` for the client, whose view of the server's
    window scale is `client_wscale` (the original SYN-ACK's; 0 on SYN segments
    and when scaling was not negotiated). The kernel's right edge is
    `R = kernel_ack + (raw_window << kernel_wscale)`; with
    `ack = min(kernel_ack, ack_limit)` the window is the largest field value
    `w <= 65535` with `ack + (w << client_wscale) <= R`. Guarantees:

    * `ack <= ack_limit` and `ack <= kernel_ack` (invariant 1);
    * the advertised right edge `E = ack + (w << client_wscale)` never exceeds
      `R` (SSW never offers buffer the server's TCP does not have);
    * `E` is the largest edge the client's scale can express under that rule:
      `E > R - (1 << client_wscale)` unless capped at 65535 units;
    * hence, if the kernel's edge does not retreat, the client's edge retreats
      by less than one scale unit, and only when no expressible edge lies
      between the previous one and `R` (rounding, never compensation);
    * unchanged segments stay unchanged: when `ack == kernel_ack` and the two
      scales agree, `w == raw_window`.
    """
    ack = seq.min_(kernel_ack, ack_limit)
    if ack == kernel_ack and kernel_wscale == client_wscale:
        return ack, raw_window
    edge = seq.add(kernel_ack, raw_window << kernel_wscale)
    room = max(0, seq.sub(edge, ack))
    return ack, min(MAX_WINDOW, room >> client_wscale)


class _Coverage:
    """End of the instream prefix handed to the server's TCP *in order*, or
    acknowledged by it.

    A segment extends the prefix only if it starts at or before the current end
    when it is handed over: a TCP keeps in-order in-window data, but may drop
    out-of-order data (so ranges that arrived early are not counted later, until
    the TCP's own cumulative ack covers them).
    """

    __slots__ = ("end",)

    def __init__(self, base: int) -> None:
        self.end = base

    def add(self, start: int, end: int) -> None:
        if seq.le(start, self.end) and seq.gt(end, self.end):
            self.end = end


class Connection:
    """One protected connection as SSW (and the NSW agent) see it."""

    def __init__(
        self,
        conn_id: int,
        *,
        client: tuple[str, int] = ("0.0.0.0", 0),
        server: tuple[str, int] = ("0.0.0.0", 0),
        accept_order: int = 0,
        policy: AckPolicy | None = None,
        probe_interval: float = 0.5,
        syn_rto: float = 1.0,
        refill_rto: float = 0.2,
        refill_chunk: int | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.client = client
        self.server = server
        self.accept_order = accept_order
        self.policy = policy if policy is not None else Basic()
        self.probe_interval = probe_interval
        self.syn_rto = syn_rto
        self.refill_rto = refill_rto
        # largest refill segment (None: the new kernel's MSS); the real I/O layer injects
        # over loopback and may use far larger segments
        self.refill_chunk = refill_chunk
        self.state = State.LISTEN
        self.trace: list[str] = []  # "A => B" transitions, in order
        # handshake
        self.c_isn = 0
        self.s_isn = 0
        self.client_opts = SynOptions()
        self.server_opts = SynOptions()
        self.handshake_logged = False
        # the paper's variables
        self.stable_seq = 0
        self.server_seq = 0
        self.delta_seq = 0
        self._fin_logged = False
        # negotiated options; scales: client's window field, server's as the client sees it,
        # and the current server TCP's own
        self.ts_ok = False
        self.sack_ok = False
        self.c_wscale = 0
        self.s_wscale = 0
        self.k_wscale = 0
        self.ts_off = 0
        # application (NSW)
        self.app_shut_wr = False
        self.app_closed = False
        self._closes_seen = 0
        # what SSW knows of both sides
        self.ip_packets = 0
        self.client_window = 0
        self.client_ts_val: int | None = None
        self._client_max = 0  # end of the highest client data seen
        self.logged_bytes = 0  # instream bytes the logger acknowledged (not wrapped)
        self.snd_nxt = 0  # client view: end of the outstream sent to the client
        self._snd_known = False
        self.delivered_ack = 0  # highest ack the client was sent
        self._server_fin_end: int | None = None  # client view: end of the server's FIN
        self.advertised_edge: int | None = None  # right edge last advertised to the client
        self.kernel_ack: int | None = None  # highest ack the server's TCP tried
        self.kernel_ack_packets = 0  # `ip_packets` when the server's TCP last acked
        self.right_edge: int | None = None  # the server TCP's latest right edge
        self._kernel_has = _Coverage(0)
        self.kernel_snd_nxt = 0  # kernel view
        self.kernel_una = 0  # kernel view: highest ack handed to the server's TCP
        self.ts_last_out: int | None = None  # client view: highest TSval sent to the client
        self._ts_last_out_at = 0.0
        self._held: list[ServerSegment] = []  # Lazy
        self._held_synack: int | None = None
        # recovery
        self.plan: RecoveryPlan | None = None
        self._rebuilt = False  # translation by delta_seq / ts_off / wscale in force
        self._frozen_ack = 0
        self._next_probe: float | None = None
        self._last_probe = float("-inf")
        self._probe_gap = probe_interval
        # the new kernel connection, from `Rebuild` until the next crash
        self.rebuild: KernelRebuild | None = None
        # client data that arrived while no server TCP existed (logged, dropped): refilled
        # after the plan's instream, so the client need not wait for its own retransmission
        self._late: Late = {}
        self._out: list[Action] = []

    # ------------------------------------------------------------------ public

    @classmethod
    def restored(
        cls, plan: RecoveryPlan, now: float, *, policy: AckPolicy | None = None, **kw: object
    ) -> Connection:
        """A connection known only from the log (SSW itself restarted, or host failover).

        It starts in CRASHED: closed-window acks until `Rebuild`.
        """
        c = cls(plan.conn_id, accept_order=plan.accept_order, policy=policy, **kw)  # type: ignore[arg-type]
        nxt = c._next(T.RESTORE, "restored")
        c._adopt_handshake(plan.c_isn, plan.client_opts, plan.s_isn, plan.server_opts)
        c.handshake_logged = True
        c.stable_seq = plan.stable_seq
        c.logged_bytes = seq.usub(plan.stable_seq, seq.add(plan.c_isn, 1))  # < 4 GiB known
        c._fin_logged = plan.client_fin
        c._client_max = plan.ack_limit
        c.server_seq = c.snd_nxt = plan.server_seq
        c._snd_known = True
        c.delivered_ack = plan.ack_limit
        c.client_window = plan.client_window
        c.client_ts_val = plan.client_ts_val
        if c.ts_ok:
            c.ts_last_out = (
                plan.ts_floor
                if plan.ts_floor is not None
                else seq.add(plan.server_opts.ts_val or 0, TS_UNKNOWN_JUMP)
            )
            c._ts_last_out_at = now
        c.plan = plan
        c._crash(now)
        c._set_state(nxt)
        return c

    @property
    def ack_limit(self) -> int:
        """Highest ack the client may see: `stable_seq`, +1 for a logged client FIN."""
        if self._fin_logged:
            return seq.add(self.stable_seq, 1)
        return self.stable_seq

    @property
    def fin_logged(self) -> bool:
        """The client's FIN is durably logged (the ack limit covers it)."""
        return self._fin_logged

    @property
    def closed_both_ways(self) -> bool:
        """The client acknowledged the server's FIN, and its own FIN is logged and was
        acknowledged to it: no byte can flow either way any more."""
        fin = self._server_fin_end
        return (
            fin is not None
            and seq.ge(self.server_seq, fin)
            and self._fin_logged
            and seq.ge(self.delivered_ack, self.ack_limit)
        )

    @property
    def restarting(self) -> bool:
        return self.state in (State.CRASHED, State.REPLAY_SYN_SENT, State.REPLAYING)

    @property
    def logs_reads(self) -> bool:
        """A server TCP connection exists: the application's read results on it are
        logged (before that, and in recovery, it cannot read from this connection)."""
        return self.state in _LIVE

    @property
    def refilling(self) -> bool:
        return self._rebuilt and self.rebuild is not None and not self.rebuild.done

    def refill_view(self) -> dict[str, int] | None:
        """Where a rebuilt connection's refill stands (kernel sequence space), for
        `ftcp status`: None once the kernel has every logged byte."""
        rb = self.rebuild
        if not self.refilling or self.kernel_ack is None or rb is None:
            return None
        return {
            "kernel_ack": self.kernel_ack,
            "kernel_window_edge": self.right_edge if self.right_edge is not None else -1,
            "injected_to": rb.inj_next,
            "target": rb.target(),
            "client_sent_to": self._client_max,
            "kernel_una": self.kernel_una,
            "kernel_snd_nxt": self.kernel_snd_nxt,
        }

    def handle(self, ev: Input) -> list[Action]:
        """Feed one input; return the actions to carry out, in order."""
        match ev:
            case ClientSegment():
                self._on_client(ev)
            case ServerSegment():
                self._on_server(ev)
            case LoggerAck():
                self._on_logger_ack(ev)
            case ReadReported():
                self._on_read_reported(ev)
            case CloseReported():
                self._on_close_reported(ev)
            case Timer():
                self._on_timer(ev)
            case ProcessDied():
                self._on_process_died(ev)
            case Rebuild():
                self._on_rebuild(ev)
            case Repaired():
                self._on_repaired(ev)
            case InstreamArrived():
                if self.refilling and self.state in _LIVE:
                    self._refill(ev.now)
            case ReplayDone():
                self._set_state(self._next(T.REPLAY_DONE, ev))
            case ResetClient():
                self._on_reset_client(ev)
            case Finish():
                nxt = self._next(T.FINISH, ev)
                if self.state is not State.CLOSED:
                    self._abandon("finished")
                self._set_state(nxt)
            case _:
                raise LocalProtocolError(f"conn {self.conn_id}: not an input: {ev!r}")
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When to feed `Timer(now)` next (None: no timer needed)."""
        t: list[float] = []
        if self.state in _DARK and self._next_probe is not None:
            t.append(self._next_probe)
        rb = self.rebuild
        if self.state is State.REPLAY_SYN_SENT and rb is not None and rb.syn_sent_at is not None:
            t.append(rb.syn_sent_at + self.syn_rto)
        if self.refilling and self.state in _LIVE and rb is not None:
            t.append(rb.at + self.refill_rto)
        return min(t) if t else None

    # --------------------------------------------------------------- the machine

    def _next(self, trig: Trigger, ev: object) -> State:
        try:
            return TRANSITIONS[self.state][trig]
        except KeyError:
            what = type(ev).__name__ if not isinstance(ev, str) else ev
            raise LocalProtocolError(
                f"conn {self.conn_id}: no transition from {self.state.name} on {trig.name} ({what})"
            ) from None

    def _set_state(self, new: State) -> None:
        """The only place the state changes."""
        if new is self.state:
            return
        line = f"{self.state.name} => {new.name}"
        self.trace.append(line)
        log.debug("conn %d: %s", self.conn_id, line)
        self.state = new

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    # ------------------------------------------------------------ client -> server

    def _on_client(self, ev: ClientSegment) -> None:
        f = ev.flags
        if f & RST:
            trig = T.CLIENT_RESET
        elif f & SYN and not f & ACK:
            trig = T.CLIENT_SYN
        else:
            trig = T.CLIENT_SEGMENT
        nxt = self._next(trig, ev)
        st = self.state
        self.ip_packets += 1
        if st is State.LISTEN:  # the client's SYN
            self.c_isn = seq.check(ev.seq)
            self.client_opts = ev.syn_opts or SynOptions()
            self.stable_seq = seq.add(self.c_isn, 1)
            self._client_max = self.stable_seq
            self.delivered_ack = self.stable_seq
            self._kernel_has = _Coverage(self.stable_seq)
            self._note_client(ev)
            self._emit(Deliver(ev.ident))
        elif st in (State.SYN_RECEIVED, State.SYN_RCVD_UNLOGGED):
            if trig is T.CLIENT_RESET:
                self._abandon("client reset during the handshake")
            self._emit(Deliver(ev.ident))
        elif st in _DARK:
            self._note_client(ev)
            if trig is T.CLIENT_SEGMENT:
                self._log_in(ev)
                self._keep_late(ev)
            if trig is T.CLIENT_RESET:
                self._abandon("client reset while recovering")
            self._emit(Drop(ev.ident, "no server connection: recovering"))
            if trig is T.CLIENT_SEGMENT and ev.now - self._last_probe >= self.probe_interval / 5:
                self._probe(ev.now)
        else:  # a server TCP connection exists
            data_end = None
            if ev.payload_len or f & FIN:
                data_end = seq.add(ev.seq, ev.payload_len + (1 if f & FIN else 0))
            self.policy.note_client_packet(self.ip_packets, data_end)
            self._note_client(ev)
            if trig is T.CLIENT_SEGMENT and st is not State.CLOSED:
                self._log_in(ev)
            if data_end is not None:  # what lies beyond the kernel's window may be dropped
                edge = self.right_edge
                self._kernel_has.add(ev.seq, data_end if edge is None else seq.min_(data_end, edge))
            if self._past_kernel_window(ev):
                self._ack_past_window(ev)
            else:
                self._emit(Deliver(ev.ident, self._inbound_rewrite(ev)))
            if trig is T.CLIENT_RESET and st is not State.CLOSED:
                self._abandon("client reset")
        self._set_state(nxt)

    def _note_client(self, ev: ClientSegment) -> None:
        if ev.flags & SYN:
            return  # its window is unscaled, its TSval is in client_opts
        if ev.flags & ACK and self._snd_known and seq.le(ev.ack, self.snd_nxt):
            self.server_seq = seq.max_(self.server_seq, ev.ack)
        self.client_window = ev.window
        if ev.ts_val is not None and (
            self.client_ts_val is None or seq.ge(ev.ts_val, self.client_ts_val)
        ):
            self.client_ts_val = ev.ts_val
        if ev.payload_len or ev.flags & FIN:
            end = seq.add(ev.seq, ev.payload_len + (1 if ev.flags & FIN else 0))
            self._client_max = seq.max_(self._client_max, end)

    def _log_in(self, ev: ClientSegment) -> None:
        p = ev.payload
        if ev.payload_len and len(p) != ev.payload_len:
            raise LocalProtocolError(
                f"conn {self.conn_id}: client segment {ev.ident} without its payload bytes"
            )
        if type(p) is not bytes and not (type(p) is memoryview and p.readonly):
            p = bytes(p)  # a read-only view (SSW's, into a received datagram) is kept as is
        self._emit(
            Log(
                InSegment(
                    conn_id=self.conn_id,
                    seq=ev.seq,
                    ack=ev.ack,
                    window=ev.window,
                    fin=bool(ev.flags & FIN),
                    ts_val=ev.ts_val,
                    ts_ecr=ev.ts_ecr,
                    payload=p,
                )
            )
        )

    def _kernel_view_ack(self, client_ack: int) -> int:
        """A client ack mapped to the rebuilt kernel, kept in `[kernel_una, kernel_snd_nxt]`
        (an ack of unsent data, or one far below snd_una, makes Linux drop the segment)."""
        k = seq.usub(client_ack, self.delta_seq)
        k = seq.min_(k, self.kernel_snd_nxt)
        return seq.max_(k, self.kernel_una)

    def _past_kernel_window(self, ev: ClientSegment) -> bool:
        """A client data segment that starts past the rebuilt kernel's window: the client
        is ahead of the refill (and the new kernel's window is smaller than the old one's).
        Linux drops such a segment whole, its ack unread."""
        return (
            self._rebuilt
            and bool(ev.payload_len or ev.flags & FIN)
            and not ev.flags & (SYN | RST)
            and bool(ev.flags & ACK)
            and self.right_edge is not None
            and self.rebuild is not None
            and seq.gt(ev.seq, self.right_edge)
        )

    def _ack_past_window(self, ev: ClientSegment) -> None:
        """The kernel would drop it (its bytes are logged: the refill brings them, or the
        client sends them again, never acked); its ack goes on alone, in a pure ack at
        the window's edge, or the server's output may never be acked: a server blocked
        in write with its window shut waits for good."""
        assert self.rebuild is not None and self.right_edge is not None
        self._emit(Drop(ev.ident, "past the rebuilt kernel's window: its ack goes alone"))
        rw = self._inbound_rewrite(ev)  # the ack and TSecr in the kernel's view
        ack = rw.ack if rw is not None and rw.ack is not None else ev.ack
        ts_ecr = rw.ts_ecr if rw is not None and rw.ts_ecr is not None else ev.ts_ecr
        seg = self.rebuild.segment(self.right_edge, b"", ack, ev.window, self.client_ts_val, ts_ecr)
        self._emit(Fabricate(Direction.TO_SERVER, seg, "ack of a segment past the window"))

    def _inbound_rewrite(self, ev: ClientSegment) -> Rewrite | None:
        if not self._rebuilt:
            return None
        ack = sack = ts_ecr = sq = None
        if (
            not ev.payload_len
            and not ev.flags & (SYN | FIN | RST)
            and self.right_edge is not None
            and seq.gt(ev.seq, self.right_edge)
        ):
            # a pure ack past the rebuilt kernel's window (the client is ahead of the
            # refill, and the new kernel's window is smaller than the old one's): Linux
            # would drop it unread, ack included; its window's right edge is acceptable
            sq = self.right_edge
        if ev.flags & ACK:
            k = self._kernel_view_ack(ev.ack)
            self.kernel_una = seq.max_(self.kernel_una, k)
            if k != ev.ack:
                ack = k
        if ev.sack:
            blocks: list[tuple[int, int]] = []
            for left, right in ev.sack:
                kl = seq.usub(left, self.delta_seq)
                kr = seq.min_(seq.usub(right, self.delta_seq), self.kernel_snd_nxt)
                if seq.lt(kl, kr):
                    blocks.append((kl, kr))
            new: SackBlocks = tuple(blocks)
            if new != ev.sack:
                sack = new
        if ev.ts_ecr is not None and self.ts_off:
            ts_ecr = seq.usub(ev.ts_ecr, self.ts_off)
        rw = Rewrite(seq=sq, ack=ack, sack=sack, ts_ecr=ts_ecr)
        return None if rw.empty else rw

    # ------------------------------------------------------------ server -> client

    def _on_server(self, ev: ServerSegment) -> None:
        f = ev.flags
        if f & SYN:
            if not f & ACK:
                raise RemoteProtocolError(
                    f"conn {self.conn_id}: server TCP sent a SYN without ACK (active open)"
                )
            trig = T.SERVER_SYNACK if ev.ack == seq.add(self.c_isn, 1) else T.SERVER_SEGMENT
        elif f & RST:
            trig = T.SERVER_RESET if self.app_closed else T.SERVER_UNEXPLAINED
        elif f & FIN:
            trig = T.SERVER_FIN if self.app_shut_wr else T.SERVER_UNEXPLAINED
        else:
            trig = T.SERVER_SEGMENT
        rb = self.rebuild
        if trig is T.SERVER_SYNACK and self.state is State.REPLAY_SYN_SENT and rb and rb.repair:
            trig = T.REPAIR_SYNACK
        stale_rst = bool(f & RST) and self.state in _LIVE and self.closed_both_ways
        if stale_rst:
            trig = T.SERVER_RESET  # nothing left to recover: the connection is over
        nxt = self._next(trig, ev)
        st = self.state
        if trig is T.REPAIR_SYNACK:
            self._repair_synack_seen(ev)
        elif st is State.SYN_RECEIVED and trig is T.SERVER_SYNACK:
            self._adopt_handshake(self.c_isn, self.client_opts, ev.seq, ev.syn_opts or SynOptions())
            self._note_kernel_ack(ev)
            self._emit(Log(self._handshake_record()))
            self._held_synack = ev.ident
            self._emit(Hold(ev.ident, "handshake not logged yet"))
        elif st is State.SYN_RCVD_UNLOGGED and trig is T.SERVER_SYNACK:
            if self._held_synack is not None:
                self._emit(Drop(self._held_synack, "superseded by a retransmitted SYN-ACK"))
            self._held_synack = ev.ident
            self._emit(Hold(ev.ident, "handshake not logged yet"))
        elif st in (State.SYN_RECEIVED, State.SYN_RCVD_UNLOGGED):
            if trig in (T.SERVER_RESET, T.SERVER_UNEXPLAINED):
                self._abandon("server reset during the handshake")
                self._emit(Drop(ev.ident, "no close reported: the client will retry its SYN"))
            else:
                self._emit(Drop(ev.ident, "server segment before the handshake is logged"))
        elif st is State.CRASHED:
            self._emit(Drop(ev.ident, "server crashed: output of the dead connection"))
        elif st is State.REPLAY_SYN_SENT:
            if trig is T.SERVER_SYNACK:
                self._rebuild_synack(ev)
            else:
                self._emit(Drop(ev.ident, "not the rebuilt SYN-ACK"))
        elif stale_rst:
            # the client has both FINs acknowledged (it is in TIME-WAIT or gone): this is
            # the server TCP answering a late duplicate of the client's last ack after the
            # socket went away (a FIN retransmitted while that ack waited in SSW); it says
            # nothing the client needs and would only cut its TIME-WAIT short
            self._emit(Drop(ev.ident, "RST after both FINs were acknowledged"))
            if st is not State.CLOSED:
                self._abandon("server reset after both FINs")
        elif trig is T.SERVER_UNEXPLAINED and st is not State.CLOSED:
            self._emit(Drop(ev.ident, "FIN/RST without an application close"))
            self._emit(StartRecovery(self.conn_id, "FIN/RST from the server TCP without close"))
            self._crash(ev.now)
        elif trig is T.SERVER_SYNACK and self._rebuilt:
            self._emit(Drop(ev.ident, "rebuilt SYN-ACK retransmitted"))
            self._emit(Fabricate(Direction.TO_SERVER, self._third_ack(), "third ack again"))
        else:
            self._server_live(ev)
            if trig is T.SERVER_RESET and st is not State.CLOSED:
                self._abandon("server reset after close")
        self._set_state(nxt)

    def _note_kernel_ack(self, ev: ServerSegment) -> None:
        if not ev.flags & ACK:
            return
        k = ev.ack
        scale = 0 if ev.flags & SYN else self.k_wscale
        self.kernel_ack = k if self.kernel_ack is None else seq.max_(self.kernel_ack, k)
        self.kernel_ack_packets = self.ip_packets
        self.right_edge = seq.add(k, ev.window << scale)
        if not ev.flags & SYN:
            # a cumulative ack is never taken back: the kernel holds everything below
            # it, early arrivals included (a hole filled by a retransmission)
            self._kernel_has.add(self._kernel_has.end, k)

    def _server_live(self, ev: ServerSegment) -> None:
        self._note_kernel_ack(ev)
        refilled = False
        rb = self.rebuild
        if self.refilling and rb is not None and self.kernel_ack is not None:
            if ev.ts_val is not None:
                rb.k_tsval = ev.ts_val
            rb.progress(self.kernel_ack, ev.now)
            refilled = rb.done
        pure = ev.payload_len == 0 and not ev.flags & (SYN | FIN | RST)
        if (
            ev.flags & ACK
            and self.state is not State.CLOSED
            and self.policy.should_hold(ev.ack, self.ack_limit, pure)
        ):
            self._held.append(ev)
            self._emit(Hold(ev.ident, f"{self.policy.name}: ack not logged yet"))
            if refilled:  # the client must not wait for its own probe to see the window
                self._open_window("rebuilt: refill complete")
        else:
            self._deliver_server(ev)
        if self._rebuilt:
            self._refill(ev.now)

    def _deliver_server(self, ev: ServerSegment) -> None:
        f = ev.flags
        out_seq = seq.add(ev.seq, self.delta_seq)
        end = seq.add(out_seq, ev.seg_len)
        self.snd_nxt = seq.max_(self.snd_nxt, end)
        if f & FIN:
            self._server_fin_end = end
        kend = seq.add(ev.seq, ev.seg_len)
        self.kernel_snd_nxt = seq.max_(self.kernel_snd_nxt, kend)
        new_seq = out_seq if self.delta_seq else None
        new_ack = new_win = None
        if f & ACK:
            syn = bool(f & SYN)
            ack, win = clamp_ack_window(
                ev.ack,
                ev.window,
                0 if syn else self.k_wscale,
                self.ack_limit,
                0 if syn else self.s_wscale,
            )
            if self.refilling and seq.lt(ack, self.delivered_ack) and not syn:
                # a rebuilt kernel still being refilled: the client was acked further
                # already. An ack that runs backwards is ignored at best; further back
                # than the largest window, Linux drops the whole segment, data included
                # (RFC 5961 5.2). The client gets the ack it has, and the kernel's right
                # edge. (Not otherwise: an ack strategy's fabricated acks run ahead of
                # the kernel's by a logging delay, and those kernel acks go on as ever.)
                edge = seq.add(ev.ack, ev.window << self.k_wscale)
                ack = self.delivered_ack
                win = min(MAX_WINDOW, max(0, seq.sub(edge, ack)) >> self.s_wscale)
                new_edge = seq.add(ack, win << self.s_wscale)
                if (
                    not ev.seg_len
                    and not f & RST
                    and ev.seq == self.kernel_snd_nxt  # not a window probe
                    and self.advertised_edge is not None
                    and seq.le(new_edge, self.advertised_edge)
                ):
                    self._emit(Drop(ev.ident, "an old ack of the refill: nothing new to say"))
                    return
            if ack != ev.ack:
                new_ack = ack
            if win != ev.window:
                new_win = win
            self.delivered_ack = seq.max_(self.delivered_ack, ack)
            self.advertised_edge = seq.add(ack, win << (0 if syn else self.s_wscale))
        new_ts = self._ts_out(ev.ts_val, ev.now)
        rw = Rewrite(seq=new_seq, ack=new_ack, window=new_win, ts_val=new_ts)
        self._emit(Deliver(ev.ident, None if rw.empty else rw))

    def _ts_out(self, ts_val: int | None, now: float) -> int | None:
        """Client-view TSval for an outbound segment (None: unchanged); never backwards."""
        if ts_val is None or not self.ts_ok:
            return None
        out = seq.add(ts_val, self.ts_off)
        if self.ts_last_out is not None and seq.lt(out, self.ts_last_out):
            out = self.ts_last_out
        if self.ts_last_out is None or seq.gt(out, self.ts_last_out):
            self.ts_last_out = out
            self._ts_last_out_at = now
        return None if out == ts_val else out

    def _fabricate_ack(self, ack: int, window: int | None, reason: str) -> None:
        if window is None:
            room = 0
            if self.right_edge is not None:
                room = max(0, seq.sub(self.right_edge, ack))
            window = min(MAX_WINDOW, room >> self.s_wscale)
        self.delivered_ack = seq.max_(self.delivered_ack, ack)
        self.advertised_edge = seq.add(ack, window << self.s_wscale)
        self._emit(
            Fabricate(
                Direction.TO_CLIENT,
                OutSegment(
                    seq=self.snd_nxt,
                    ack=ack,
                    flags=ACK,
                    window=window,
                    ts_val=self.ts_last_out if self.ts_ok else None,
                    ts_ecr=self.client_ts_val if self.ts_ok else None,
                ),
                reason,
            )
        )

    def _probe(self, now: float) -> None:
        """Closed-window ack: keeps the client in step while no server TCP exists."""
        self._last_probe = now
        self._next_probe = now + self._probe_gap
        self._probe_gap = min(2 * self._probe_gap, self.probe_interval)
        self._fabricate_ack(self._frozen_ack, 0, "closed-window ack (recovering)")

    # ------------------------------------------------------------------- logger

    def _on_logger_ack(self, ev: LoggerAck) -> None:
        trig = T.LOGGER_ACK
        if ev.handshake and not self.handshake_logged:
            trig = T.HANDSHAKE_LOGGED
        nxt = self._next(trig, ev)
        if trig is T.HANDSHAKE_LOGGED:
            self.handshake_logged = True
            if self._held_synack is not None:
                self._emit(Deliver(self._held_synack))
                self._held_synack = None
        if ev.stable_seq is not None and self.state is not State.LISTEN:
            self._advance_stable(ev)
        self._set_state(nxt)

    @property
    def unlogged_bytes(self) -> int:
        """Client bytes seen but not yet acknowledged by the logger (the `stable_seq` lag)."""
        return seq.sub(self._client_max, self.stable_seq) if self.handshake_logged else 0

    def _advance_stable(self, ev: LoggerAck) -> None:
        new = ev.stable_seq
        assert new is not None
        if seq.lt(new, self.stable_seq):
            return  # stale (acks are monotonic; a batch may be reordered)
        if seq.gt(new, self._client_max):
            raise RemoteProtocolError(
                f"conn {self.conn_id}: logger acknowledged {new}, beyond the client's "
                f"data ({self._client_max})"
            )
        old = self.ack_limit
        fin_before = self._fin_logged
        self.logged_bytes += seq.sub(new, self.stable_seq)
        self.stable_seq = new
        if ev.fin:
            self._fin_logged = True
        limit = self.ack_limit
        if not seq.gt(limit, old) or self.state not in (State.ESTABLISHED, State.REPLAYING):
            return
        if self._held:
            keep = []
            for h in self._held:
                if self.policy.may_release(h.ack, limit):
                    self._deliver_server(h)
                else:
                    keep.append(h)
            self._held = keep
        view = AckView(
            kernel_ack=self.kernel_ack,
            delivered_ack=self.delivered_ack,
            kernel_has=self._kernel_has.end,
            right_edge=self.right_edge,
            ip_packets=self.ip_packets,
            kernel_ack_packets=self.kernel_ack_packets,
        )
        ack = self.policy.on_stable(view, old, limit)
        if ack is not None:
            if seq.gt(ack, limit):
                raise LocalProtocolError(f"{self.policy.name} fabricated ack beyond the limit")
            self._fabricate_ack(ack, None, f"{self.policy.name} ack")
        if (
            self._fin_logged
            and not fin_before
            and seq.ge(self._kernel_has.end, limit)
            and seq.lt(self.delivered_ack, limit)
        ):
            # the client's FIN reached the server's TCP in order and is now logged, but the
            # server TCP's ack of it went out clamped (or, from a TIME-WAIT socket, not at
            # all) and nothing else will carry it: any strategy acks it now, or the client
            # retransmits its FIN after its RTO
            self._fabricate_ack(limit, None, "logged client FIN")

    # ---------------------------------------------------------------------- NSW

    def _on_read_reported(self, ev: ReadReported) -> None:
        nxt = self._next(T.READ_REPORTED, ev)
        r = ev.result
        if r.conn_id != self.conn_id:
            raise LocalProtocolError(f"conn {self.conn_id}: read result of conn {r.conn_id}")
        self._emit(Log(r))
        self._set_state(nxt)

    def _on_close_reported(self, ev: CloseReported) -> None:
        nxt = self._next(T.CLOSE_REPORTED, ev)
        how = ev.how
        if how in (CloseHow.SHUT_WR, CloseHow.SHUT_RDWR, CloseHow.CLOSE):
            self.app_shut_wr = True
        if how is CloseHow.CLOSE:
            self.app_closed = True
        self._closes_seen += 1
        replayed = self.plan is not None and self._closes_seen <= len(self.plan.closes)
        if not replayed:
            self._emit(Log(Close(self.conn_id, how)))
        self._set_state(nxt)

    # ---------------------------------------------------------------- lifecycle

    def _on_timer(self, ev: Timer) -> None:
        nxt = self._next(T.TIMER, ev)
        now = ev.now
        if self.state in _DARK and self._next_probe is not None and now >= self._next_probe:
            self._probe(now)
        rb = self.rebuild
        if (
            self.state is State.REPLAY_SYN_SENT
            and rb is not None
            and rb.syn_sent_at is not None
            and now >= rb.syn_sent_at + self.syn_rto
        ):
            rb.syn_sent_at = now
            self._emit(Fabricate(Direction.TO_SERVER, rb.syn(), "rebuild SYN again"))
        if (
            rb is not None
            and self.refilling
            and self.state in _LIVE
            and now >= rb.at + self.refill_rto
        ):
            rb.timed_out(self.kernel_ack, now)
            self._refill(now)
        self._set_state(nxt)

    def _on_process_died(self, ev: ProcessDied) -> None:
        trig = T.APP_GONE if self.app_closed else T.PROCESS_DIED
        nxt = self._next(trig, ev)
        if nxt is State.CRASHED and self.state is not State.CRASHED:
            self._crash(ev.now)
        elif nxt is State.CLOSED and self.state is not State.CLOSED:
            self._abandon("process died before the handshake completed")
        self._set_state(nxt)

    def _on_reset_client(self, ev: ResetClient) -> None:
        nxt = self._next(T.RESET_CLIENT, ev)
        if self.state not in (State.LISTEN, State.CLOSED):  # LISTEN: no client known yet
            seg = OutSegment(seq=self.snd_nxt, ack=self.ack_limit, flags=RST | ACK, window=0)
            self._emit(Fabricate(Direction.TO_CLIENT, seg, "reset: cannot be recovered"))
            self._abandon("reset")
        self._set_state(nxt)

    def _crash(self, now: float) -> None:
        """Enter recovery: nothing the dead connection emits reaches the client."""
        for h in self._held:
            self._emit(Drop(h.ident, "server crashed"))
        self._held.clear()
        self.app_shut_wr = self.app_closed = False
        self._closes_seen = 0
        self._frozen_ack = seq.max_(self.ack_limit, self.delivered_ack)
        self._rebuilt = False
        self.rebuild = None
        # closed-window acks start fast (the client stops sending into a dead socket at
        # once) and back off to `probe_interval`
        self._probe_gap = min(PROBE_FIRST, self.probe_interval)
        self._next_probe = now + self._probe_gap
        self.policy.reset()

    def _abandon(self, reason: str) -> None:
        """The connection ends without recovery: drop what is held, let the logger forget."""
        if self._held_synack is not None:
            self._emit(Drop(self._held_synack, reason))
            self._held_synack = None
        for h in self._held:
            self._emit(Drop(h.ident, reason))
        self._held.clear()
        if self.state is not State.LISTEN and self.state is not State.SYN_RECEIVED:
            self._emit(Log(Finished(self.conn_id)))

    # ----------------------------------------------------------------- recovery

    def _adopt_handshake(
        self, c_isn: int, c_opts: SynOptions, s_isn: int, s_opts: SynOptions
    ) -> None:
        self.c_isn, self.client_opts = c_isn, c_opts
        self.s_isn, self.server_opts = seq.check(s_isn), s_opts
        ws = c_opts.wscale is not None and s_opts.wscale is not None
        self.c_wscale = (c_opts.wscale or 0) if ws else 0
        self.s_wscale = (s_opts.wscale or 0) if ws else 0
        self.k_wscale = self.s_wscale
        self.ts_ok = c_opts.ts_val is not None and s_opts.ts_val is not None
        self.sack_ok = c_opts.sack_ok and s_opts.sack_ok
        if not self._snd_known:
            self.server_seq = self.snd_nxt = seq.add(s_isn, 1)
            self._snd_known = True
        if self.ts_ok and s_opts.ts_val is not None and self.ts_last_out is None:
            self.ts_last_out = s_opts.ts_val

    def _handshake_record(self) -> Handshake:
        return Handshake(
            conn_id=self.conn_id,
            accept_order=self.accept_order,
            client_ip=self.client[0],
            client_port=self.client[1],
            server_ip=self.server[0],
            server_port=self.server[1],
            c_isn=self.c_isn,
            s_isn=self.s_isn,
            client_opts=self.client_opts,
            server_opts=self.server_opts,
        )

    def recovery_hints(self, now: float) -> dict[str, object]:
        """Keyword arguments for `replay.plan_recovery` from what this SSW saw itself."""
        hints: dict[str, object] = {"server_seq_hint": self.server_seq}
        if self.ts_ok and self.ts_last_out is not None:
            hints["last_ts_out"] = self.ts_last_out
            hints["ts_elapsed"] = max(0.0, now - self._ts_last_out_at)
        return hints

    def _on_rebuild(self, ev: Rebuild) -> None:
        nxt = self._next(T.REBUILD, ev)
        plan = ev.plan
        if not isinstance(plan, RecoveryPlan):
            raise LocalProtocolError(f"Rebuild needs a RecoveryPlan, not {type(plan).__name__}")
        if plan.conn_id != self.conn_id or plan.c_isn != self.c_isn or plan.s_isn != self.s_isn:
            raise LocalProtocolError(f"conn {self.conn_id}: plan is for another connection")
        if seq.lt(plan.ack_limit, self._frozen_ack):
            raise LocalProtocolError(
                f"conn {self.conn_id}: the log ends at {plan.ack_limit} but the client was "
                f"acked up to {self._frozen_ack} (acknowledged bytes lost: invariant 6)"
            )
        self.plan = plan
        if seq.gt(plan.stable_seq, self.stable_seq):
            self.logged_bytes += seq.sub(plan.stable_seq, self.stable_seq)
            self.stable_seq = plan.stable_seq
        if plan.client_fin and plan.stable_seq == self.stable_seq:
            self._fin_logged = True
        rb = KernelRebuild(plan, ev.now, repair=ev.repair, late=self._late, chunk=self.refill_chunk)
        self.rebuild = rb
        self._emit(Fabricate(Direction.TO_SERVER, rb.syn(), "rebuild: client SYN"))
        self._set_state(nxt)

    def _ts_floor(self, now: float) -> int | None:
        cands: list[int] = []
        if self.plan is not None and self.plan.ts_floor is not None:
            cands.append(self.plan.ts_floor)
        if self.ts_last_out is not None:
            ticks = 1 + max(0, int((now - self._ts_last_out_at) * TS_HZ))
            cands.append(seq.add(self.ts_last_out, ticks))
        if not cands:
            return None
        best = cands[0]
        for c in cands[1:]:
            best = seq.max_(best, c)
        return best

    def _rebuild_synack(self, ev: ServerSegment) -> None:
        """The new kernel's SYN-ACK (handshake restore): translation from here on, and
        the refill starts."""
        rb = self.rebuild
        assert rb is not None
        plan = rb.plan
        rb.synack_seen(ev)
        opts = ev.syn_opts or SynOptions()
        ws = self.client_opts.wscale is not None and self.server_opts.wscale is not None
        self.k_wscale = (opts.wscale or 0) if ws and opts.wscale is not None else 0
        self.delta_seq = plan.delta_seq(rb.n_isn)
        if self.ts_ok and rb.n_tsval is not None:
            self.ts_off = plan.ts_offset(rb.n_tsval, self._ts_floor(ev.now))
        else:
            self.ts_off = 0
        base = seq.add(self.c_isn, 1)
        self.kernel_snd_nxt = seq.add(rb.n_isn, 1)
        self.kernel_una = seq.add(rb.n_isn, 1)
        self.kernel_ack = base
        self.right_edge = seq.add(base, ev.window)
        self._kernel_has = _Coverage(base)
        rb.start(base, opts.mss or DEFAULT_MSS, ev.now)
        self._rebuilt = True
        self.policy.reset()
        self._emit(Drop(ev.ident, "rebuilt SYN-ACK: answered by SSW"))
        self._emit(Fabricate(Direction.TO_SERVER, self._third_ack(), "rebuild: third ack"))
        self._refill(ev.now)
        if rb.done:  # nothing to refill: no kernel ack will come
            self._open_window("rebuilt: nothing to refill")

    # ------------------------------------------------------- --restore repair

    @property
    def awaiting_repair(self) -> bool:
        """The rebuilt handshake is complete; the accepted socket awaits TCP_REPAIR."""
        rb = self.rebuild
        return self.state is State.REPLAY_SYN_SENT and rb is not None and rb.synack is not None

    def _repair_synack_seen(self, ev: ServerSegment) -> None:
        """The new kernel's SYN-ACK (repair mode): complete the handshake so that the
        application's accept returns; nothing is refilled or translated yet."""
        rb = self.rebuild
        assert rb is not None
        rb.synack_seen(ev)
        rb.synack = ev
        rb.syn_sent_at = None  # no SYN retransmission from here on
        self._emit(Drop(ev.ident, "rebuilt SYN-ACK: answered by SSW (repair follows)"))
        self._emit(Fabricate(Direction.TO_SERVER, self._third_ack(), "rebuild: third ack"))

    def repair_spec(self, now: float) -> RepairSpec:
        """What TCP_REPAIR must set in the accepted socket (`ftcp.tcprepair`)."""
        plan = self.plan
        if plan is None or not self.awaiting_repair:
            raise LocalProtocolError(f"conn {self.conn_id}: no repair pending ({self.state.name})")
        ts_val: int | None = None
        if self.ts_ok:
            ts_val = self._ts_floor(now)
            if ts_val is None:
                ts_val = seq.add(self.server_opts.ts_val or 0, TS_UNKNOWN_JUMP)
        return RepairSpec(
            conn_id=self.conn_id,
            rcv_seq=seq.add(self.c_isn, 1),
            instream=plan.instream
            if plan.instream_complete
            else memoryview(plan.instream)[: plan.instream_ready],
            partial=not plan.instream_complete,
            snd_seq=seq.add(self.s_isn, 1 + plan.discard),
            mss=self.client_opts.mss or DEFAULT_MSS,
            snd_wscale=self.c_wscale,
            rcv_wscale=self.s_wscale,
            sack_ok=self.sack_ok,
            ts_ok=self.ts_ok,
            ts_val=ts_val,
            snd_wnd=self.client_window << self.c_wscale,
            rcv_edge=self.advertised_edge,
        )

    def _on_repaired(self, ev: Repaired) -> None:
        nxt = self._next(T.REPAIRED, ev)
        rb = self.rebuild
        assert rb is not None and rb.synack is not None
        plan, synack = rb.plan, rb.synack
        rb.repair = False
        if not ev.ok:
            # TCP_REPAIR failed before touching the socket: the handshake connection
            # stands; go on exactly as `--restore handshake` (translate by delta_seq)
            mark = len(self._out)
            self._rebuild_synack(replace(synack, now=ev.now))
            self._out[mark:] = [
                a
                for a in self._out[mark:]
                if not (type(a) is Drop and a.ident == synack.ident)
                and not (type(a) is Fabricate and a.reason == "rebuild: third ack")
            ]
            self._set_state(nxt)
            return
        rcv = ev.rcv_nxt
        snd = seq.add(self.s_isn, 1 + plan.discard)
        self.delta_seq = 0
        self.ts_off = 0
        self.k_wscale = self.s_wscale
        if self.ts_ok:
            rb.n_tsval = self._ts_floor(ev.now)
        self.kernel_snd_nxt = snd
        self.kernel_una = snd
        self.kernel_ack = rcv
        self.right_edge = seq.add(rcv, ev.rcv_wnd)
        self._kernel_has = _Coverage(rcv)
        rb.start(rcv, self.client_opts.mss or DEFAULT_MSS, ev.now)
        self._rebuilt = True
        self.policy.reset()
        self._refill(ev.now)  # what did not fit the receive queue, and a logged client FIN
        self._set_state(nxt)

    def _third_ack(self) -> OutSegment:
        assert self.rebuild is not None
        return self.rebuild.third_ack(self.client_window, self.client_ts_val)

    def _open_window(self, reason: str) -> None:
        """Rebuilt and refilled: tell the client at once that the window is open again
        (it may sit in zero-window persist, or in retransmission back-off)."""
        if self.kernel_ack is None:
            return
        ack = seq.max_(seq.min_(self.ack_limit, self.kernel_ack), self.delivered_ack)
        self._fabricate_ack(ack, None, reason)

    def _keep_late(self, ev: ClientSegment) -> None:
        fin = bool(ev.flags & FIN)
        if not ev.payload_len and not fin:
            return
        old = self._late.get(ev.seq)
        if old is None or len(old[0]) < ev.payload_len or (fin and not old[1]):
            self._late[ev.seq] = (bytes(ev.payload), fin)

    def _refill(self, now: float) -> None:
        """Inject what the rebuilt connection's window allows (`KernelRebuild.refill`)."""
        rb = self.rebuild
        if rb is None or rb.done or self.right_edge is None:
            return
        ack = self._kernel_view_ack(self.server_seq)
        self.kernel_una = seq.max_(self.kernel_una, ack)
        for seg, reason in rb.refill(self.right_edge, ack, self.client_window, self.client_ts_val):
            n = len(seg.payload) + (1 if seg.flags & FIN else 0)
            self._kernel_has.add(seg.seq, seq.add(seg.seq, n))
            self._emit(Fabricate(Direction.TO_SERVER, seg, reason))
