"""The supervisor's side of a RECOVER answer: frames in, `ConnectionLog`s out.

`RecoveryAssembler` checks and collects the RECOVER_* frames of one request
(`ftcp.core.wire` decodes them); each connection's instream is received into
one buffer allocated at its announced length. Where that memory comes from is
this module's business, not the protocol's: a pre-faulted `InstreamArena` for
the usual small logs, huge pages faulted in by a helper thread for large ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ftcp.core import seq
from ftcp.core.records import Arrival, ConnectionLog, ReadLog
from ftcp.core.wire import MAX_INSTREAM, RecoverConn, RecoverEnd, RecoverInstream, RecoverReads
from ftcp.errors import RemoteProtocolError

HUGE_INSTREAM = 4 << 20  # from this size the instream buffer is anonymous memory in huge pages


def _instream_buffer(n: int) -> bytearray | memoryview:
    """A zeroed, writable buffer of `n` bytes for an instream being received.

    A large one is an anonymous mapping advised to use transparent huge pages, so
    that the copy into fresh memory is not one page fault per 4 KiB. Without THP it
    is an ordinary mapping."""
    if n < HUGE_INSTREAM:
        return bytearray(n)
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):
        m.madvise(mmap.MADV_HUGEPAGE)
    _populate_ahead(m, n)
    return memoryview(m)  # bytes-like, compares equal to bytes; keeps the mapping alive


MADV_POPULATE_WRITE = 23  # Linux 5.14: fault a range in, writable
POPULATE_STEP = 2 << 20  # one huge page


def _populate_ahead(m: mmap.mmap, n: int) -> None:
    """Fault the mapping in from a helper thread, front to back, while the answer is
    received into it: memory the machine has not used yet costs microseconds per
    4 KiB, and the thread takes those faults off the receiving loop. The receiver may
    overtake it (then it faults its pages itself); ctypes drops the GIL.

    One huge page (`POPULATE_STEP`) per call: a call holds the process's mmap lock
    (read side), and anything that maps memory meanwhile (the allocator, a new NSW
    session's page) waits for the write side, stalling every fault behind it
    (docs/notes/2026-11-27-kernel-facts.md)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    except (OSError, AttributeError, TypeError, ValueError):
        return

    def run(keep: mmap.mmap) -> None:  # `keep`: the mapping stays while this runs
        for off in range(0, n, POPULATE_STEP):
            if keep.closed:
                return
            if madvise(base + off, min(POPULATE_STEP, n - off), MADV_POPULATE_WRITE) != 0:
                return  # an older kernel: the copy faults the pages in

    threading.Thread(target=run, args=(m,), name="ftcp-populate", daemon=True).start()


class InstreamArena:
    """Memory touched in advance for the instreams of the next recovery.

    Filling fresh memory costs a page fault per 4 KiB (1 MiB: ~1 ms here, the
    largest part of fetching a 1 MiB log over loopback); a supervisor keeps one
    arena, touched when it starts, and each recovery's instreams are carved from
    it while they fit. A recovery's instreams are valid until the next recovery
    request `reset`s the arena (a new crash discards the previous plans first).
    """

    def __init__(self, size: int) -> None:
        self._buf = bytearray(size)
        self._buf[:] = b"\xff" * size  # fault every page in now, not during a recovery
        self._mv = memoryview(self._buf)
        self._used = 0

    def reset(self) -> None:
        self._used = 0

    def take(self, n: int) -> memoryview | None:
        """`n` bytes of the arena (not zeroed: the recovery writes all of them), or None."""
        if self._used + n > len(self._buf):
            return None
        v = self._mv[self._used : self._used + n]
        self._used += n
        return v


@dataclass(slots=True)
class _Partial:
    head: RecoverConn
    instream: bytearray | memoryview  # allocated once, at its announced length
    arrival: Arrival
    reads: list[bytes] = field(default_factory=list)  # packed RECOVER_READS pieces
    n_reads: int = 0
    instream_len: int = 0  # bytes received so far


class RecoveryAssembler:
    """Collects RECOVER_* frames of one request into a list of ConnectionLog.

    Each connection's instream is allocated once, at the length its RECOVER_CONN
    announces (which must agree with its `stable_seq`), and every RECOVER_INSTREAM
    piece is copied straight to its place: no list of pieces, no final join. The
    resulting `ConnectionLog.instream` is that buffer, a bytearray or (large) a memoryview
    of huge-page memory: bytes-like, never written to afterwards. With an `arena`,
    instreams that fit are views of it (valid until the arena's next request).

    Streaming (recovery starts before the answer is complete): `on_head(log, arrival)`
    is called once a connection's head and reads are in, with its instream buffer
    still filling; `arrival.received` grows as pieces land, and `on_data(conn_id)`
    is called after each; `on_end()` when the answer is complete. The logger sends
    every head before any instream.
    """

    def __init__(
        self,
        req_id: int,
        arena: InstreamArena | None = None,
        on_head: Callable[[ConnectionLog, Arrival], None] | None = None,
        on_data: Callable[[int], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.req_id = req_id
        self._arena = arena
        self._on_head = on_head
        self._on_data = on_data
        self._on_end = on_end
        if arena is not None:
            arena.reset()
        self._conns: dict[int, _Partial] = {}
        self._order: list[int] = []
        self.done = False

    def feed(self, f: RecoverConn | RecoverReads | RecoverInstream | RecoverEnd) -> bool:
        """Take one frame; True when the answer is complete."""
        if f.req_id != self.req_id:
            raise RemoteProtocolError(f"recovery frame for request {f.req_id}, want {self.req_id}")
        if self.done:
            raise RemoteProtocolError(f"recovery frame after the end of request {self.req_id}")
        if isinstance(f, RecoverConn):
            cid = f.handshake.conn_id
            if cid in self._conns:
                raise RemoteProtocolError(f"connection {cid} sent twice in recovery")
            span = seq.usub(f.stable_seq, seq.add(f.handshake.c_isn, 1))
            if f.instream_len != span or f.instream_len > MAX_INSTREAM:
                raise RemoteProtocolError(
                    f"recovery of connection {cid} announces {f.instream_len} instream bytes, "
                    f"its stable_seq says {span}"
                )
            n = f.instream_len
            buf = self._arena.take(n) if self._arena is not None and n else None
            p = _Partial(f, _instream_buffer(n) if buf is None else buf, Arrival(n))
            self._conns[cid] = p
            self._order.append(cid)
            if not f.n_reads:
                self._head_done(p)
            return False
        if isinstance(f, RecoverEnd):
            if f.n_conns != len(self._conns):
                raise RemoteProtocolError(
                    f"recovery ended with {len(self._conns)} connections, announced {f.n_conns}"
                )
            for p in self._conns.values():
                if p.instream_len != p.head.instream_len or p.n_reads != p.head.n_reads:
                    raise RemoteProtocolError(
                        f"incomplete recovery of connection {p.head.handshake.conn_id}"
                    )
            self.done = True
            if self._on_end is not None:
                self._on_end()
            return True
        p = self._conns.get(f.conn_id)
        if p is None:
            raise RemoteProtocolError(f"recovery data for unannounced connection {f.conn_id}")
        if isinstance(f, RecoverReads):
            if p.n_reads + len(f.reads) > p.head.n_reads:
                raise RemoteProtocolError(
                    f"more reads for connection {f.conn_id} than its {p.head.n_reads} announced"
                )
            rl = f.reads
            if not isinstance(rl, ReadLog):
                rl = ReadLog.from_results(f.conn_id, rl)
            p.reads.append(rl.packed)
            p.n_reads += len(rl)
            if p.n_reads == p.head.n_reads and len(rl):
                self._head_done(p)
        else:
            off, n = f.offset, len(f.data)
            if off != p.instream_len:
                raise RemoteProtocolError(
                    f"recovery instream of {f.conn_id} at offset {off}, expected {p.instream_len}"
                )
            if off + n > p.head.instream_len:
                raise RemoteProtocolError(
                    f"recovery instream of {f.conn_id} runs past its "
                    f"{p.head.instream_len} announced bytes"
                )
            p.instream[off : off + n] = f.data
            p.instream_len = p.arrival.received = off + n
            if self._on_data is not None:
                self._on_data(f.conn_id)
        return False

    def _head_done(self, p: _Partial) -> None:
        """Connection `p`'s head and reads are in (its instream follows)."""
        if self._on_head is not None:
            self._on_head(self._log(p), p.arrival)

    def _log(self, p: _Partial) -> ConnectionLog:
        h = p.head
        return ConnectionLog(
            handshake=h.handshake,
            stable_seq=h.stable_seq,
            server_seq=h.server_seq,
            instream=p.instream,  # type: ignore[arg-type]  # bytes-like, not copied
            client_fin=h.client_fin,
            reads=ReadLog(h.handshake.conn_id, b"".join(p.reads)),
            write_mark=h.write_mark,
            closes=list(h.closes),
            client_window=h.client_window,
            client_ts_val=h.client_ts_val,
            client_ts_ecr=h.client_ts_ecr,
        )

    def result(self) -> list[ConnectionLog]:
        return [self._log(self._conns[cid]) for cid in self._order]
