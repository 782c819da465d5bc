"""A supervisor's lease link to the logger (host failover): blocking, for its own thread.

Heartbeats must not wait behind a bulk of records on the record link, nor for a
busy event loop, so a supervisor that takes part in failover opens a second,
authenticated link with role LEASE and drives it from a thread (`ftcp.failover`).
"""

from __future__ import annotations

import os
import select
import socket
import time

from ftcp.core import wire
from ftcp.errors import RemoteProtocolError


class LeaseLinkError(Exception):
    """The lease link is gone or the logger refused it (the message says which)."""


class LeaseLink:
    """One authenticated LEASE link (`connect`, then `send`/`answers`)."""

    def __init__(
        self, host: str, port: int, app_id: str, secret: bytes | None, timeout: float = 2.0
    ) -> None:
        self.host, self.port, self.app_id = host, port, app_id
        self.secret = secret or b""
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._dec = wire.Decoder(wire.DEFAULT_MAX_FRAME)

    def connect(self) -> None:
        """Connect and authenticate, all within `timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        try:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise LeaseLinkError(f"lease link to {self.host}:{self.port}: {e}") from None
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self._dec = wire.Decoder(wire.DEFAULT_MAX_FRAME)
        nonce = os.urandom(wire.NONCE_LEN)
        role = wire.Role.LEASE
        try:
            s.sendall(wire.encode(wire.Hello(role, self.app_id, nonce)))
            ch = self._expect(wire.Challenge, deadline)
            mac = wire.auth_mac(self.secret, b"C", role, 0, self.app_id, nonce, ch.nonce)
            s.sendall(wire.encode(wire.Auth(mac)))
            ok = self._expect(wire.AuthOk, deadline)
        except OSError as e:
            self.close()
            raise LeaseLinkError(f"lease link to {self.host}:{self.port}: {e}") from None
        want = wire.auth_mac(self.secret, b"S", role, 0, self.app_id, nonce, ch.nonce)
        if not wire.check_mac(want, ok.mac):
            self.close()
            raise LeaseLinkError("the logger failed to prove it knows the secret")
        s.setblocking(False)

    def _expect(self, cls: type, deadline: float) -> object:
        assert self.sock is not None
        while True:
            for f in self._frames(deadline - time.monotonic()):
                if isinstance(f, wire.Error):
                    raise LeaseLinkError(f"logger refused the lease link: {f.reason}")
                if isinstance(f, cls):
                    return f
            if time.monotonic() >= deadline:
                raise LeaseLinkError(f"no {cls.__name__} from the logger in {self.timeout:g} s")

    def _frames(self, wait: float) -> list[wire.Frame]:
        assert self.sock is not None
        r, _, _ = select.select([self.sock], [], [], max(0.0, wait))
        if not r:
            return []
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError as e:
            raise LeaseLinkError(f"lease link lost: {e}") from None
        if not data:
            raise LeaseLinkError("the logger closed the lease link")
        try:
            return self._dec.feed(data)
        except RemoteProtocolError as e:
            raise LeaseLinkError(f"logger sent garbage on the lease link: {e}") from None

    def send(self, req: int, epoch: int = 0, flags: int = 0) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(wire.encode(wire.Lease(req, epoch, flags)))
        except OSError as e:
            raise LeaseLinkError(f"lease link lost: {e}") from None

    def answers(self, wait: float) -> list[wire.LeaseAnswer]:
        """The answers that arrive within `wait` seconds (at least one, if any comes)."""
        out = []
        for f in self._frames(wait):
            if isinstance(f, wire.LeaseAnswer):
                out.append(f)
            elif isinstance(f, wire.Error):
                raise LeaseLinkError(f"logger: {f.reason}")
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
