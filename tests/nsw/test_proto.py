"""The shim <-> agent wire format (pure Python)."""

from __future__ import annotations

import socket
import zlib

import pytest

from ftcp.core.records import CloseHow, ReadKind
from ftcp.errors import RemoteProtocolError
from ftcp.nsw import proto
from ftcp.nsw.proto import How, Kind


def test_crc32c_known_vector() -> None:
    assert proto.crc32c(b"123456789") == 0xE3069283
    assert proto.crc32c(b"") == 0
    # Running: crc(a + b) == crc(b, crc(a))
    assert proto.crc32c(b"56789", proto.crc32c(b"1234")) == 0xE3069283
    assert proto.crc32c(b"123456789") != zlib.crc32(b"123456789")  # Castagnoli, not IEEE


def test_kinds_match_records() -> None:
    for k in ReadKind:
        assert Kind[k.name] == k
    for h in CloseHow:
        assert How[h.name] == h


def test_read_roundtrip() -> None:
    pkt = proto.read(7, 3, Kind.DATA, 100, wtotal=42, wcrc=0xDEADBEEF)
    assert len(pkt) == 48
    m = proto.decode(pkt)
    assert m == proto.Read(7, 3, Kind.DATA, 100, 42, 0xDEADBEEF, False)
    m = proto.decode(proto.read(7, 2, Kind.EAGAIN, replayed=True))
    assert isinstance(m, proto.Read) and m.replayed and m.seq == 2


def test_hello_close_accept() -> None:
    assert proto.decode(proto.hello(1234, 5)) == proto.Hello(proto.VERSION, 1234, 5)
    assert proto.decode(proto.close(9, How.SHUT_WR, 10, 11)) == proto.CloseMsg(
        9, How.SHUT_WR, 10, 11
    )
    body = proto.ACCEPT.pack(
        socket.AF_INET,
        8080,
        5555,
        0,
        socket.inet_aton("127.0.0.1") + bytes(12),
        socket.inet_aton("10.0.0.2") + bytes(12),
    )
    m = proto.decode(proto.HDR.pack(proto.Msg.ACCEPT, 0, 0) + body)
    assert m == proto.Accept(socket.AF_INET, ("127.0.0.1", 8080), ("10.0.0.2", 5555))


def test_agent_side_encoders() -> None:
    assert len(proto.hello_reply(1)) == 24
    assert len(proto.accept_reply(1, proto.Mode.REPLAY, 3, 4)) == 32
    assert len(proto.ack(1)) == 16
    entries = [(Kind.DATA, i) for i in range(proto.SCRIPT_CHUNK + 5)]
    pkts = proto.script_packets(entries)
    assert [len(p) for p in pkts] == [16 + 8 * proto.SCRIPT_CHUNK, 16 + 8 * 5]
    assert max(len(p) for p in pkts) <= proto.MAX_PACKET


@pytest.mark.parametrize(
    "pkt",
    [
        b"",
        b"\x01\x00",
        proto.HDR.pack(200, 0, 0),
        proto.HDR.pack(proto.Msg.READ, 0, 0) + bytes(8),
        proto.HDR.pack(proto.Msg.READ, 0, 0) + proto.READ.pack(1, 1, 0, 9, 0, 0, 0),
        proto.HDR.pack(proto.Msg.CLOSE, 0, 0) + proto.CLOSE.pack(1, 0, 9, 0),
    ],
)
def test_malformed_is_remote_error(pkt: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        proto.decode(pkt)


def test_forked_roundtrip_and_malformed() -> None:
    assert proto.decode(proto.forked(4321, [1, 2, 1 << 40])) == proto.Forked(4321, (1, 2, 1 << 40))
    assert proto.decode(proto.forked(7, [])) == proto.Forked(7, ())
    assert proto.decode(proto.hold(9)) == proto.Hold(9)
    good = proto.forked(4321, [1, 2])
    for bad in (
        good[:-1],  # truncated id
        good + bytes(8),  # more ids than counted
        good[:12],  # short header
        proto.forked(0, [1]),  # no such pid
        proto.forked(4321, list(range(proto.FORKED_CHUNK + 1))),  # over the chunk limit
    ):
        with pytest.raises(RemoteProtocolError):
            proto.decode(bad)
