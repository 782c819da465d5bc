"""Read TCP counters of the sockets inside a lab host, from this process, precisely timed.

`ss` in a namespace costs a process start (tens of ms under load), which
blurs when a sample was taken. Instead `SockDiag(netns)` opens a
NETLINK_SOCK_DIAG socket *inside* the namespace (this thread enters it with
setns(2) just long enough to create the socket, then returns) and dumps
`tcp_info` on demand in well under a millisecond.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ftcp import sockdiag

CLONE_NEWNET = 0x40000000
INET_DIAG_INFO = 2
# offsets in struct tcp_info (linux/tcp.h)
TCPI_SND_MSS = 16
TCPI_BYTES_ACKED = 120
TCPI_BYTES_RECEIVED = 128
TCPI_DELIVERED = 192  # segments delivered, cumulatively acked or SACKed
TCPI_MIN_LEN = TCPI_DELIVERED + 4

_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_netns(
    netns_path: str | Path, family: int, type_: int, proto: int = 0
) -> socket.socket:
    """A socket created inside the network namespace at `netns_path` (e.g. /run/netns/X)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({netns_path}): {os.strerror(e)}")
        try:
            return socket.socket(family, type_, proto)
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # never stay in the lab's namespace
                e = ctypes.get_errno()
                raise OSError(e, f"setns back: {os.strerror(e)}")
    finally:
        os.close(own)
        os.close(target)


@dataclass(frozen=True, slots=True)
class TcpSock:
    src: tuple[str, int]
    dst: tuple[str, int]
    state: int
    bytes_acked: int  # cumulative: jumps when a hole is filled
    bytes_received: int
    delivered: int  # segments that reached the peer (SACKed ones included), as they did
    snd_mss: int


class SockDiag:
    """`SockDiag("/run/netns/ftcp-x-client").tcp()` lists the namespace's IPv4 TCP sockets."""

    def __init__(self, netns_path: str | Path) -> None:
        self.sock = socket_in_netns(
            netns_path, socket.AF_NETLINK, socket.SOCK_RAW, sockdiag.NETLINK_SOCK_DIAG
        )
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tcp(self) -> list[TcpSock]:
        self.seq += 1
        msgs = sockdiag.dump(
            self.sock, socket.AF_INET, sockdiag.ALL_STATES, 1 << (INET_DIAG_INFO - 1), self.seq
        )
        return [_parse(m) for m in msgs]


def _parse(msg: bytes) -> TcpSock:
    _family, state, _timer, _retrans = struct.unpack_from("=BBBB", msg, 0)
    sport, dport = struct.unpack_from("!HH", msg, 4)
    src = str(ipaddress.IPv4Address(msg[8:12]))
    dst = str(ipaddress.IPv4Address(msg[24:28]))
    acked = received = delivered = mss = 0
    off = 72  # sizeof(struct inet_diag_msg)
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        if atype == INET_DIAG_INFO and alen - 4 >= TCPI_MIN_LEN:
            info = off + 4
            acked, received = struct.unpack_from("=QQ", msg, info + TCPI_BYTES_ACKED)
            (delivered,) = struct.unpack_from("=I", msg, info + TCPI_DELIVERED)
            (mss,) = struct.unpack_from("=I", msg, info + TCPI_SND_MSS)
        off += (alen + 3) & ~3
    return TcpSock((src, sport), (dst, dport), state, acked, received, delivered, mss)
