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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Sequence

from ftcp.core import wire
from ftcp.core.records import ConnectionLog, Record
from ftcp.errors import RemoteProtocolError

MAX_BODY = 4 << 20  # records per frame are split to stay under this


class LoggerError(Exception):
    """The logger refused us or the link broke."""


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
    ) -> None:
        self.app_id = app_id
        self.secret = secret or b""
        self.role = role
        self.flags = wire.HELLO_WHOLE_HISTORY if whole_history else 0
        self.on_ack = on_ack
        self.on_error = on_error
        self.acks: asyncio.Queue[list[wire.Ack]] = asyncio.Queue()
        self.errors: list[wire.Error] = []
        self.decoder = wire.Decoder(max_frame)
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
        self._recoveries: dict[int, tuple[wire.RecoveryAssembler, asyncio.Future[list]]] = {}
        self._deletes: dict[int, asyncio.Future[None]] = {}
        self._pings: dict[int, asyncio.Future[int]] = {}
        self._paused = False
        self._drain: list[asyncio.Future[None]] = []

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
    ) -> LoggerClient:
        """Connect and authenticate (mutually); raises LoggerError on refusal."""
        loop = asyncio.get_running_loop()
        client = cls(app_id, secret, role, whole_history, on_ack, on_error)
        client._ready = loop.create_future()
        await asyncio.wait_for(loop.create_connection(lambda: client, host, port), timeout)
        try:
            await asyncio.wait_for(asyncio.shield(client._ready), timeout)
        except BaseException:
            client.abort()
            raise
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
        err = self.closed or LoggerError(f"logger link closed{f': {exc}' if exc else ''}")
        self.closed = err
        futs: list[asyncio.Future] = []
        if self._ready is not None:
            futs.append(self._ready)
        futs += [f for _, f in self._batch_waiters]
        futs += [f for _, f in self._recoveries.values()]
        futs += list(self._deletes.values()) + list(self._pings.values()) + self._drain
        for f in futs:
            if not f.done():
                f.set_exception(err)

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
        self.closed = err
        if self.transport is not None:
            self.transport.close()

    def _handle(self, f: wire.Frame) -> None:
        cls = type(f)
        if cls is wire.Acks:
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
                self.batch_acked = max(self.batch_acked, a.batch)  # type: ignore[union-attr]
            elif cls is wire.ReadsAck:
                self.next_order = max(self.next_order, a.next_order)  # type: ignore[union-attr]
            elif cls is wire.HandshakeAck:
                self.handshakes.add(a.conn_id)  # type: ignore[union-attr]
            elif cls is wire.FinishedAck:
                self.finished.add(a.conn_id)  # type: ignore[union-attr]
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
        assert self.transport is not None
        return self.transport

    def send(self, records: Sequence[Record]) -> int:
        """Log records (pipelined); returns the batch number of the last frame sent."""
        frame = wire.encode_records(records)
        if len(frame) - wire.HEADER_LEN <= MAX_BODY or len(records) == 1:
            t = self._check()
            t.write(frame)
            self.batch += 1
            return self.batch
        half = len(records) // 2
        self.send(records[:half])
        return self.send(records[half:])

    def send_body(self, body: bytes) -> int:
        """Send one pre-encoded RECORDS body (`wire.encode_records_body`)."""
        t = self._check()
        t.write(wire.frame(wire.FrameType.RECORDS, body))
        self.batch += 1
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
        self._check()
        fut = asyncio.get_running_loop().create_future()
        self._batch_waiters.append((n, fut))
        await fut

    async def recover(self) -> list[ConnectionLog]:
        """Every live connection of the application, as the logger stores it."""
        t = self._check()
        req = next(self._req)
        fut: asyncio.Future[list] = asyncio.get_running_loop().create_future()
        self._recoveries[req] = (wire.RecoveryAssembler(req), fut)
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
