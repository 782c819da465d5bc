"""Client side of the logger protocol (what the supervisor uses), asyncio.

    client = await LoggerClient.connect(host, port, app_id="web", secret=key,
                                        on_ack=handle_acks)
    batch = client.send([Handshake(...), InSegment(...), ...])   # never waits
    await client.wait_batch(batch)          # optional: until it is durable
    logs = await client.recover()           # list[ConnectionLog]
    rtt = await client.ping()
    await client.close()

`send` encodes and writes at once (pipelined; many records per frame) and
returns the batch number of its last frame. Acks arrive as lists of
`wire.Ack` through `on_ack` (called in the event loop) or, without a
callback, on `client.acks` (an asyncio.Queue). The client also keeps the
latest watermarks: `stable[conn_id] = (stable_seq, ack_limit)`,
`handshakes` (conn ids whose handshake is durable), `next_order` (every read
result with a lower order is durable) and `batch_acked`.

Reconnecting (`connect(..., reconnect=True)`, what `ftcp run` uses): losing
the link is not an error. Every frame sent is kept until its BatchAck (a
bounded buffer: `unacked_bytes` past `max_unacked` calls `on_pressure(True)`,
and `on_pressure(False)` once it is back under half; nothing is ever
dropped); `send` keeps buffering while the link is down; the client
reconnects with back-off (`RECONNECT_MIN` doubling to `RECONNECT_MAX`),
authenticates again with `HELLO_RESUME`, and the logger answers with its
durable watermarks of every live connection. If they are behind what this
client saw acknowledged (a conn whose handshake was acked is unknown, a
stream or the read order is behind) the logger is not the one that
acknowledged our history (an empty data dir, say): the client refuses to
resume (`history_lost`), says so through `on_link`, and keeps trying.
Otherwise the watermarks are delivered as acks, every unacknowledged frame is
sent again (the logger's state is idempotent for resends) and the link is up.
`wait_batch` waiters survive link loss; `recover()` waits for the link.
`on_link(up, why)` is called when the link goes down or comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from ftcp.core import seq, wire
from ftcp.core.records import Arrival, ConnectionLog, Finished, ReadResult, Record
from ftcp.errors import RemoteProtocolError
from ftcp.logger.assembly import InstreamArena, RecoveryAssembler

MAX_BODY = 4 << 20  # records per frame are split to stay under this
RECONNECT_MIN = 0.05  # seconds before the first reconnect attempt, doubling ...
RECONNECT_MAX = 2.0  # ... up to this
DEFAULT_MAX_UNACKED = 64 << 20  # bytes of unacknowledged frames before on_pressure(True)


class LoggerError(Exception):
    """The logger refused us or the link broke."""


class HistoryLost(LoggerError):
    """The logger we reached does not hold what was acknowledged to us."""


class LoggerClient(asyncio.Protocol):
    def __init__(
        self,
        app_id: str,
        secret: bytes | None,
        role: wire.Role = wire.Role.SUPERVISOR,
        whole_history: bool = False,
        on_ack: Callable[[list[wire.Ack]], None] | None = None,
        on_error: Callable[[wire.Error], None] | None = None,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        standby: bool = False,
    ) -> None:
        self.app_id = app_id
        self.secret = secret or b""
        self.role = role
        self.flags = wire.HELLO_WHOLE_HISTORY if whole_history else 0
        if standby:  # host failover: beside the holder, and no new run of the application
            self.flags |= wire.HELLO_STANDBY
        self.epoch = 0  # the lease epoch this link's records are bound to (0: none)
        self._leases: dict[int, asyncio.Future[wire.LeaseAnswer]] = {}
        self.on_ack = on_ack
        self.on_error = on_error
        self.acks: asyncio.Queue[list[wire.Ack]] = asyncio.Queue()
        self.errors: list[wire.Error] = []
        self.decoder = wire.Decoder(max_frame, stream_instream=True)  # recovery: no buffering
        self.transport: asyncio.Transport | None = None
        self.nonce = os.urandom(wire.NONCE_LEN)
        self.server_nonce = b""
        self.batch = 0
        self.batch_acked = 0
        self.stable: dict[int, tuple[int, int]] = {}
        self.handshakes: set[int] = set()
        self.finished: set[int] = set()
        self.next_order = 0
        self.closed: Exception | None = None
        self._ready: asyncio.Future[None] | None = None
        self._batch_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._req = itertools.count(1)
        self._recoveries: dict[int, tuple[RecoveryAssembler, asyncio.Future[list]]] = {}
        # memory touched in advance for recovered instreams (see `InstreamArena`):
        # set by the supervisor; a recovery's logs are then valid until the next one
        self.instream_arena: InstreamArena | None = None
        self._deletes: dict[int, asyncio.Future[None]] = {}
        self._pings: dict[int, asyncio.Future[int]] = {}
        self._paused = False
        self._drain: list[asyncio.Future[None]] = []
        # -- reconnecting (see the module docstring) --
        self.reconnect = False
        self.host = ""
        self.port = 0
        self.timeout = 10.0
        self.max_unacked = DEFAULT_MAX_UNACKED
        self.on_link: Callable[[bool, str], None] | None = None
        self.on_pressure: Callable[[bool], None] | None = None
        self.link_up = False
        self.down_since: float | None = None  # wall time the link went down
        self.down_reason = ""
        self.last_error = ""  # why the latest reconnect attempt failed
        self.history_lost: str | None = None
        self.reconnect_attempts = 0  # since the link went down
        self.reconnects = 0  # successful, in all
        self.pressure = False
        self.unacked_bytes = 0
        self.unacked_records = 0
        self._unacked: deque[tuple[int, bytes, int]] = deque()  # (batch, frame, records)
        self._link_base = 0  # batch number of the frame before this link's first
        self._orders_sent = 0  # every read order below this was sent
        self._finishing: set[int] = set()  # Finished sent, FinishedAck not seen
        self._resync: asyncio.Future[list[wire.Ack]] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._up: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- connecting ---------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        app_id: str,
        secret: bytes | None,
        role: wire.Role = wire.Role.SUPERVISOR,
        whole_history: bool = False,
        on_ack: Callable[[list[wire.Ack]], None] | None = None,
        on_error: Callable[[wire.Error], None] | None = None,
        timeout: float = 10.0,
        reconnect: bool = False,
        on_link: Callable[[bool, str], None] | None = None,
        on_pressure: Callable[[bool], None] | None = None,
        max_unacked: int = DEFAULT_MAX_UNACKED,
        standby: bool = False,
    ) -> LoggerClient:
        """Connect and authenticate (mutually); raises LoggerError on refusal.

        The first connection must succeed even with `reconnect`; later losses
        are then survived (see the module docstring)."""
        loop = asyncio.get_running_loop()
        client = cls(app_id, secret, role, whole_history, on_ack, on_error, standby=standby)
        client.reconnect = reconnect
        client.host, client.port, client.timeout = host, port, timeout
        client.on_link, client.on_pressure = on_link, on_pressure
        client.max_unacked = max_unacked
        client._ready = loop.create_future()
        await asyncio.wait_for(loop.create_connection(lambda: client, host, port), timeout)
        try:
            await asyncio.wait_for(asyncio.shield(client._ready), timeout)
        except BaseException:
            client.reconnect = False
            client.abort()
            raise
        client.link_up = True
        client._up.set()
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(wire.encode(wire.Hello(self.role, self.app_id, self.nonce, self.flags)))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reconnect and not self._closing:
            self._link_lost(exc)
            return
        err = self.closed or LoggerError(f"logger link closed{f': {exc}' if exc else ''}")
        self.closed = err
        futs: list[asyncio.Future] = []
        if self._ready is not None:
            futs.append(self._ready)
        if self._resync is not None:
            futs.append(self._resync)
        futs += [f for _, f in self._batch_waiters]
        futs += [f for _, f in self._recoveries.values()]
        futs += list(self._deletes.values()) + list(self._pings.values()) + self._drain
        futs += list(self._leases.values())
        for f in futs:
            if not f.done():
                f.set_exception(err)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # -- reconnecting (module docstring) ----------------------------------------------

    def _link_lost(self, exc: Exception | None) -> None:
        """One link is gone; batch waiters stay, the rest of its requests fail."""
        why = self._why or (str(exc) if exc else "") or "the logger closed the link"
        self._why = None
        err = LoggerError(f"logger link lost: {why}")
        self.transport = None
        self._paused = False
        futs: list[asyncio.Future] = []
        for f in (self._ready, self._resync):
            if f is not None:
                futs.append(f)
        futs += [f for _, f in self._recoveries.values()]
        futs += list(self._deletes.values()) + list(self._pings.values()) + self._drain
        futs += list(self._leases.values())
        self._recoveries.clear()
        self._deletes.clear()
        self._pings.clear()
        self._leases.clear()
        self._drain = []
        for f in futs:
            if not f.done():
                f.set_exception(err)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self.link_up:
            self.link_up = False
            self._up.clear()
            self.down_since = time.time()
            self.down_reason = why
            self.reconnect_attempts = 0
            if self.on_link is not None:
                self.on_link(False, why)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._reconnect_loop())

    _why: str | None = None  # set by _die: the reason the next connection_lost reports

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_MIN
        while not self._closing:
            await asyncio.sleep(delay)
            if self._closing:
                return
            self.reconnect_attempts += 1
            try:
                await self._relink()
                return
            except HistoryLost as e:
                if self.history_lost != str(e) and self.on_link is not None:
                    self.history_lost = str(e)
                    self.on_link(False, str(e))
                self.history_lost = str(e)
                self.last_error = str(e)
            except (OSError, TimeoutError, LoggerError) as e:
                self.last_error = str(e) or type(e).__name__
            delay = min(delay * 2, RECONNECT_MAX)

    async def _relink(self) -> None:
        """Connect, authenticate with HELLO_RESUME, check the logger's watermarks, resend."""
        loop = asyncio.get_running_loop()
        if self.transport is not None:  # a half-open attempt: wait for its connection_lost
            self._lost = loop.create_future()
            self.transport.abort()
            await self._lost
        self.decoder = wire.Decoder(self.decoder.max_frame, stream_instream=True)
        self.nonce = os.urandom(wire.NONCE_LEN)
        self.server_nonce = b""
        self.flags |= wire.HELLO_RESUME
        self._ready = loop.create_future()
        self._resync = loop.create_future()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, self.host, self.port), self.timeout
            )
            await asyncio.wait_for(asyncio.shield(self._ready), self.timeout)
            acks = await asyncio.wait_for(asyncio.shield(self._resync), self.timeout)
            self._check_history(acks)
        except BaseException:
            if self.transport is not None:
                self._lost = loop.create_future()
                self.transport.abort()
                await self._lost
            raise
        finally:
            self._resync = None
        # the logger holds everything it acknowledged: take its watermarks, resend the rest
        self.history_lost = None
        self._link_base = self.batch_acked
        assert not self._unacked or self._unacked[0][0] == self.batch_acked + 1
        self._acks(acks)
        t = self.transport
        assert t is not None
        if self.epoch:  # the records that follow belong to this epoch (or are refused)
            t.write(wire.encode(wire.Lease(next(self._req), self.epoch, wire.LEASE_BIND)))
        frames = list(self._unacked)
        for _, frame, _ in frames:
            t.write(frame)
        self.link_up = True
        self._up.set()
        self.reconnects += 1
        down = time.time() - (self.down_since or time.time())
        self.down_since = None
        self.last_error = ""
        if self.on_link is not None:
            self.on_link(
                True,
                f"after {down:.1f} s; resent {sum(n for _, _, n in frames)} record(s) "
                f"in {len(frames)} frame(s), {sum(len(f) for _, f, _ in frames)} bytes",
            )

    def _check_history(self, acks: list[wire.Ack]) -> None:
        """Raise HistoryLost when the logger is behind what it acknowledged to us;
        clamp its read watermark to the orders this client sent."""
        hs: set[int] = set()
        streams: dict[int, int] = {}
        next_order = 0
        for i, a in enumerate(acks):
            t = type(a)
            if t is wire.HandshakeAck:
                hs.add(a.conn_id)  # type: ignore[union-attr]
            elif t is wire.StreamAck:
                streams[a.conn_id] = a.stable_seq  # type: ignore[union-attr]
            elif t is wire.ReadsAck:
                next_order = a.next_order  # type: ignore[union-attr]
                if next_order > self._orders_sent:  # not ours (another run's reads)
                    acks[i] = wire.ReadsAck(self._orders_sent)
        expect = self.handshakes - self.finished - self._finishing
        missing = sorted(expect - hs)
        behind = sorted(
            cid
            for cid, (stable, _) in self.stable.items()
            if cid in expect and cid in streams and seq.lt(streams[cid], stable)
        )
        problems = []
        if missing:
            problems.append(f"{len(missing)} acknowledged connection(s) unknown to it")
        if behind:
            problems.append(f"{len(behind)} stream(s) behind what it acknowledged")
        if next_order < min(self.next_order, self._orders_sent):
            problems.append(f"read order {next_order} < {self.next_order} acknowledged")
        if problems:
            raise HistoryLost(
                f"the logger at {self.host}:{self.port} does not hold the history it "
                f"acknowledged ({'; '.join(problems)}): a different data dir?"
            )

    async def wait_up(self) -> None:
        """Until the link is up (at once when it is)."""
        if self.closed is not None:
            raise self.closed
        await self._up.wait()

    def link_status(self) -> dict[str, object]:
        """For `ftcp status`: the link, the reconnect attempts, what is buffered."""
        return {
            "up": self.link_up,
            "down_since": self.down_since,
            "reason": self.down_reason,
            "last_error": self.last_error,
            "history_lost": self.history_lost,
            "reconnect_attempts": self.reconnect_attempts,
            "reconnects": self.reconnects,
            "unacked_frames": len(self._unacked),
            "unacked_records": self.unacked_records,
            "unacked_bytes": self.unacked_bytes,
            "intake_paused": self.pressure,
        }

    def _set_pressure(self) -> None:
        if self.pressure:
            if self.unacked_bytes <= self.max_unacked // 2:
                self.pressure = False
                if self.on_pressure is not None:
                    self.on_pressure(False)
        elif self.unacked_bytes > self.max_unacked:
            self.pressure = True
            if self.on_pressure is not None:
                self.on_pressure(True)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for f in self._drain:
            if not f.done():
                f.set_result(None)
        self._drain.clear()

    # -- receiving ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except RemoteProtocolError as e:
            self._die(LoggerError(f"logger sent garbage: {e}"))
            return
        for f in frames:
            try:
                self._handle(f)
            except RemoteProtocolError as e:
                self._die(LoggerError(f"logger protocol error: {e}"))
                return

    def _die(self, err: Exception) -> None:
        if self.reconnect and not self._closing:
            self._why = str(err)
        else:
            self.closed = err
        if self.transport is not None:
            self.transport.close()

    def _handle(self, f: wire.Frame) -> None:
        cls = type(f)
        if cls is wire.Acks:
            rs = self._resync
            if rs is not None and not rs.done() and self._ready is not None and self._ready.done():
                rs.set_result(list(f.acks))  # type: ignore[union-attr]  # HELLO_RESUME's answer
            else:
                self._acks(f.acks)  # type: ignore[union-attr]
        elif cls is wire.Challenge:
            self.server_nonce = f.nonce  # type: ignore[union-attr]
            mac = wire.auth_mac(
                self.secret,
                b"C",
                self.role,
                self.flags,
                self.app_id,
                self.nonce,
                f.nonce,  # type: ignore[union-attr]
            )
            assert self.transport is not None
            self.transport.write(wire.encode(wire.Auth(mac)))
        elif cls is wire.AuthOk:
            want = wire.auth_mac(
                self.secret,
                b"S",
                self.role,
                self.flags,
                self.app_id,
                self.nonce,
                self.server_nonce,
            )
            if not wire.check_mac(want, f.mac):  # type: ignore[union-attr]
                self._die(LoggerError("logger failed to prove it knows the secret"))
                return
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif cls in (wire.RecoverConn, wire.RecoverReads, wire.RecoverInstream, wire.RecoverEnd):
            entry = self._recoveries.get(f.req_id)  # type: ignore[union-attr]
            if entry is None:
                raise RemoteProtocolError(f"recovery frame for unknown request {f.req_id}")  # type: ignore[union-attr]
            asm, fut = entry
            if asm.feed(f):  # type: ignore[arg-type]
                del self._recoveries[asm.req_id]
                if not fut.done():
                    fut.set_result(asm.result())
        elif cls is wire.LeaseAnswer:
            lfut = self._leases.pop(f.req, None)  # type: ignore[union-attr]
            if lfut is not None and not lfut.done():
                lfut.set_result(f)  # type: ignore[arg-type]
        elif cls is wire.Pong:
            fut = self._pings.pop(f.token, None)  # type: ignore[union-attr]
            if fut is not None and not fut.done():
                fut.set_result(time.monotonic_ns())
        elif cls is wire.Ping:
            assert self.transport is not None
            self.transport.write(wire.encode(wire.Pong(f.token, f.time_ns)))  # type: ignore[union-attr]
        elif cls is wire.Error:
            self.errors.append(f)  # type: ignore[arg-type]
            if self.on_error is not None:
                self.on_error(f)  # type: ignore[arg-type]
            if f.fatal:  # type: ignore[union-attr]
                self._die(LoggerError(f"logger: {f.reason}"))  # type: ignore[union-attr]
        else:
            raise RemoteProtocolError(f"unexpected {cls.__name__} from the logger")

    def _acks(self, acks: list[wire.Ack]) -> None:
        stable = self.stable
        for a in acks:
            cls = type(a)
            if cls is wire.StreamAck:
                stable[a.conn_id] = (a.stable_seq, a.ack_limit)  # type: ignore[union-attr]
            elif cls is wire.BatchAck:
                n = self._link_base + a.batch  # type: ignore[union-attr]  # per link on the wire
                if n > self.batch_acked:
                    self.batch_acked = n
                    q = self._unacked
                    if q:
                        while q and q[0][0] <= n:
                            _, fr, nrec = q.popleft()
                            self.unacked_bytes -= len(fr)
                            self.unacked_records -= nrec
                        if self.pressure:
                            self._set_pressure()
            elif cls is wire.ReadsAck:
                self.next_order = max(self.next_order, a.next_order)  # type: ignore[union-attr]
            elif cls is wire.HandshakeAck:
                self.handshakes.add(a.conn_id)  # type: ignore[union-attr]
            elif cls is wire.FinishedAck:
                self.finished.add(a.conn_id)  # type: ignore[union-attr]
                self._finishing.discard(a.conn_id)  # type: ignore[union-attr]
                stable.pop(a.conn_id, None)  # type: ignore[union-attr]
            elif cls is wire.DeleteAck:
                fut = self._deletes.pop(a.req_id, None)  # type: ignore[union-attr]
                if fut is not None and not fut.done():
                    fut.set_result(None)
        if self._batch_waiters:
            done = self.batch_acked
            keep = []
            for n, fut in self._batch_waiters:
                if n <= done:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((n, fut))
            self._batch_waiters = keep
        if self.on_ack is not None:
            self.on_ack(acks)
        else:
            self.acks.put_nowait(acks)

    # -- sending ----------------------------------------------------------------------

    def _check(self) -> asyncio.Transport:
        if self.closed is not None:
            raise self.closed
        if self.transport is None or (self.reconnect and not self.link_up):
            raise LoggerError("the logger link is down")
        return self.transport

    def send(self, records: Sequence[Record]) -> int:
        """Log records (pipelined); returns the batch number of the last frame sent."""
        frame = wire.encode_records(records)
        if len(frame) - wire.HEADER_LEN <= MAX_BODY or len(records) == 1:
            if not self.reconnect:
                self._check().write(frame)
                self.batch += 1
                return self.batch
            for r in records:
                t = type(r)
                if t is ReadResult:
                    if r.order >= self._orders_sent:  # type: ignore[union-attr]
                        self._orders_sent = r.order + 1  # type: ignore[union-attr]
                elif t is Finished:
                    self._finishing.add(r.conn_id)
            return self._send_frame(frame, len(records))
        half = len(records) // 2
        self.send(records[:half])
        return self.send(records[half:])

    def send_body(self, body: bytes) -> int:
        """Send one pre-encoded RECORDS body (`wire.encode_records_body`).

        With `reconnect`, use `send` for read results and Finished records (the
        client must see them to check a resumed logger's history)."""
        frame = wire.frame(wire.FrameType.RECORDS, body)
        if not self.reconnect:
            self._check().write(frame)
            self.batch += 1
            return self.batch
        return self._send_frame(frame, 0)

    def _send_frame(self, frame: bytes, nrec: int) -> int:
        """Reconnecting: keep the frame until acked; write it now if the link is up."""
        if self.closed is not None:
            raise self.closed
        self.batch += 1
        self._unacked.append((self.batch, frame, nrec))
        self.unacked_bytes += len(frame)
        self.unacked_records += nrec
        if self.link_up and self.transport is not None:
            self.transport.write(frame)
        if not self.pressure and self.unacked_bytes > self.max_unacked:
            self._set_pressure()
        return self.batch

    async def drain(self) -> None:
        """Wait while the socket's send buffer is above its high-water mark."""
        self._check()
        if self._paused:
            f = asyncio.get_running_loop().create_future()
            self._drain.append(f)
            await f

    async def wait_batch(self, batch: int | None = None) -> None:
        """Wait until batch `batch` (default: everything sent) is durable."""
        n = self.batch if batch is None else batch
        if self.batch_acked >= n:
            return
        if self.closed is not None:
            raise self.closed
        if not self.reconnect:  # reconnecting: the wait survives link loss
            self._check()
        fut = asyncio.get_running_loop().create_future()
        self._batch_waiters.append((n, fut))
        await fut

    async def recover(self) -> list[ConnectionLog]:
        """Every live connection of the application, as the logger stores it.

        Reconnecting: waits while the link is down, and asks again when it
        breaks before the answer is complete."""
        if not self.reconnect:
            return await self._recover_once()
        while True:
            await self.wait_up()
            try:
                return await self._recover_once()
            except LoggerError:
                if self.closed is not None:
                    raise

    async def recover_streaming(
        self,
        on_head: Callable[[ConnectionLog, Arrival], None],
        on_data: Callable[[int], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> list[ConnectionLog]:
        """`recover()` in one attempt, streamed: `on_head(log, arrival)` as each
        connection's head and reads arrive, its instream still filling (see
        `RecoveryAssembler`); the whole logs when the answer is complete. A
        broken link raises `LoggerError`: the caller decides what it can keep."""
        return await self._recover_once(on_head, on_data, on_end)

    async def _recover_once(
        self,
        on_head: Callable[[ConnectionLog, Arrival], None] | None = None,
        on_data: Callable[[int], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> list[ConnectionLog]:
        t = self._check()
        req = next(self._req)
        fut: asyncio.Future[list] = asyncio.get_running_loop().create_future()
        # an earlier answer still streaming (its caller gave up waiting) writes into
        # the arena: this one does not share it
        arena = None if self._recoveries else self.instream_arena
        asm = RecoveryAssembler(req, arena, on_head, on_data, on_end)
        self._recoveries[req] = (asm, fut)
        t.write(wire.encode(wire.Recover(req)))
        return await fut

    async def delete(self, conn_ids: Iterable[int] = (), all: bool = False) -> None:
        """Delete connections' records (or, with all=True, the whole application)."""
        t = self._check()
        req = next(self._req)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._deletes[req] = fut
        t.write(wire.encode(wire.Delete(req, tuple(conn_ids), all)))
        await fut

    async def lease_request(self, f: wire.Lease) -> wire.LeaseAnswer:
        """Send one LEASE frame (its `req` is replaced by this link's own numbering) and
        wait for its answer; a refusal ends the link (`LoggerError`)."""
        t = self._check()
        req = next(self._req)
        fut: asyncio.Future[wire.LeaseAnswer] = asyncio.get_running_loop().create_future()
        self._leases[req] = fut
        t.write(wire.encode(wire.Lease(req, f.epoch, f.flags)))
        return await fut

    async def bind(self, epoch: int) -> wire.LeaseAnswer:
        """This link's records belong to lease epoch `epoch` from now on (also after a
        reconnection): the logger refuses them once another epoch is lent."""
        self.epoch = epoch
        while True:
            if self.reconnect:  # while the link is down, wait for it (it binds anew)
                await self.wait_up()
            try:
                return await self.lease_request(wire.Lease(0, epoch, wire.LEASE_BIND))
            except LoggerError:
                if not self.reconnect or self.closed is not None:
                    raise

    async def ping(self) -> float:
        """Round-trip time to the logger in seconds."""
        t = self._check()
        token = next(self._req)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pings[token] = fut
        t0 = time.monotonic_ns()
        t.write(wire.encode(wire.Ping(token, t0)))
        t1 = await fut
        return (t1 - t0) / 1e9

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        await asyncio.sleep(0)


def recover_blocking(
    host: str, port: int, app_id: str, secret: bytes | None, timeout: float = 30.0
) -> list[ConnectionLog]:
    """RECOVER as an admin peer, from synchronous code (tests, tools)."""

    async def go() -> list[ConnectionLog]:
        c = await LoggerClient.connect(
            host, port, app_id=app_id, secret=secret, role=wire.Role.ADMIN, timeout=timeout
        )
        try:
            return await asyncio.wait_for(c.recover(), timeout)
        finally:
            await c.close()

    return asyncio.run(go())
