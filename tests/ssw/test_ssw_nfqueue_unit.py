"""NFQUEUE netlink packing/parsing and verdict batching, without root or a kernel."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

import pytest

from ftcp.errors import LocalProtocolError, RemoteProtocolError
from ftcp.ssw import nfqueue as nq

NLMSG = struct.Struct("=IHHII")
NLA = struct.Struct("=HH")


def split_msgs(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body-after-nfgenmsg) per netlink message; checks res_id framing."""
    out = []
    off = 0
    while off < len(data):
        mlen, mtype, mflags, seq, _ = NLMSG.unpack_from(data, off)
        assert mlen >= 20 and off + mlen <= len(data)
        out.append((mtype, mflags, seq, data[off + 16 : off + mlen]))
        off += (mlen + 3) & ~3
    return out


def attrs(body: bytes) -> dict[int, bytes]:
    """nfgenmsg + attributes → {type: data}."""
    a, res = 4, {}
    while a < len(body):
        alen, atype = NLA.unpack_from(body, a)
        res[atype & 0x3FFF] = body[a + 4 : a + alen]
        a += (alen + 3) & ~3
    return res


def packet_msg(pid: int, payload: bytes, *, hook: int = 1, mark: int | None = None,
               skb_info: int | None = None, cap_len: int | None = None) -> bytes:  # fmt: skip
    a = nq.attr(nq.NFQA_PACKET_HDR, struct.pack("!IHB", pid, 0x0800, hook))
    if mark is not None:
        a += nq.attr(nq.NFQA_MARK, struct.pack("!I", mark))
    a += nq.attr(nq.NFQA_IFINDEX_INDEV, struct.pack("!I", 7))
    if skb_info is not None:
        a += nq.attr(nq.NFQA_SKB_INFO, struct.pack("!I", skb_info))
    if cap_len is not None:
        a += nq.attr(nq.NFQA_CAP_LEN, struct.pack("!I", cap_len))
    a += nq.attr(nq.NFQA_PAYLOAD, payload)
    return nq.nfq_message(nq.MSG_PACKET, 9, a, flags=0)


def error_msg(seq: int, err: int) -> bytes:
    body = struct.pack("=i", -err) + NLMSG.pack(16, nq.MSG_VERDICT, 1, seq, 0)
    return NLMSG.pack(16 + len(body), nq.NLMSG_ERROR, 0x100, seq, 0) + body


# --- packing -----------------------------------------------------------------------------


def test_attr_padding() -> None:
    assert nq.attr(5, b"abc") == struct.pack("=HH", 7, 5) + b"abc\0"
    assert len(nq.attr(5, b"abcd")) == 8
    with pytest.raises(ValueError):
        nq.attr(1, bytes(0xFFFF))


def test_config_message_bind_gso_fail_closed() -> None:
    m = nq.config_message(
        513, seq=7, cmd=nq.NFQNL_CFG_CMD_BIND, copy_mode=nq.NFQNL_COPY_PACKET, maxlen=4096,
        flags=nq.NFQA_CFG_F_GSO, mask=nq.NFQA_CFG_F_GSO | nq.NFQA_CFG_F_FAIL_OPEN,
    )  # fmt: skip
    [(mtype, mflags, seq, body)] = split_msgs(m)
    assert mtype == (3 << 8) | 2 and seq == 7
    assert mflags == nq.NLM_F_REQUEST | nq.NLM_F_ACK
    assert body[:4] == bytes([socket.AF_UNSPEC, 0]) + struct.pack("!H", 513)
    a = attrs(body)
    assert a[nq.NFQA_CFG_CMD] == bytes([1, 0]) + struct.pack("!H", socket.AF_INET)
    assert a[nq.NFQA_CFG_PARAMS] == struct.pack("!IB", 0xFFFF, 2)  # 5 bytes, packed
    assert a[nq.NFQA_CFG_QUEUE_MAXLEN] == struct.pack("!I", 4096)
    assert a[nq.NFQA_CFG_FLAGS] == struct.pack("!I", 4)  # GSO on, FAIL_OPEN off ...
    assert a[nq.NFQA_CFG_MASK] == struct.pack("!I", 5)  # ... and both in the mask


def test_verdict_message_layouts() -> None:
    m = nq.verdict_message(2, 1000, nq.Verdict.ACCEPT)
    [(mtype, _, seq, body)] = split_msgs(m)
    assert mtype == nq.MSG_VERDICT and len(m) == 32 and seq == 1000
    assert struct.unpack("!H", body[2:4])[0] == 2
    assert attrs(body) == {nq.NFQA_VERDICT_HDR: struct.pack("!II", 1, 1000)}

    m = nq.verdict_message(2, 77, nq.Verdict.DROP, mark=0xABC, batch=True)
    [(mtype, _, _, body)] = split_msgs(m)
    assert mtype == nq.MSG_VERDICT_BATCH
    assert attrs(body) == {
        nq.NFQA_VERDICT_HDR: struct.pack("!II", 0, 77),
        nq.NFQA_MARK: struct.pack("!I", 0xABC),
    }

    payload = b"x" * 41
    head = nq.verdict_message(2, 5, nq.Verdict.ACCEPT, payload_len=len(payload))
    full = head + payload + b"\0" * nq.payload_padding(len(payload))
    assert NLMSG.unpack_from(full)[0] == len(full) and len(full) % 4 == 0
    [(_, _, _, body)] = split_msgs(full)
    assert attrs(body)[nq.NFQA_PAYLOAD] == payload
    with pytest.raises(ValueError):
        nq.verdict_message(2, 5, 1, payload_len=nq.MAX_PAYLOAD + 1)
    with pytest.raises(ValueError):
        nq.verdict_message(2, 5, 1, batch=True, payload_len=3)


# --- parsing -----------------------------------------------------------------------------


def test_parse_several_packets_per_buffer() -> None:
    buf = (
        packet_msg(1, b"A" * 9, mark=5, skb_info=nq.NFQA_SKB_CSUMNOTREADY | nq.NFQA_SKB_GSO)
        + packet_msg(2, b"B" * 20, hook=3)
        + packet_msg(3, b"C" * 10, skb_info=nq.NFQA_SKB_CSUM_NOTVERIFIED, cap_len=1000)
    )
    pkts, errs = nq.parse_messages(buf)
    assert errs == []
    assert [p.id for p in pkts] == [1, 2, 3]
    p1, p2, p3 = pkts
    assert p1.payload == b"A" * 9 and p1.mark == 5 and p1.hook == 1 and p1.indev == 7
    assert p1.csum_partial and p1.gso and not p1.truncated
    assert p2.hook == nq.HOOK_LOCAL_OUT and not p2.csum_partial and not p2.gso and p2.mark == 0
    assert p3.csum_not_verified and p3.truncated and p3.cap_len == 1000
    # parsing a bytearray/memoryview prefix works the same
    ba = bytearray(buf) + bytearray(100)
    assert nq.parse_messages(memoryview(ba), len(buf))[0] == pkts


def test_parse_errors_and_acks() -> None:
    pkts, errs = nq.parse_messages(error_msg(4, 0) + error_msg(9, errno.ENOENT))
    assert pkts == []
    assert errs == [
        nq.ParsedError(4, 0, None, nq.MSG_VERDICT),
        nq.ParsedError(9, errno.ENOENT, None, nq.MSG_VERDICT),
    ]


def test_parse_rejects_garbage() -> None:
    good = packet_msg(1, b"x")
    with pytest.raises(RemoteProtocolError):
        nq.parse_messages(good + b"\xff")
    bad_len = bytearray(good)
    struct.pack_into("=I", bad_len, 0, len(good) + 100)
    with pytest.raises(RemoteProtocolError):
        nq.parse_messages(bytes(bad_len))
    no_hdr = nq.nfq_message(nq.MSG_PACKET, 1, nq.attr(nq.NFQA_PAYLOAD, b"x"), flags=0)
    with pytest.raises(RemoteProtocolError):
        nq.parse_messages(no_hdr)


# --- verdict batching against a fake socket ---------------------------------------------


class FakeSock:
    def __init__(self) -> None:
        self.inbox: list[bytes] = []
        self.sent: list[bytes] = []

    def recv_into(self, buf: bytearray) -> int:
        if not self.inbox:
            raise BlockingIOError
        data = self.inbox.pop(0)
        if isinstance(data, OSError):
            raise data
        buf[: len(data)] = data
        return len(data)

    def sendmsg(self, bufs: list[Any]) -> int:
        data = b"".join(bytes(b) for b in bufs)
        self.sent.append(data)
        return len(data)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def make_queue(ids: list[int]) -> tuple[nq.Queue, FakeSock]:
    s = FakeSock()
    q = nq.Queue(s, 9)  # type: ignore[arg-type]
    s.inbox = [packet_msg(i, bytes([i % 256]) * 40) for i in ids]
    got = q.receive()
    assert [p.id for p in got] == ids
    return q, s


def decode_sent(s: FakeSock) -> list[tuple[str, int, int, dict[int, bytes]]]:
    out = []
    for data in s.sent:
        for mtype, _, _, body in split_msgs(data):
            a = attrs(body)
            verdict, pid = struct.unpack("!II", a[nq.NFQA_VERDICT_HDR])
            kind = "batch" if mtype == nq.MSG_VERDICT_BATCH else "one"
            out.append((kind, verdict, pid, a))
    return out


def test_flush_batches_runs() -> None:
    q, s = make_queue([1, 2, 3, 4, 5, 6, 7])
    for i in (1, 2, 3):
        q.accept(i)
    q.accept(4, payload=b"new")
    q.drop(5)
    q.drop(6)
    q.accept(7, mark=0x10)
    q.flush()
    assert len(s.sent) == 1  # one sendmsg for the whole batch
    got = [(k, v, i) for k, v, i, _ in decode_sent(s)]
    assert got == [("batch", 1, 3), ("one", 1, 4), ("batch", 0, 6), ("one", 1, 7)]
    sent = decode_sent(s)
    assert sent[1][3][nq.NFQA_PAYLOAD] == b"new"
    assert sent[3][3][nq.NFQA_MARK] == struct.pack("!I", 0x10)
    assert q.outstanding == 0 and q.stats.verdicts == 7
    assert q.stats.batch_msgs == 2 and q.stats.payload_msgs == 1


def test_held_packet_is_never_covered_by_a_batch() -> None:
    q, s = make_queue([10, 11, 12, 13, 14])
    q.accept(10)
    q.accept(11)
    # 12 is held by the caller
    q.accept(13)
    q.accept(14)
    q.flush()
    got = [(k, v, i) for k, v, i, _ in decode_sent(s)]
    assert got == [("batch", 1, 11), ("one", 1, 13), ("one", 1, 14)]
    assert q.outstanding == 1
    s.sent.clear()
    # later packets, then the held one is released: batch again from the head
    s.inbox = [packet_msg(15, b"y"), packet_msg(16, b"z")]
    assert [p.id for p in q.receive()] == [15, 16]
    q.accept(16)
    q.drop(12)
    q.accept(15)
    q.flush()
    got = [(k, v, i) for k, v, i, _ in decode_sent(s)]
    assert got == [("one", 0, 12), ("batch", 1, 16)]
    assert q.outstanding == 0


def test_verdict_misuse_is_a_local_error() -> None:
    q, _ = make_queue([1])
    with pytest.raises(LocalProtocolError):
        q.accept(99)
    q.accept(1)
    with pytest.raises(LocalProtocolError):
        q.drop(1)
    q.flush()
    with pytest.raises(LocalProtocolError):
        q.accept(1)


def test_receive_counts_enobufs_and_raises_async_errors() -> None:
    q, s = make_queue([1])
    s.inbox = [OSError(errno.ENOBUFS, "nobufs"), packet_msg(2, b"a")]  # type: ignore[list-item]
    assert [p.id for p in q.receive()] == [2]
    assert q.stats.enobufs == 1
    s.inbox = [packet_msg(3, b"b") + error_msg(1, errno.ENOENT)]
    with pytest.raises(nq.NetlinkError, match="packet 1 rejected") as ei:
        q.receive()
    assert ei.value.errno == errno.ENOENT
    assert [p.id for p in q.receive()] == [3]  # kept, not lost
    assert q.stats.errors == [(errno.ENOENT, 1)]


def test_big_flush_is_chunked() -> None:
    ids = list(range(1, 41))
    q, s = make_queue(ids)
    big = bytes(60000)
    for i in ids:
        q.accept(i, payload=big)
    q.flush()
    assert len(s.sent) > 1 and all(len(d) <= (1 << 20) + 61000 for d in s.sent)
    assert [i for _, _, i, _ in decode_sent(s)] == ids
