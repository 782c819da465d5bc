"""A crashed connection's new kernel connection (DESIGN.md recovery steps 4-5), sans-IO.

`KernelRebuild` is what a `Connection` owns from `Rebuild` on: the fabricated
handshake toward the restarted server's TCP (the client's SYN with its original
ISN and options, the third ack; with `--restore repair` the handshake only makes
the application's `accept` return, and TCP_REPAIR rebuilds the accepted socket),
then the refill: the logged instream, the client data that arrived while no
server TCP existed, and a logged client FIN, injected as client segments paced
by the new kernel's window. Every segment it makes is in the new kernel's view;
what the client sees is the connection's business (translation, acks).
"""

from __future__ import annotations

from ftcp.core import seq
from ftcp.core.events import ACK, FIN, PSH, SYN, OutSegment, ServerSegment
from ftcp.core.records import SynOptions
from ftcp.core.replay import DEFAULT_MSS, RecoveryPlan

Late = dict[int, tuple[bytes, bool]]  # client seq -> (payload, FIN), kept while dark


class KernelRebuild:
    """The rebuilt kernel connection of one `Connection` (module docstring)."""

    __slots__ = (
        "plan",
        "repair",
        "syn_sent_at",
        "synack",
        "n_isn",
        "n_tsval",
        "k_tsval",
        "kmss",
        "chunk",
        "late",
        "inj_next",
        "fin_injected",
        "done",
        "at",
        "mark",
    )

    def __init__(
        self, plan: RecoveryPlan, now: float, *, repair: bool, late: Late, chunk: int | None
    ) -> None:
        self.plan = plan
        self.repair = repair  # TCP_REPAIR finishes the job after the accept
        self.syn_sent_at: float | None = now  # None: no SYN retransmission any more
        self.synack: ServerSegment | None = None  # the new kernel's (repair: kept)
        self.n_isn = 0
        self.n_tsval: int | None = None  # the new kernel's first TSval
        # the new kernel's latest TSval: what refill segments echo, so its receive-side
        # RTT estimate (TSecr-based) follows the refill loop, and its receive buffer
        # autotuning opens the window at that pace
        self.k_tsval: int | None = None
        self.kmss = DEFAULT_MSS
        self.chunk = chunk  # largest refill segment (None: the new kernel's MSS)
        self.late = late  # the connection's: client data that came while it was dark
        self.inj_next = 0  # next instream byte to inject (kernel view = client view)
        self.fin_injected = False
        self.done = False  # the kernel holds every byte to refill
        self.at = now  # refill timer base: last progress (or retransmission)
        self.mark = 0  # the kernel ack at the last progress

    # ------------------------------------------------------------- handshake

    def syn(self) -> OutSegment:
        """The SYN to inject toward the new server TCP, as if from the client.

        Original client ISN, so the instream needs no remapping; original client
        options, but only those the original handshake negotiated (an option the
        server had refused must not be agreed with the new kernel: the client
        would not understand it).
        """
        p = self.plan
        o = p.client_opts
        opts = SynOptions(
            mss=o.mss,
            wscale=o.wscale if p.ws_ok else None,
            sack_ok=p.sack_ok,
            ts_val=o.ts_val if p.ts_ok else None,
            ts_ecr=0 if p.ts_ok else None,
        )
        window = min(0xFFFF, p.client_window << p.client_wscale)
        return OutSegment(
            seq=p.c_isn,
            ack=0,
            flags=SYN,
            window=window,
            syn_opts=opts,
            ts_val=opts.ts_val,
            ts_ecr=opts.ts_ecr,
        )

    def synack_seen(self, ev: ServerSegment) -> None:
        """The new kernel answered the SYN."""
        opts = ev.syn_opts or SynOptions()
        self.n_isn = ev.seq
        self.n_tsval = opts.ts_val if opts.ts_val is not None else ev.ts_val

    def third_ack(self, window: int, ts_val: int | None) -> OutSegment:
        """The ack completing the rebuilt handshake: the client's latest window and
        TSval (None: the logged one)."""
        p = self.plan
        return OutSegment(
            seq=seq.add(p.c_isn, 1),
            ack=seq.add(self.n_isn, 1),
            flags=ACK,
            window=window,
            ts_val=self._ts(ts_val) if p.ts_ok else None,
            ts_ecr=self.n_tsval if p.ts_ok else None,
        )

    def _ts(self, ts_val: int | None) -> int | None:
        if ts_val is not None:
            return ts_val
        p = self.plan
        return p.client_ts_val if p.client_ts_val is not None else p.client_opts.ts_val

    # ---------------------------------------------------------------- refill

    def start(self, at: int, kmss: int, now: float) -> None:
        """The kernel connection exists and holds the instream up to `at`."""
        self.kmss = kmss
        self.inj_next = at
        self.fin_injected = False
        self.mark = at
        self.at = now
        self.k_tsval = None
        self.done = seq.ge(at, self.target())
        if self.done:
            self.late.clear()

    def span(self) -> tuple[int, bool]:
        """End of the instream to refill and whether a client FIN follows it: the plan's
        instream, extended by the late client segments that continue it contiguously."""
        plan = self.plan
        end, fin = plan.stable_seq, plan.client_fin
        if fin or not self.late:
            return end, fin
        for sq in sorted(self.late, key=lambda q: seq.sub(q, plan.stable_seq)):
            if seq.gt(sq, end):
                break
            payload, f = self.late[sq]
            e = seq.add(sq, len(payload))
            if seq.gt(e, end):
                end = e
            if f and e == end:
                return end, True
        return end, False

    def target(self) -> int:
        """The kernel ack at which the refill is complete."""
        end, fin = self.span()
        return seq.add(end, 1) if fin else end

    def progress(self, kernel_ack: int, now: float) -> None:
        """The new kernel acknowledged up to `kernel_ack`."""
        if self.done:
            return
        if seq.gt(kernel_ack, self.inj_next):
            self.inj_next = kernel_ack
        if seq.gt(kernel_ack, self.mark):
            self.at = now
        self.mark = kernel_ack
        if seq.ge(kernel_ack, self.target()):
            self.done = True
            self.late.clear()

    def timed_out(self, kernel_ack: int | None, now: float) -> None:
        """No progress for the refill timeout: inject again from the kernel's ack."""
        base = seq.add(self.plan.c_isn, 1)
        k = kernel_ack if kernel_ack is not None else base
        self.inj_next = seq.max_(k, base)
        self.fin_injected = False
        self.at = now

    def echo(self) -> int | None:
        """The TSecr of a refill segment: the new kernel's latest TSval."""
        return self.k_tsval if self.k_tsval is not None else self.n_tsval

    def segment(
        self,
        sq: int,
        payload: bytes | memoryview,
        ack: int,
        window: int,
        ts_val: int | None,
        ts_ecr: int | None,
        *,
        fin: bool = False,
        at: int = -1,
    ) -> OutSegment:
        """One client segment toward the new kernel (kernel view). `ts_val`: the client's
        latest TSval (None: the logged one; an older one than the kernel saw would be
        dropped by PAWS). `at`: the payload's offset in the plan's instream."""
        p = self.plan
        return OutSegment(
            seq=sq,
            ack=ack,
            flags=ACK | (FIN if fin else PSH if payload else 0),
            window=window,
            payload=payload,  # a view of the instream: not copied
            ts_val=self._ts(ts_val) if p.ts_ok else None,
            ts_ecr=ts_ecr if p.ts_ok else None,
            payload_at=at,
        )

    def refill(
        self, right_edge: int, ack: int, window: int, ts_val: int | None
    ) -> list[tuple[OutSegment, str]]:
        """What may be injected now: within the kernel's window (`right_edge`), the
        instream that has arrived, then late client data, then a client FIN."""
        if self.done:
            return []
        out: list[tuple[OutSegment, str]] = []
        size = max(self.kmss, self.chunk or 0)
        ts_ecr = self.echo()
        plan = self.plan
        base = seq.add(plan.c_isn, 1)
        start = seq.max_(self.inj_next, base)
        end = seq.min_(seq.min_(right_edge, plan.stable_seq), seq.add(base, plan.instream_ready))
        while seq.lt(start, end):
            n = min(size, seq.sub(end, start))
            off = seq.sub(start, base)
            payload = memoryview(plan.instream)[off : off + n]
            seg = self.segment(start, payload, ack, window, ts_val, ts_ecr, at=off)
            out.append((seg, "refill: logged instream"))
            start = seq.add(start, n)
            self.inj_next = start
        if self.late and seq.ge(self.inj_next, plan.stable_seq):
            self._refill_late(out, right_edge, ack, window, ts_val, ts_ecr, size)
        fin_at, fin = self.span()
        if fin and not self.fin_injected and self.inj_next == fin_at:
            self.fin_injected = True
            seg = self.segment(fin_at, b"", ack, window, ts_val, ts_ecr, fin=True)
            out.append((seg, "refill: logged client FIN"))
        return out

    def _refill_late(
        self,
        out: list[tuple[OutSegment, str]],
        right_edge: int,
        ack: int,
        window: int,
        ts_val: int | None,
        ts_ecr: int | None,
        size: int,
    ) -> None:
        base = self.plan.stable_seq
        for sq in sorted(self.late, key=lambda q: seq.sub(q, base)):
            payload, _ = self.late[sq]
            end = seq.min_(seq.add(sq, len(payload)), right_edge)
            if seq.gt(sq, self.inj_next):
                break
            while seq.lt(self.inj_next, end):
                start = self.inj_next
                off = seq.sub(start, sq)
                n = min(size, seq.sub(end, start))
                seg = self.segment(start, payload[off : off + n], ack, window, ts_val, ts_ecr)
                out.append((seg, "refill: late client data"))
                self.inj_next = seq.add(start, n)
