"""One NETLINK_SOCK_DIAG dump of TCP sockets (the kernel's `ss`), without a process.

Used by recovery (is the restarted application listening yet? polled every
millisecond: a dump of listeners only costs ~35 us where reading
/proc/net/tcp cost ~8.6 ms) and by the lab's tcp_info sampler.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
ALL_STATES = 0xFFFFFFFF
_HDR = struct.Struct("=IHHII")
# what one recv asks for: the kernel fills a dump message up to 32 KiB (or a larger
# recv buffer); Python allocates the whole size per call, and 1 MiB per call was 2/3
# of a listener poll's 120 us
RECV_SIZE = 1 << 16


def dump(
    nl: socket.socket, family: int, states: int = ALL_STATES, ext: int = 0, seq: int = 1
) -> Iterator[bytes]:
    """Ask `nl` (a NETLINK_SOCK_DIAG socket) for the TCP sockets of `family` in `states`
    (a bit mask of TCP states) with attributes `ext`; yield each `inet_diag_msg` (with
    its attributes). Replies to other requests (another `seq`) are skipped."""
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, ext, 0, states)
    req += bytes(48)  # inet_diag_sockid: the dump filters by family and state only
    nl.send(_HDR.pack(16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req)
    while True:
        data = nl.recv(RECV_SIZE)
        if not data:
            return
        off = 0
        while off + 16 <= len(data):
            length, kind, _flags, mseq, _pid = _HDR.unpack_from(data, off)
            if length < 16:
                return
            if mseq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err:
                        raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
                    return
                if kind == SOCK_DIAG_BY_FAMILY:
                    yield data[off + 16 : off + length]
            off += (length + 3) & ~3


def listening(port: int) -> bool:
    """A TCP socket in LISTEN on `port` exists in this network namespace (IPv4 or IPv6)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in dump(nl, family, 1 << TCP_LISTEN):
                if len(msg) >= 8 and struct.unpack_from("!H", msg, 4)[0] == port:
                    return True
    return False


SOCK_DESTROY = 21
NLM_F_ACK = 0x4
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
# states no process can still use: its owner closed it (the kernel finishes it alone)
CLOSED_BY_OWNER = {4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT", 9: "LAST_ACK", 11: "CLOSING"}


def _one(local: tuple[bytes, int], remote: tuple[bytes, int]) -> bytes:
    """An inet_diag_req_v2 naming one IPv4 TCP socket by its 4-tuple."""
    (lip, lport), (rip, rport) = local, remote
    sockid = struct.pack("!HH", lport, rport) + lip + bytes(12) + rip + bytes(12)
    sockid += struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    return struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, ALL_STATES) + sockid


def _ask(nl: socket.socket, kind: int, flags: int, req: bytes, seq: int) -> tuple[int, bytes]:
    """(errno, message) of the kernel's answer to one request (0, b"" for a bare ack)."""
    nl.send(_HDR.pack(16 + len(req), kind, flags, seq, 0) + req)
    while True:
        data = nl.recv(65536)
        off = 0
        while off + 16 <= len(data):
            length, mkind, _flags, mseq, _pid = _HDR.unpack_from(data, off)
            if length < 16:
                return 0, b""
            if mseq == seq:
                if mkind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    return -err, b""
                if mkind == NLMSG_DONE:
                    return 0, b""
                return 0, data[off + 16 : off + length]
            off += (length + 3) & ~3


def evict_closed(local: tuple[bytes, int], remote: tuple[bytes, int]) -> str | None:
    """Abort the IPv4 TCP socket with this 4-tuple (`local` = this host's address and
    port, addresses as 4 bytes) if its owner already closed it (`CLOSED_BY_OWNER`);
    its state name, or None (no such socket, or one still open). The abort may send
    a reset: the caller makes sure it does not reach the peer.

    Recovery needs the 4-tuple free to rebuild a connection there; a restarted
    application killed while it accepted a rebuilt connection leaves it to a socket
    that no process holds (its close sent a FIN SSW dropped; it would retry for
    minutes), and the next rebuilt SYN would only draw its acks."""
    req = _one(local, remote)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        err, msg = _ask(nl, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, req, 1)
        if err or len(msg) < 2:
            return None
        state = CLOSED_BY_OWNER.get(msg[1])
        if state is None:
            return None
        err, _ = _ask(nl, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, req, 2)
        if err:
            raise OSError(err, f"sock_diag destroy: {os.strerror(err)}")
        return state
