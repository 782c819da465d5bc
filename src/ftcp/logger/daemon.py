"""The logger daemon: authenticated peers, record batches in, watermarks out.

One `Peer` per TCP connection (an asyncio Protocol: no per-record awaits).
A peer must complete HELLO/CHALLENGE/AUTH before anything it sends is
looked at; until then its frames are capped at `PRE_AUTH_MAX_FRAME` bytes,
and it has `auth_timeout` seconds. Any malformed frame, a wrong MAC, a frame
out of turn, or a partial frame that does not complete within
`frame_timeout` seconds disconnects the peer with a log line saying why.

A RECORDS batch is applied to the in-memory state at once, handed to the
store, and acknowledged (ACKS: stream watermarks, handshakes, read-order
watermark, batch number) only when the store says it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ftcp.core import wire
from ftcp.core.lease import Fenced, Granted, LeaseBook, LeaseTerms
from ftcp.errors import RemoteProtocolError, UserError
from ftcp.logger.state import Applied
from ftcp.logger.store import (
    KIND_DELETE,
    KIND_LEASE,
    KIND_RECORDS,
    AppLog,
    Entry,
    Store,
    SyncPolicy,
    delete_data,
    lease_data,
)

log = logging.getLogger("ftcp.logger")

PRE_AUTH_MAX_FRAME = 1024
MAX_REJECT_REPORTS = 20  # per peer, refused-record ERRORs sent (then only counted)


@dataclass(slots=True)
class LoggerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path = Path("logger-data")
    sync: SyncPolicy = SyncPolicy.BATCH
    secret: bytes = b""  # b"" only with insecure
    insecure: bool = False
    segment_size: int = 64 << 20
    auth_timeout: float = 10.0
    frame_timeout: float = 30.0
    retry_interval: float = 1.0
    max_frame: int = wire.DEFAULT_MAX_FRAME
    nagle: bool = False  # Nagle on accepted connections (off: see `ftcp logger --help`)
    lease: LeaseTerms = LeaseTerms()  # host failover: how long a lease lasts, the margin


def _name(f: wire.Frame) -> str:
    return "Records" if type(f) is wire.RawRecords else type(f).__name__


def set_nagle(transport: asyncio.BaseTransport, on: bool) -> None:
    """Nagle on (TCP_NODELAY cleared) or off (set) for a TCP transport's socket.

    asyncio sets TCP_NODELAY on every TCP transport before `connection_made`,
    so Nagle on means clearing it here.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if on else 1)


# Python 3.11's socket transport copies what it cannot send at once, so it may be handed
# views of live buffers; later versions keep the views themselves
_WRITE_COPIES = sys.version_info < (3, 12)
RECOVER_CHUNK = 1 << 20  # instream bytes per RECOVER_INSTREAM frame
# tests: a pause after each RECOVER_INSTREAM frame (a log transfer slow enough to cut)
TEST_RECOVER_DELAY_ENV = "FTCP_TEST_LOGGER_RECOVER_DELAY_MS"
RECOVER_SNDBUF = 4 << 20  # send buffer asked for a large recovery answer (capped by wmem_max)


class Peer(asyncio.Protocol):
    def __init__(self, server: LoggerServer) -> None:
        self.server = server
        self.cfg = server.cfg
        self.decoder = wire.Decoder(PRE_AUTH_MAX_FRAME, raw_records=True)
        self.transport: asyncio.Transport | None = None
        self.name = "?"
        self.state = "hello"  # hello -> auth -> ready -> closed
        self.hello: wire.Hello | None = None
        self.nonce = b""
        self.app: AppLog | None = None
        self.app_id = ""
        self.batch = 0
        self.rejected = 0
        self.bound = 0  # the lease epoch this link's records belong to (0: none)
        self._auth_timer: asyncio.TimerHandle | None = None
        self._frame_timer: asyncio.TimerHandle | None = None
        self._ack_buf: list[tuple[int, Applied | None, int | None]] = []
        self._ack_scheduled = False
        self._paused_writing = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- transport callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        set_nagle(transport, self.cfg.nagle)
        peer = transport.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self._auth_timer = loop.call_later(
            self.cfg.auth_timeout, self._timeout, "did not authenticate in time"
        )
        self.server.peers.add(self)
        if self.server.paused:
            transport.pause_reading()
        log.debug("peer %s connected", self.name)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != "closed":
            log.info("peer %s (%s) disconnected", self.name, self.app_id or "unauthenticated")
        self.state = "closed"
        self._cancel_timers()
        self.server.peers.discard(self)
        for f in self._drain_waiters:
            if not f.done():
                f.set_exception(ConnectionResetError("peer gone"))
        for t in self._tasks:
            t.cancel()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        for f in self._drain_waiters:
            if not f.done():
                f.set_result(None)
        self._drain_waiters.clear()

    async def _drain(self) -> None:
        if self._paused_writing and self.state != "closed":
            f = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(f)
            await f

    def data_received(self, data: bytes) -> None:
        if self.state == "closed":
            return
        try:
            frames = self.decoder.feed(data)
            for f in frames:
                self._handle(f)
                if self.state == "closed":
                    return
        except RemoteProtocolError as e:
            when = "" if self.state == "ready" else " (before authentication)"
            self.fail(wire.ErrorCode.PROTOCOL, f"{e}{when}")
            return
        loop = asyncio.get_running_loop()
        if frames and self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self.decoder.buffered and self._frame_timer is None:
            self._frame_timer = loop.call_later(
                self.cfg.frame_timeout, self._timeout, "partial frame did not complete in time"
            )
        elif not self.decoder.buffered and self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    # -- helpers ----------------------------------------------------------------

    def send(self, f: wire.Frame) -> None:
        if self.transport is not None and self.state != "closed":
            self.transport.write(wire.encode(f))

    def fail(self, code: wire.ErrorCode, reason: str) -> None:
        """Tell the peer why (one ERROR frame), log it, disconnect."""
        if self.state == "closed":
            return
        who = self.app_id or "unauthenticated"
        log.warning("peer %s (%s): %s; disconnected", self.name, who, reason)
        self.send(wire.Error(code, reason, True))
        self.state = "closed"
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()

    def _timeout(self, why: str) -> None:
        self.fail(wire.ErrorCode.TIMEOUT, why)

    def _cancel_timers(self) -> None:
        for t in (self._auth_timer, self._frame_timer):
            if t is not None:
                t.cancel()
        self._auth_timer = self._frame_timer = None

    # -- protocol ---------------------------------------------------------------

    def _handle(self, f: wire.Frame) -> None:
        st = self.state
        if st == "ready":
            cls = type(f)
            if cls is wire.RawRecords:
                self._records(f)  # type: ignore[arg-type]
            elif cls is wire.Ping:
                self.send(wire.Pong(f.token, f.time_ns))  # type: ignore[union-attr]
            elif cls is wire.Recover:
                self._spawn(self._recover(f.req_id))  # type: ignore[union-attr]
            elif cls is wire.Delete:
                self._delete(f)  # type: ignore[arg-type]
            elif cls is wire.Lease:
                self._lease(f)  # type: ignore[arg-type]
            elif cls is wire.Error:
                log.warning("peer %s (%s) reports: %s", self.name, self.app_id, f.reason)  # type: ignore[union-attr]
                if f.fatal:  # type: ignore[union-attr]
                    self.state = "closed"
                    assert self.transport is not None
                    self.transport.close()
            elif cls is wire.Pong:
                pass
            else:
                self.fail(wire.ErrorCode.PROTOCOL, f"unexpected {_name(f)} frame")
        elif st == "hello":
            if not isinstance(f, wire.Hello):
                self.fail(
                    wire.ErrorCode.PROTOCOL,
                    f"{_name(f)} frame before authentication",
                )
                return
            self.hello = f
            self.nonce = os.urandom(wire.NONCE_LEN)
            self.state = "auth"
            self.send(wire.Challenge(self.nonce))
        elif st == "auth":
            if not isinstance(f, wire.Auth):
                self.fail(
                    wire.ErrorCode.PROTOCOL,
                    f"{_name(f)} frame before authentication",
                )
                return
            self._auth(f)

    def _auth(self, f: wire.Auth) -> None:
        h = self.hello
        assert h is not None
        secret = self.cfg.secret
        want = wire.auth_mac(secret, b"C", h.role, h.flags, h.app_id, h.nonce, self.nonce)
        if not wire.check_mac(want, f.mac):
            self.fail(wire.ErrorCode.AUTH, "authentication failed (wrong HMAC: wrong secret?)")
            return
        store = self.server.store
        whole = bool(h.flags & wire.HELLO_WHOLE_HISTORY)
        if h.role == wire.Role.SUPERVISOR:
            existing = store.apps.get(h.app_id)
            if existing is not None and existing.state.whole_history != whole:
                mode = "whole-history" if existing.state.whole_history else "connection-scoped"
                self.fail(wire.ErrorCode.PROTOCOL, f"application {h.app_id!r} is {mode}")
                return
            fresh = not h.flags & (wire.HELLO_RESUME | wire.HELLO_STANDBY)
            if fresh and not self._new_run(h.app_id, store, whole):
                return
            self.app = store.app(h.app_id, whole)
        elif h.role == wire.Role.LEASE:
            self.app = store.app(h.app_id, whole)
        else:
            self.app = store.apps.get(h.app_id)
        self.app_id = h.app_id
        self.state = "ready"
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.decoder.max_frame = self.cfg.max_frame
        mac = wire.auth_mac(secret, b"S", h.role, h.flags, h.app_id, h.nonce, self.nonce)
        self.send(wire.AuthOk(mac))
        log.info("peer %s authenticated as %s of %r", self.name, h.role.name.lower(), h.app_id)
        if h.flags & wire.HELLO_RESUME and h.role == wire.Role.SUPERVISOR:
            self._spawn(self._resync())

    def _new_run(self, app_id: str, store: Store, whole: bool) -> bool:
        """A supervisor starting afresh (not resuming): begin a new run of `app_id`.

        Its connection ids and read orders start from the beginning, so records of
        an earlier run (its connections died with it: a supervisor's own crash is
        not recovered) are discarded, durably, before anything of the new run.
        Refused while another supervisor of the same application is connected.
        """
        for p in self.server.peers:
            ph = p.hello
            if (
                p is not self
                and p.state == "ready"
                and p.app_id == app_id
                and ph is not None
                and ph.role == wire.Role.SUPERVISOR
                and not ph.flags & wire.HELLO_STANDBY
            ):
                self.fail(
                    wire.ErrorCode.PROTOCOL,
                    f"application {app_id!r} already has a supervisor connected ({p.name}); "
                    "give each `ftcp run` its own --app-id",
                )
                return False
        app = store.apps.get(app_id)
        if app is None or not app.has_history():
            return True
        gone = app.reset(epoch=True)
        store.submit(
            Entry(app, KIND_DELETE, delete_data((), True, epoch=True), set(gone), set(gone),
                  app.snapshot_orders(), None, reset=True)
        )  # fmt: skip
        log.warning(
            "application %r: a new supervisor run (%s); records of %d connection(s) of the "
            "previous run discarded",
            app_id, self.name, len(gone),
        )  # fmt: skip
        return True

    def _records(self, f: wire.RawRecords) -> None:
        h = self.hello
        if h is None or h.role != wire.Role.SUPERVISOR or self.app is None:
            self.fail(wire.ErrorCode.ROLE, "only a supervisor may send records")
            return
        app = self.app
        self.batch += 1
        applied = app.state.apply_raw(f.raw)
        if applied.errors:
            self._reject(applied.errors)
        store = self.server.store
        batch = self.batch
        orders = (app.state.next_order, app.state.ooo_orders() if app.state._ooo_set else ())
        store.submit(
            Entry(
                app,
                KIND_RECORDS,
                f.raw,
                applied.conns,
                applied.tombstones,
                orders,
                lambda: self._durable(batch, applied, None),
            )
        )

    # -- leases (host failover) ------------------------------------------------

    def _lease(self, f: wire.Lease) -> None:
        """Bind this link's records to an epoch (a supervisor's link), or ask for,
        renew or give up the application's lease (a lease link: `ftcp.core.lease`)."""
        h, app = self.hello, self.app
        assert h is not None
        if app is None or h.role == wire.Role.ADMIN:
            self.fail(wire.ErrorCode.ROLE, "only a supervisor takes part in leases")
            return
        book = self.server.lease_book(app)
        if f.flags & wire.LEASE_BIND:
            if h.role != wire.Role.SUPERVISOR:
                self.fail(wire.ErrorCode.ROLE, "only a supervisor's record link binds an epoch")
            elif not book.admits(f.epoch):
                self.fail(wire.ErrorCode.FENCED, f"epoch {f.epoch} is over (now {book.epoch})")
            else:
                self.bound = f.epoch
                st = app.state
                nxt = max(st.next_order, max(st.ooo_orders(), default=-1) + 1)
                self.send(wire.LeaseAnswer(f.req, wire.LeaseKind.GRANTED, f.epoch, 0, nxt))
            return
        if h.role != wire.Role.LEASE:
            self.fail(wire.ErrorCode.ROLE, "the lease is asked for on a lease link")
            return
        who = f"{self.name}#{id(self)}"
        if f.flags & wire.LEASE_RELEASE:
            book.release(who, f.epoch)
            log.info("application %r: %s gave up lease epoch %d", app.app_id, self.name, f.epoch)
            self.send(wire.LeaseAnswer(f.req, wire.LeaseKind.FENCED, book.epoch))
            return
        now = time.monotonic()
        ans = book.renew(who, f.epoch, now) if f.epoch else book.acquire(who, now)
        if isinstance(ans, Fenced):
            self.send(wire.LeaseAnswer(f.req, wire.LeaseKind.FENCED, ans.current))
        elif not isinstance(ans, Granted):
            ms = max(1, round(1000 * (ans.at - now)))
            self.send(wire.LeaseAnswer(f.req, wire.LeaseKind.WAIT, book.epoch, ms))
        elif ans.epoch <= app.lease_epoch:
            self.send(self._granted(f.req, ans.epoch))
        else:  # a new epoch: durable before anyone hears of it, then the old one fenced
            app.lease_epoch = ans.epoch
            self.server.store.submit(
                Entry(app, KIND_LEASE, lease_data(ans.epoch), set(), set(),
                      app.snapshot_orders(), lambda: self._lent(f.req, ans.epoch))
            )  # fmt: skip

    def _granted(self, req: int, epoch: int) -> wire.LeaseAnswer:
        ms = round(1000 * self.cfg.lease.duration)
        return wire.LeaseAnswer(req, wire.LeaseKind.GRANTED, epoch, ms)

    def _lent(self, req: int, epoch: int) -> None:
        """Lease epoch `epoch` is durable: fence every link of an older one, answer."""
        for p in list(self.server.peers):
            if p.app_id == self.app_id and 0 < p.bound < epoch:
                p.fail(wire.ErrorCode.FENCED, f"lease epoch {p.bound} is over: epoch {epoch} lent")
        log.warning("application %r: lease epoch %d lent to %s", self.app_id, epoch, self.name)
        self.send(self._granted(req, epoch))

    def _reject(self, errors: list[str]) -> None:
        for e in errors:
            self.rejected += 1
            if self.rejected <= MAX_REJECT_REPORTS:
                log.warning("peer %s (%s): record refused: %s", self.name, self.app_id, e)
                self.send(wire.Error(wire.ErrorCode.REJECTED, e, False))

    def _delete(self, f: wire.Delete) -> None:
        if self.app is None:
            self.send(wire.Acks([wire.DeleteAck(f.req_id)]))
            return
        app = self.app
        if f.all:
            gone = app.reset()
            tombs = set(gone)
            log.info("application %r deleted by %s", app.app_id, self.name)
        else:
            app.state.delete(f.conn_ids)
            tombs = set(f.conn_ids)
        self.server.store.submit(
            Entry(
                app,
                KIND_DELETE,
                delete_data(f.conn_ids, f.all),
                set(tombs),
                tombs,
                app.snapshot_orders(),
                lambda: self._durable(0, None, f.req_id),
                reset=f.all,
            )
        )

    def _durable(self, batch: int, applied: Applied | None, delete_req: int | None) -> None:
        if self.state == "closed":
            return
        self._ack_buf.append((batch, applied, delete_req))
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        buf = self._ack_buf
        self._ack_buf = []
        if self.state == "closed" or not buf:
            return
        acks: list[wire.Ack] = []
        streams: dict[int, tuple[int, int]] = {}
        finished: list[int] = []
        next_order: int | None = None
        last_batch = 0
        for batch, applied, delete_req in buf:
            if applied is not None:
                if applied.handshakes:
                    acks.extend(wire.HandshakeAck(c) for c in applied.handshakes)
                if applied.streams:
                    streams.update(applied.streams)
                if applied.finished:  # after their last stream watermarks (below)
                    finished.extend(applied.finished)
                if applied.next_order is not None:
                    next_order = applied.next_order
            if delete_req is not None:
                acks.append(wire.DeleteAck(delete_req))
            if batch:
                last_batch = batch
        acks.extend(wire.StreamAck(c, s, lim) for c, (s, lim) in streams.items())
        acks.extend(wire.FinishedAck(c) for c in finished)
        if next_order is not None:
            acks.append(wire.ReadsAck(next_order))
        if last_batch:
            acks.append(wire.BatchAck(last_batch))
        self.send(wire.Acks(acks))

    def _spawn(self, coro: object) -> None:
        t = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _resync(self) -> None:
        """A supervisor reconnecting (HELLO_RESUME): its watermarks, once all is durable.

        Acks of batches that became durable while the link was down were lost;
        this frame (handshakes, streams, read order of every live connection)
        replaces them, and lets the supervisor tell that this logger still holds
        what it acknowledged before (an empty data dir does not).
        """
        try:
            await self.server.store.barrier()
            if self.state == "closed" or self.app is None:
                return
            st = self.app.state
            acks: list[wire.Ack] = [wire.HandshakeAck(cid) for cid in st.conns]
            acks += [
                wire.StreamAck(cid, c.reasm.stable_seq, c.reasm.ack_limit)
                for cid, c in st.conns.items()
            ]
            acks.append(wire.ReadsAck(st.next_order))
            self.send(wire.Acks(acks))
            n = len(st.conns)
            log.info("peer %s (%s) resumes: %d connection(s)", self.name, self.app_id, n)
        except (ConnectionError, asyncio.CancelledError):
            pass

    def _grow_sndbuf(self, n: int) -> None:
        """A large answer: let the kernel take whole frames straight from the log's
        buffers (fewer partial sends, less copied into the transport's buffer)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None or n < RECOVER_CHUNK:
            return
        with contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < RECOVER_SNDBUF:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RECOVER_SNDBUF)

    def _send_raw(self, data: bytes | memoryview) -> None:
        if self.state == "closed" or self.transport is None:
            raise ConnectionError("peer gone")
        self.transport.write(data)

    async def _recover(self, req_id: int) -> None:
        try:
            await self.server.store.barrier()
            app = self.server.store.apps.get(self.app_id) if self.app is None else self.app
            # the instreams are the live buffers, not copies: each piece goes to the
            # transport as a view released at once (3.11's transport copies what the
            # socket does not take; a view held across an await would stop the ingest
            # from growing the buffer); they only grow at the end, so the prefix the
            # answer announces stays as it was
            logs = app.state.recovery(live=True) if app is not None else []
            sizes = [len(lg.instream) for lg in logs]
            self._grow_sndbuf(sum(sizes))
            n_bytes = 0
            # every connection's head and reads first: the supervisor plans and starts
            # rebuilding each one while the instreams follow
            for lg, size in zip(logs, sizes, strict=True):
                for fr in wire.recovery_conn_frames(req_id, lg, size):
                    self._send_raw(fr)
                    n_bytes += len(fr)
            pause = float(os.environ.get(TEST_RECOVER_DELAY_ENV) or 0) / 1000
            for lg, size in zip(logs, sizes, strict=True):
                cid = lg.handshake.conn_id
                for off in range(0, size, RECOVER_CHUNK):
                    k = min(RECOVER_CHUNK, size - off)
                    self._send_raw(wire.recovery_instream_head(req_id, cid, off, k))
                    with memoryview(lg.instream) as mv, mv[off : off + k] as piece:
                        self._send_raw(piece if _WRITE_COPIES else bytes(piece))
                    n_bytes += k
                    await self._drain()
                    if pause:
                        await asyncio.sleep(pause)
            self._send_raw(wire.encode(wire.RecoverEnd(req_id, len(logs))))
            log.info(
                "recovery for %r sent to %s: %d connection(s), %d bytes",
                self.app_id,
                self.name,
                len(logs),
                n_bytes,
            )
        except (ConnectionError, asyncio.CancelledError):
            pass


class LoggerServer:
    """The daemon: store + listening socket + peers."""

    def __init__(self, cfg: LoggerConfig) -> None:
        if not cfg.secret and not cfg.insecure:
            raise UserError(
                "refusing to start without a secret (give --secret-file, or --insecure)"
            )
        self.cfg = cfg
        self.peers: set[Peer] = set()
        self.leases: dict[str, LeaseBook] = {}  # app id -> its lease (host failover)
        self.paused = False
        self.store = Store(
            cfg.data_dir,
            cfg.sync,
            cfg.segment_size,
            cfg.retry_interval,
            on_pressure=self._pressure,
        )
        self._server: asyncio.base_events.Server | None = None
        self._committer: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    def lease_book(self, app: AppLog) -> LeaseBook:
        book = self.leases.get(app.app_id)
        if book is None:
            # after a restart, the last epoch's holder may still hold it: a full lease
            book = self.leases[app.app_id] = LeaseBook(
                self.cfg.lease, app.lease_epoch, time.monotonic()
            )
        return book

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self.store.open()
        loop = asyncio.get_running_loop()
        self._committer = asyncio.ensure_future(self.store.run())
        try:
            self._server = await loop.create_server(
                lambda: Peer(self), self.cfg.host, self.cfg.port, reuse_address=True
            )
        except OSError as e:
            self._committer.cancel()
            self.store.close()
            raise UserError(
                f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e.strerror or e}"
            ) from None

    def _pressure(self, on: bool) -> None:
        self.paused = on
        if on:
            log.warning("store is behind: pausing reads from peers")
        for p in self.peers:
            if p.transport is not None and p.state != "closed":
                if on:
                    p.transport.pause_reading()
                else:
                    p.transport.resume_reading()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for p in list(self.peers):
            if p.transport is not None:
                p.transport.close()
        if self._committer is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(self.store.barrier(), 2.0)
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        self.store.close()
