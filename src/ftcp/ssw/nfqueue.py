"""NFQUEUE over a raw `AF_NETLINK`/`NETLINK_NETFILTER` socket: `socket` + `struct` only.

Why our own binding: the speed of an NFQUEUE consumer is per packet, so it
hinges on `NFQA_CFG_F_GSO` (GSO super-packets up to 64 KB reach userspace
unsplit); `netfilterqueue` cannot set it and `fnfqueue` has bugs. This module
is the whole binding: configuration, a receive loop and batched verdicts.

How it is configured (`Queue.open`), in one acknowledged config message:

* `NFQNL_CFG_CMD_BIND` for the queue number. The old `PF_UNBIND`/`PF_BIND`
  dance is not sent: since Linux 3.8 those commands are no-ops.
* copy mode `NFQNL_COPY_PACKET`, range 0xffff (the kernel clamps it to
  0xffff - 4, the most one netlink attribute can carry).
* queue max length (packets queued to us and not yet given a verdict).
* `NFQA_CFG_FLAGS`/`NFQA_CFG_MASK`: `F_GSO` set and `F_FAIL_OPEN` explicitly
  cleared. Fail-closed: when the queue is full, or our socket's receive
  buffer is, the kernel *drops* the packet (TCP retransmits) instead of
  letting it pass unexamined, which would break ack clamping.

The socket gets a large receive buffer (`SO_RCVBUFFORCE`), `NETLINK_NO_ENOBUFS`
is cleared so that an overflow is *reported* (`recv` fails once with
`ENOBUFS`: counted in `stats.enobufs`, then we carry on), and
`NETLINK_CAP_ACK` is set so that error replies to a verdict do not echo a
64 KB payload back.

Checksums (measured on this kernel, see docs/DESIGN.md): with `F_GSO` a packet
may arrive with only the pseudo-header sum in its checksum field
(`QueuedPacket.csum_partial`). A verdict without payload lets the kernel
finish the checksum; a verdict *with* a payload makes the kernel treat the
checksum as absent, so a replaced payload must carry a complete checksum.

Verdicts are queued by `verdict`/`accept`/`drop` and sent by `flush` (which
`receive` also calls first, so a simple loop cannot deadlock). `flush` walks
the packets in the kernel's queue order and sends one `NFQNL_MSG_VERDICT_BATCH`
for each run of equal verdicts without payload (a batch verdict covers every
queued packet up to its id, so batching stops at the first packet still held
by the caller), and one `NFQNL_MSG_VERDICT` for each payload replacement or
each packet after a held one. Several netlink messages go in one `sendmsg`.

Privileges: everything here needs `CAP_NET_ADMIN` in the socket's network
namespace; without it `Queue.open` raises `UserError`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import select
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from ftcp.errors import LocalProtocolError, RemoteProtocolError, UserError
from ftcp.ssw import netns as _netns

# --- netlink / nfnetlink constants (linux/netlink.h, linux/netfilter/nfnetlink*.h)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

NFNL_SUBSYS_QUEUE = 3
NFNETLINK_V0 = 0

NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
MSG_VERDICT_BATCH = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH

# packet attributes (enum nfqnl_attr_type)
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14

# NFQA_SKB_INFO bits
NFQA_SKB_CSUMNOTREADY = 1 << 0
NFQA_SKB_GSO = 1 << 1
NFQA_SKB_CSUM_NOTVERIFIED = 1 << 2

# config attributes (enum nfqnl_attr_config)
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

NFQNL_CFG_CMD_NONE = 0
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2

NFQNL_COPY_NONE = 0
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2

NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2

MAX_COPY_RANGE = 0xFFFF
MAX_PAYLOAD = 0xFFFF - 4  # an nlattr length is 16 bits and includes its 4-byte header

# netfilter hooks (enum nf_inet_hooks)
HOOK_PRE_ROUTING = 0
HOOK_LOCAL_IN = 1
HOOK_FORWARD = 2
HOOK_LOCAL_OUT = 3
HOOK_POST_ROUTING = 4

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, portid (host order)
_NFGEN = struct.Struct("!BBH")  # family, version, res_id (queue number, big endian)
_NLA = struct.Struct("=HH")  # len, type (host order)
_U32BE = struct.Struct("!I")
_PKT_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook (packed, 7 bytes)
_VERDICT_HDR = struct.Struct("!II")  # verdict, id
_CFG_CMD = struct.Struct("!BxH")  # command, pad, pf
_CFG_PARAMS = struct.Struct("!IB")  # copy_range, copy_mode (packed, 5 bytes)
_NLMSGERR = struct.Struct("=i")

# one verdict message without payload: nlmsghdr + nfgenmsg + NFQA_VERDICT_HDR
_VERDICT_MSG = struct.Struct("=IHHII" + "BBH" + "HH" + "II")
_MARK_ATTR = struct.Struct("=HH" + "I")

_HDRLEN = _NLMSG.size + _NFGEN.size  # 20
_RECV_BUF = 256 * 1024
_SEND_CHUNK = 1 << 20  # bytes of verdict messages per sendmsg
_MAX_RECVS = 256  # recv calls drained per receive() call


def _align(n: int) -> int:
    return (n + 3) & ~3


class Verdict(enum.IntEnum):
    """Netfilter verdicts usable from a queue (linux/netfilter.h)."""

    DROP = 0
    ACCEPT = 1
    REPEAT = 4  # re-run the hook from the start (loops back into us unless the mark changes)


class NetlinkError(OSError):
    """The kernel refused a netlink request (`errno` is the kernel's error)."""

    def __init__(self, err: int, what: str, ext: str | None = None) -> None:
        msg = f"{what}: {os.strerror(err)}"
        if ext:
            msg += f" ({ext})"
        super().__init__(err, msg)
        self.what = what


class QueuedPacket(NamedTuple):
    """One packet queued to userspace and waiting for our verdict.

    `payload` is the whole IPv4 packet (bytes, owned by this object). With
    `F_GSO` it can be a super-packet far larger than the MTU."""

    id: int
    hook: int
    hw_protocol: int
    payload: bytes | memoryview
    mark: int
    skb_info: int
    indev: int
    outdev: int
    cap_len: int  # original length if the kernel truncated the copy, else len(payload)

    @property
    def csum_partial(self) -> bool:
        """Checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL)."""
        return bool(self.skb_info & NFQA_SKB_CSUMNOTREADY)

    @property
    def gso(self) -> bool:
        """The packet is a GSO super-packet (to be segmented by the kernel)."""
        return bool(self.skb_info & NFQA_SKB_GSO)

    @property
    def csum_not_verified(self) -> bool:
        return bool(self.skb_info & NFQA_SKB_CSUM_NOTVERIFIED)

    @property
    def truncated(self) -> bool:
        """The copy is shorter than the packet: it can be accepted, never replaced."""
        return self.cap_len > len(self.payload)


@dataclass(slots=True)
class QueueStats:
    received: int = 0  # packets parsed
    recv_calls: int = 0
    enobufs: int = 0  # overflow reports: the kernel dropped packets we never saw
    verdicts: int = 0  # packets given a verdict
    batch_msgs: int = 0  # NFQNL_MSG_VERDICT_BATCH messages sent
    single_msgs: int = 0  # NFQNL_MSG_VERDICT messages sent
    payload_msgs: int = 0  # of which carried a replacement payload
    sends: int = 0  # sendmsg calls
    errors: list[tuple[int, int]] = field(default_factory=list)  # (errno, seq) of async errors


# --- message building and parsing (pure; unit-tested without root) ---------------------


def attr(atype: int, data: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = _NLA.size + len(data)
    if n > 0xFFFF:
        raise ValueError(f"netlink attribute too long ({len(data)} bytes)")
    return _NLA.pack(n, atype) + data + b"\0" * (_align(n) - n)


def nfq_message(
    msg_type: int, queue_num: int, attrs: bytes, *, seq: int = 0, flags: int = NLM_F_REQUEST
) -> bytes:
    """A complete nfnetlink message of the queue subsystem."""
    body = _NFGEN.pack(socket.AF_UNSPEC, NFNETLINK_V0, queue_num) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), msg_type, flags, seq, 0) + body


def config_message(
    queue_num: int,
    *,
    seq: int,
    cmd: int | None = None,
    pf: int = socket.AF_INET,
    copy_mode: int | None = None,
    copy_range: int = MAX_COPY_RANGE,
    maxlen: int | None = None,
    flags: int | None = None,
    mask: int | None = None,
) -> bytes:
    """An acknowledged NFQNL_MSG_CONFIG message (the kernel applies cmd, params, maxlen, flags
    in that order)."""
    attrs = b""
    if cmd is not None:
        attrs += attr(NFQA_CFG_CMD, _CFG_CMD.pack(cmd, pf))
    if copy_mode is not None:
        attrs += attr(NFQA_CFG_PARAMS, _CFG_PARAMS.pack(copy_range, copy_mode))
    if maxlen is not None:
        attrs += attr(NFQA_CFG_QUEUE_MAXLEN, _U32BE.pack(maxlen))
    if flags is not None:
        attrs += attr(NFQA_CFG_FLAGS, _U32BE.pack(flags))
        attrs += attr(NFQA_CFG_MASK, _U32BE.pack(flags if mask is None else mask))
    return nfq_message(MSG_CONFIG, queue_num, attrs, seq=seq, flags=NLM_F_REQUEST | NLM_F_ACK)


def verdict_message(
    queue_num: int,
    packet_id: int,
    verdict: int,
    *,
    mark: int | None = None,
    batch: bool = False,
    payload_len: int | None = None,
) -> bytes:
    """The header part of a verdict message.

    With `payload_len` the returned bytes end with the NFQA_PAYLOAD attribute
    header: the caller sends the payload itself right after it, then
    `b"\\0" * payload_padding(payload_len)`. Keeping the payload out of the
    header saves a copy of up to 64 KB per packet."""
    mtype = MSG_VERDICT_BATCH if batch else MSG_VERDICT
    extra = _MARK_ATTR.size if mark is not None else 0
    plen = 0
    if payload_len is not None:
        if batch:
            raise ValueError("a batch verdict cannot carry a payload")
        if payload_len > MAX_PAYLOAD:
            raise ValueError(f"replacement payload of {payload_len} bytes > {MAX_PAYLOAD}")
        plen = _align(_NLA.size + payload_len)
    total = _VERDICT_MSG.size + extra + plen
    msg = _VERDICT_MSG.pack(
        total, mtype, NLM_F_REQUEST, packet_id, 0,  # seq = packet id: names it in errors
        socket.AF_UNSPEC, NFNETLINK_V0, socket.htons(queue_num),
        _NLA.size + _VERDICT_HDR.size, NFQA_VERDICT_HDR,
        socket.htonl(verdict), socket.htonl(packet_id),
    )  # fmt: skip
    if mark is not None:
        msg += _MARK_ATTR.pack(_MARK_ATTR.size, NFQA_MARK, socket.htonl(mark))
    if payload_len is not None:
        msg += _NLA.pack(_NLA.size + payload_len, NFQA_PAYLOAD)
    return msg


def payload_padding(payload_len: int) -> int:
    n = _NLA.size + payload_len
    return _align(n) - n


def parse_packet_attrs(
    buf: bytes | memoryview, start: int, end: int, *, zero_copy: bool = False
) -> QueuedPacket:
    """Parse the attributes of one NFQNL_MSG_PACKET (from after its nfgenmsg to `end`).

    With `zero_copy` the payload is a memoryview slice of `buf` (which must then be
    an immutable `bytes`, or a view of one, that nothing reuses), else a `bytes` copy."""
    pid = hook = hwp = -1
    mark = skb_info = indev = outdev = 0
    payload = b""
    cap_len = -1
    a = start
    while a + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            raise RemoteProtocolError(f"nfqueue: bad attribute length {alen} at offset {a}")
        atype &= NLA_TYPE_MASK
        if atype == NFQA_PAYLOAD:
            payload = buf[a + 4 : a + alen] if zero_copy else bytes(buf[a + 4 : a + alen])  # type: ignore[assignment]
        elif atype == NFQA_PACKET_HDR:
            pid, hwp, hook = _PKT_HDR.unpack_from(buf, a + 4)
        elif atype == NFQA_MARK:
            (mark,) = _U32BE.unpack_from(buf, a + 4)
        elif atype == NFQA_SKB_INFO:
            (skb_info,) = _U32BE.unpack_from(buf, a + 4)
        elif atype == NFQA_IFINDEX_INDEV:
            (indev,) = _U32BE.unpack_from(buf, a + 4)
        elif atype == NFQA_IFINDEX_OUTDEV:
            (outdev,) = _U32BE.unpack_from(buf, a + 4)
        elif atype == NFQA_CAP_LEN:
            (cap_len,) = _U32BE.unpack_from(buf, a + 4)
        a += (alen + 3) & ~3
    if pid < 0:
        raise RemoteProtocolError("nfqueue: packet message without NFQA_PACKET_HDR")
    if cap_len < 0:
        cap_len = len(payload)
    return QueuedPacket(pid, hook, hwp, payload, mark, skb_info, indev, outdev, cap_len)


class ParsedError(NamedTuple):
    seq: int  # of the request it answers (a verdict's seq is its packet id)
    error: int  # positive errno; 0 is an ack
    ext: str | None  # extended-ack message, if the kernel gave one
    msg_type: int = 0  # type of the request it answers


def _parse_error(buf: bytes | memoryview, off: int, mlen: int, mflags: int) -> ParsedError:
    (err,) = _NLMSGERR.unpack_from(buf, off + 16)
    _, otype, _, oseq, _ = _NLMSG.unpack_from(buf, off + 20)
    ext = None
    # NLM_F_CAPPED (0x100): only the header was echoed; NLM_F_ACK_TLVS (0x200): TLVs follow.
    if mflags & 0x200:
        olen = 16 if mflags & 0x100 else _NLMSG.unpack_from(buf, off + 20)[0]
        a = off + 20 + _align(olen)
        while a + 4 <= off + mlen:
            alen, atype = _NLA.unpack_from(buf, a)
            if alen < 4:
                break
            if atype & NLA_TYPE_MASK == 1:  # NLMSGERR_ATTR_MSG
                ext = bytes(buf[a + 4 : a + alen]).rstrip(b"\0").decode(errors="replace")
            a += _align(alen)
    return ParsedError(oseq, -err, ext, otype)


def parse_messages(
    buf: bytes | memoryview, n: int | None = None, *, zero_copy: bool = False
) -> tuple[list[QueuedPacket], list[ParsedError]]:
    """Parse a buffer of netlink messages into packets and error/ack replies
    (`zero_copy`: see `parse_packet_attrs`)."""
    n = len(buf) if n is None else min(n, len(buf))
    packets: list[QueuedPacket] = []
    errors: list[ParsedError] = []
    off = 0
    while off + 16 <= n:
        mlen, mtype, mflags, _seq, _pid = _NLMSG.unpack_from(buf, off)
        if mlen < 16 or off + mlen > n:
            raise RemoteProtocolError(f"nfqueue: bad netlink message length {mlen} at {off}")
        if mtype == MSG_PACKET:
            packets.append(
                parse_packet_attrs(buf, off + _HDRLEN, off + mlen, zero_copy=zero_copy)
            )
        elif mtype == NLMSG_ERROR:
            errors.append(_parse_error(buf, off, mlen, mflags))
        elif mtype in (NLMSG_NOOP, NLMSG_DONE):
            pass
        elif mtype == NLMSG_OVERRUN:
            raise RemoteProtocolError("nfqueue: netlink overrun")
        # other types (none expected) are ignored
        off += _align(mlen)
    if off < n:
        raise RemoteProtocolError(f"nfqueue: {n - off} stray bytes after netlink messages")
    return packets, errors


# --- the queue -------------------------------------------------------------------------


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))  # CAP_NET_ADMIN
    except OSError:
        pass
    return os.geteuid() == 0


class Queue:
    """One bound NFQUEUE queue. Not thread-safe: use it from one thread.

    Typical loop::

        with Queue.open(7) as q:
            sel.register(q.fileno(), EVENT_READ)
            ...
            for p in q.receive():
                q.accept(p.id)
            q.flush()
    """

    def __init__(self, sock: socket.socket, num: int) -> None:
        self._sock = sock
        self.num = num
        self.stats = QueueStats()
        self._seq = 0
        self._buf = bytearray(_RECV_BUF)
        self._view = memoryview(self._buf)
        # ids received and not yet verdicted, in kernel queue order (dict keeps insertion order)
        self._outstanding: dict[int, None] = {}
        # id -> (verdict, mark, payload) waiting for flush()
        self._pending: dict[int, tuple[int, int | None, bytes | memoryview | None]] = {}
        self._backlog: list[QueuedPacket] = []
        self._closed = False
        # True: `receive` reads each netlink datagram into a fresh `bytes` and hands out
        # payloads as read-only memoryviews into it (no copy; they stay valid as long as
        # they are referenced). False: each payload is its own `bytes` copy.
        self.zero_copy = False

    # -- setup / teardown

    @classmethod
    def open(
        cls,
        num: int,
        *,
        netns: str | None = None,
        maxlen: int = 4096,
        rcvbuf: int = 64 << 20,
        sndbuf: int = 4 << 20,
        copy_range: int = MAX_COPY_RANGE,
        gso: bool = True,
    ) -> Queue:
        """Bind queue `num` (in namespace `netns`, else the current one) and configure it."""
        if not 0 <= num <= 0xFFFF:
            raise UserError(f"NFQUEUE number {num} out of range 0..65535")

        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        try:
            sock = _netns.run_in_netns(netns, make)
        except PermissionError:
            raise UserError("NFQUEUE needs root / CAP_NET_ADMIN") from None
        q = cls(sock, num)
        try:
            q._setup(maxlen, rcvbuf, sndbuf, copy_range, gso)
        except BaseException:
            sock.close()
            raise
        return q

    def _setup(self, maxlen: int, rcvbuf: int, sndbuf: int, copy_range: int, gso: bool) -> None:
        s = self._sock
        s.bind((0, 0))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
        except PermissionError:
            raise UserError("NFQUEUE needs root / CAP_NET_ADMIN") from None
        s.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 0)
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        with contextlib.suppress(OSError):
            s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        flags = NFQA_CFG_F_GSO if gso else 0
        mask = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
        s.setblocking(True)
        self._request(
            "bind",
            cmd=NFQNL_CFG_CMD_BIND,
            copy_mode=NFQNL_COPY_PACKET,
            copy_range=copy_range,
            maxlen=maxlen,
            flags=flags,
            mask=mask,
        )
        s.setblocking(False)

    def _request(self, what: str, **kw: int) -> None:
        """Send one config message and wait for its ack; packets seen meanwhile go to backlog."""
        self._seq += 1
        seq = self._seq
        self._sock.send(config_message(self.num, seq=seq, **kw))
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.stats.enobufs += 1
                    continue
                raise
            packets, errors = parse_messages(self._view, n)
            self._take(packets)
            for e in errors:
                if e.seq != seq or e.msg_type != MSG_CONFIG:
                    if e.error:
                        self.stats.errors.append((e.error, e.seq))
                    continue
                if e.error == 0:
                    return
                if e.error == errno.EPERM:
                    if not _has_net_admin():
                        raise UserError("NFQUEUE needs root / CAP_NET_ADMIN")
                    raise UserError(
                        f"NFQUEUE {self.num}: {what} refused (EPERM): the queue is probably "
                        "bound by another process"
                    )
                if e.error == errno.EBUSY:
                    raise UserError(f"NFQUEUE {self.num} is already bound by another process")
                raise NetlinkError(e.error, f"NFQUEUE {self.num}: {what}", e.ext)

    def close(self) -> None:
        """Send pending verdicts, unbind the queue and close the socket.

        Packets still queued and without a verdict are dropped by the kernel
        when the queue goes away; with no queue bound, the NFQUEUE rule
        (without --queue-bypass) drops new packets: fail-closed."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            self._sock.setblocking(True)
            self._sock.settimeout(2.0)
            self._request("unbind", cmd=NFQNL_CFG_CMD_UNBIND)
        except (OSError, UserError):
            pass  # the kernel also unbinds when the socket closes
        finally:
            self._sock.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- receiving

    def _take(self, packets: list[QueuedPacket]) -> None:
        out = self._outstanding
        for p in packets:
            out[p.id] = None
        self.stats.received += len(packets)
        self._backlog.extend(packets)

    def receive(self, timeout: float | None = 0.0) -> list[QueuedPacket]:
        """Flush pending verdicts, then return the packets queued so far (maybe none).

        `timeout` is how long to wait for the first packet: 0 never blocks
        (for use after a selector said readable), None waits forever. All
        packets already in the socket are drained (up to a bound), several
        messages per recv are parsed. An `ENOBUFS` overflow report is counted
        and skipped. A netlink error reply to an earlier verdict raises
        `NetlinkError`; packets parsed before it are kept for the next call."""
        if self._pending:
            self.flush()
        if not self._backlog and timeout != 0.0:
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        sock = self._sock
        buf = self._buf
        view = self._view
        st = self.stats
        errors: list[ParsedError] = []
        zero_copy = self.zero_copy
        for _ in range(_MAX_RECVS):
            try:
                if zero_copy:
                    data = sock.recv(_RECV_BUF)
                    n = len(data)
                else:
                    n = sock.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    st.enobufs += 1
                    continue
                raise
            st.recv_calls += 1
            if n == 0:
                break
            if zero_copy:
                packets, errs = parse_messages(memoryview(data), n, zero_copy=True)
            else:
                packets, errs = parse_messages(view, n)
            if packets:
                self._take(packets)
            if errs:
                errors.extend(e for e in errs if e.error)
        if errors:
            for e in errors:
                st.errors.append((e.error, e.seq))
            e = errors[0]
            raise NetlinkError(
                e.error, f"NFQUEUE {self.num}: verdict for packet {e.seq} rejected", e.ext
            )
        out, self._backlog = self._backlog, []
        return out

    # -- verdicts

    def verdict(
        self,
        packet_id: int,
        verdict: int = Verdict.ACCEPT,
        *,
        payload: bytes | bytearray | memoryview | None = None,
        mark: int | None = None,
    ) -> None:
        """Queue a verdict for `packet_id` (sent by `flush`). A payload replaces the packet and
        must carry complete checksums; `mark` sets the packet's firewall mark."""
        if packet_id not in self._outstanding:
            raise LocalProtocolError(f"NFQUEUE {self.num}: no packet {packet_id} awaits a verdict")
        if packet_id in self._pending:
            raise LocalProtocolError(f"NFQUEUE {self.num}: packet {packet_id} already has one")
        if payload is not None and len(payload) > MAX_PAYLOAD:
            raise ValueError(f"replacement payload of {len(payload)} bytes > {MAX_PAYLOAD}")
        self._pending[packet_id] = (int(verdict), mark, payload)

    def accept(
        self,
        packet_id: int,
        *,
        payload: bytes | bytearray | memoryview | None = None,
        mark: int | None = None,
    ) -> None:
        self.verdict(packet_id, Verdict.ACCEPT, payload=payload, mark=mark)

    def drop(self, packet_id: int) -> None:
        self.verdict(packet_id, Verdict.DROP)

    @property
    def outstanding(self) -> int:
        """Packets received and not yet given a verdict (held ones included)."""
        return len(self._outstanding) - len(self._pending)

    def flush(self) -> None:
        """Send every queued verdict to the kernel."""
        pending = self._pending
        if not pending:
            return
        out = self._outstanding
        num = self.num
        st = self.stats
        bufs: list[bytes | bytearray | memoryview] = []
        size = 0

        def emit(chunks: Iterable[bytes | bytearray | memoryview], n: int) -> None:
            nonlocal size
            if size + n > _SEND_CHUNK and bufs:
                self._send(bufs)
                bufs.clear()
                size = 0
            bufs.extend(chunks)
            size += n

        def single(pid: int, v: tuple[int, int | None, bytes | memoryview | None]) -> None:
            verdict, mark, payload = v
            if payload is None:
                m = verdict_message(num, pid, verdict, mark=mark)
                emit((m,), len(m))
            else:
                plen = len(payload)
                m = verdict_message(num, pid, verdict, mark=mark, payload_len=plen)
                pad = payload_padding(plen)
                emit((m, payload, b"\0" * pad) if pad else (m, payload), len(m) + plen + pad)
                st.payload_msgs += 1
            st.single_msgs += 1

        # Phase 1: walk the kernel queue order while every packet has a verdict; runs of
        # equal payload-less verdicts become one batch message.
        run_key: tuple[int, int | None] | None = None
        run_last = run_len = 0
        done: list[int] = []

        def close_run() -> None:
            nonlocal run_key, run_len
            if run_key is None:
                return
            if run_len == 1:
                single(run_last, (run_key[0], run_key[1], None))
            else:
                m = verdict_message(num, run_last, run_key[0], mark=run_key[1], batch=True)
                emit((m,), len(m))
                st.batch_msgs += 1
            run_key = None
            run_len = 0

        for pid in out:
            v = pending.get(pid)
            if v is None:  # held by the caller: a batch past it would release it
                break
            done.append(pid)
            if v[2] is not None:
                close_run()
                single(pid, v)
            else:
                key = (v[0], v[1])
                if key != run_key:
                    close_run()
                    run_key = key
                run_last = pid
                run_len += 1
            if len(done) == len(pending):
                break
        close_run()
        for pid in done:
            del pending[pid]
            del out[pid]
        st.verdicts += len(done)
        # Phase 2: behind a held packet, every verdict is individual.
        for pid, v in pending.items():
            single(pid, v)
            del out[pid]
        st.verdicts += len(pending)
        pending.clear()
        if bufs:
            self._send(bufs)

    def _send(self, bufs: list[bytes | bytearray | memoryview]) -> None:
        self.stats.sends += 1
        sock = self._sock
        while True:
            try:
                sock.sendmsg(bufs)
                return
            except BlockingIOError:
                select.select([], [sock], [])
            except InterruptedError:
                continue

    # -- kernel-side counters

    def kernel_stats(self, netns: str | None = None) -> dict[str, int] | None:
        """This queue's line of /proc/net/netfilter/nfnetlink_queue (read in `netns`)."""

        def read() -> str:
            with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
                return f.read()

        try:
            text = _netns.run_in_netns(netns, read)
        except OSError:
            return None
        names = ("queue_num", "portid", "queue_total", "copy_mode", "copy_range",
                 "queue_dropped", "user_dropped", "id_sequence")  # fmt: skip
        for line in text.splitlines():
            fields = line.split()
            if fields and int(fields[0]) == self.num:
                return dict(zip(names, map(int, fields), strict=False))
        return None
