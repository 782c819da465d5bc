"""Rebuild an accepted TCP socket in place with TCP_REPAIR (`ftcp run --restore repair`).

The restarted application's accept returned a connection made by the fabricated
handshake (same 4-tuple as the original, but the new kernel's ISN, TSval clock
and window scale). `repair_in_place` turns that very socket, which the
application already holds, into the original connection:

repair on -> disconnect (``connect(AF_UNSPEC)``: in repair mode no FIN/RST; it
unhashes the 4-tuple) -> queue sequence numbers -> bind -> connect (no SYN) ->
TCP_REPAIR_OPTIONS -> TCP_TIMESTAMP -> fill the receive queue -> TCP_REPAIR_WINDOW
-> repair off (the kernel sends one window probe).

The order is the one measured on this kernel (docs/DESIGN.md, "Kernel facts").
Needs CAP_NET_ADMIN. Every failure names its step and errno (`RepairError`);
`touched` says whether the socket was already disconnected (the handshake
connection is gone) or is intact (the caller may go on with it as a handshake
rebuild).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from ftcp.core import seq
from ftcp.core.repair import RepairSpec

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_REPAIR_OFF_NO_WP = -1  # repair off without the window probe

TCP_NO_QUEUE = 0
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2

TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8

_WINDOW = struct.Struct("IIIII")  # snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
_U32 = struct.Struct("I")


class RepairError(OSError):
    def __init__(self, step: str, err: int, touched: bool) -> None:
        super().__init__(err, f"TCP_REPAIR step {step!r} failed: {os.strerror(err)}")
        self.step = step
        self.touched = touched


@dataclass(frozen=True, slots=True)
class RepairResult:
    rcv_nxt: int  # end of the receive queue (instream bytes queued)
    rcv_wnd: int  # receive window from rcv_nxt
    queued: int  # instream bytes put in the receive queue
    fill_s: float = 0.0  # time spent queueing them (replay's work, not the rebuild's)


_libc: ctypes.CDLL | None = None


def _disconnect(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    sa = struct.pack("H14x", socket.AF_UNSPEC)
    if _libc.connect(fd, sa, len(sa)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def repair_in_place(fd: int, spec: RepairSpec) -> RepairResult:
    """Rebuild the connection of socket `fd` (not closed; borrowed) as `spec` says."""
    s = socket.socket(fileno=os.dup(fd))  # closing this dup leaves the socket open
    try:
        return _repair(s, spec)
    finally:
        s.close()


def _repair(s: socket.socket, spec: RepairSpec) -> RepairResult:
    tcp = socket.IPPROTO_TCP
    step = "repair on"
    touched = False
    fd = s.fileno()
    # repair on/off clobbers sk_reuse (on: force reuse; off: none); without restoring it,
    # the repaired socket, still held by the agent after a later crash, makes the next
    # incarnation's SO_REUSEADDR bind to the port fail (EADDRINUSE)
    reuse = 0
    try:
        reuse = s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        s.setsockopt(tcp, TCP_REPAIR, 1)
        local, peer = s.getsockname(), s.getpeername()
        step = "disconnect"
        touched = True
        _disconnect(fd)
        s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # clears ECONNABORTED
        step = "queue seqs"
        s.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        s.setsockopt(tcp, TCP_QUEUE_SEQ, _U32.pack(spec.rcv_seq))
        s.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        s.setsockopt(tcp, TCP_QUEUE_SEQ, _U32.pack(spec.snd_seq))
        s.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        step = "bind"
        try:
            s.bind(local)
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: still bound to its port
                raise
        step = "connect"
        s.connect(peer)
        step = "options"
        opts = _U32.pack(TCPOPT_MSS) + _U32.pack(spec.mss)
        opts += _U32.pack(TCPOPT_WINDOW) + _U32.pack(spec.snd_wscale | spec.rcv_wscale << 16)
        if spec.sack_ok:
            opts += _U32.pack(TCPOPT_SACK_PERM) + _U32.pack(0)
        if spec.ts_ok:
            opts += _U32.pack(TCPOPT_TIMESTAMP) + _U32.pack(0)
        s.setsockopt(tcp, TCP_REPAIR_OPTIONS, opts)
        if spec.ts_ok and spec.ts_val is not None:
            step = "timestamp"
            s.setsockopt(tcp, TCP_TIMESTAMP, _U32.pack(spec.ts_val))
        step = "receive queue"
        t0 = time.perf_counter()
        queued = _fill(s, spec.instream)
        fill_s = time.perf_counter() - t0
        rcv_nxt = seq.add(spec.rcv_seq, queued)
        step = "window"
        _, _, max_window, rcv_wnd, _ = _WINDOW.unpack(s.getsockopt(tcp, TCP_REPAIR_WINDOW, 20))
        if queued < len(spec.instream) or spec.partial:
            # the receive queue is full (the kernel caps it, ~32 MB here): the rest of the
            # log is refilled by SSW into the window, and the window is what the queue
            # can still take, so the refill goes as fast as the application's reads make
            # room. Keeping the old right edge instead (far beyond what fits) had SSW
            # inject megabytes the kernel could only collapse and drop (64 MB: 200 ms).
            # The client is not behind this edge: it holds ack = stable_seq, window 0.
            rcv_wnd = _free_space(s)
        elif spec.rcv_edge is not None:
            rcv_wnd = max(rcv_wnd, seq.sub(spec.rcv_edge, rcv_nxt))
        s.setsockopt(
            tcp,
            TCP_REPAIR_WINDOW,
            _WINDOW.pack(rcv_nxt, spec.snd_wnd, max(max_window, spec.snd_wnd), rcv_wnd, rcv_nxt),
        )
        step = "repair off"
        s.setsockopt(tcp, TCP_REPAIR, 0)  # sends a window probe: the client answers at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
    except OSError as e:
        if not touched:
            with contextlib.suppress(OSError):
                s.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
        raise RepairError(step, e.errno or errno.EIO, touched) from e
    return RepairResult(rcv_nxt, rcv_wnd, queued, fill_s)


SO_MEMINFO = 55
_MEMINFO = struct.Struct("9I")  # rmem_alloc, rcvbuf, wmem_alloc, sndbuf, fwd_alloc, ...


def _free_space(s: socket.socket) -> int:
    """Receive window the socket's memory still allows: half its free receive buffer
    (what the kernel itself advertises, tcp_adv_win_scale = 1), at least 0."""
    try:
        rmem, rcvbuf = _MEMINFO.unpack(s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[:2]
    except (OSError, struct.error):
        return 0
    return max(0, rcvbuf - rmem) // 2


def _fill(s: socket.socket, data: bytes) -> int:
    """Queue `data` as received bytes; how many fit (the rest is refilled by SSW)."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    view = memoryview(data)
    off = 0
    try:
        while off < len(view):
            try:
                n = s.send(view[off:])
            except OSError as e:
                if e.errno in (errno.ENOMEM, errno.ENOBUFS, errno.EAGAIN):
                    break
                raise
            if n <= 0:
                break
            off += n
    finally:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    return off
