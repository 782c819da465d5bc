"""Raw-socket injection of fabricated IPv4 segments that bypass our own queue.

An `IPPROTO_RAW` socket implies `IP_HDRINCL`: we send a whole IPv4 packet,
built by the caller with correct checksums (the kernel drops a segment whose
TCP checksum is wrong, silently). The socket carries `SO_MARK` = our firewall
mark, so the queue rules (`ftcp.ssw.rules`: `-m mark ! --mark M`) let the
injected packet through instead of queueing it to us again.

Routing decides where the packet goes: a fabricated *client* segment
addressed to a local server address leaves via `lo` and comes back through
INPUT to the server's TCP (so the server cannot tell it from a real one); a
fabricated *server* segment leaves through the external interface towards
the client.
"""

from __future__ import annotations

import socket

from ftcp.errors import UserError
from ftcp.ssw import netns as _netns

SO_MARK = getattr(socket, "SO_MARK", 36)


class Injector:
    """A marked raw IPv4 socket, optionally created inside a network namespace."""

    def __init__(self, mark: int, *, netns: str | None = None) -> None:
        if not 0 <= mark <= 0xFFFFFFFF:
            raise UserError(f"firewall mark {mark:#x} is not a 32-bit value")
        self.mark = mark

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            except BaseException:
                s.close()
                raise
            return s

        try:
            self._sock = _netns.run_in_netns(netns, make)
        except PermissionError:
            raise UserError(
                "raw-socket injection needs root / CAP_NET_RAW + CAP_NET_ADMIN"
            ) from None
        self.sent = 0
        self.fenced = False  # host failover: this host lost the lease, it sends nothing

    def fence(self) -> None:
        """Send nothing from now on (any thread): a raw socket may send from an address
        this host no longer holds, so removing the address is not enough."""
        self.fenced = True

    def send(self, packet: bytes | bytearray | memoryview) -> None:
        """Send one complete IPv4 packet (header included) to its destination address."""
        if self.fenced:
            return
        if len(packet) < 20 or packet[0] >> 4 != 4:
            raise ValueError("not an IPv4 packet")
        dst = socket.inet_ntoa(bytes(packet[16:20]))
        self._sock.sendto(packet, (dst, 0))
        self.sent += 1

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
