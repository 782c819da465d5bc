"""The SSW engine against a fake queue (no root): verdicts, holds, logging, fail-closed."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner

from ftcp.cli import main
from ftcp.core import wire
from ftcp.core.packet import ACK, PSH, SYN, TcpPacket, build_tcp, encode_options
from ftcp.core.records import Handshake, InSegment, ReadKind, ReadResult
from ftcp.ssw.engine import NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, Engine
from ftcp.ssw.nfqueue import QueuedPacket

C, S, CP, SP = "10.0.0.1", "10.0.0.2", 40000, 8080


class FakeQueue:
    def __init__(self) -> None:
        self.verdicts: dict[int, tuple[str, bytes | None]] = {}
        self.batch: list[QueuedPacket] = []

    def fileno(self) -> int:
        return 0

    def receive(self) -> list[QueuedPacket]:
        b, self.batch = self.batch, []
        return b

    def accept(self, i: int, *, payload: bytes | None = None) -> None:
        assert i not in self.verdicts
        self.verdicts[i] = ("accept", payload)

    def drop(self, i: int) -> None:
        assert i not in self.verdicts
        self.verdicts[i] = ("drop", None)

    def flush(self) -> None:
        pass


def qp(i: int, raw: bytes, hook: int) -> QueuedPacket:
    return QueuedPacket(i, hook, 0x0800, raw, 0, 0, 0, 0, len(raw))


def run_engine(fn: Any) -> None:
    async def go() -> None:
        q = FakeQueue()
        sent: list[list[Any]] = []
        eng = Engine(port=SP, queue=q, injector=None, ack_strategy="lazy",
                     send_records=sent.append, conn_id_base=0)  # type: ignore[arg-type]  # fmt: skip
        eng._loop = asyncio.get_running_loop()
        await fn(eng, q, sent)

    asyncio.run(go())


def test_handshake_held_until_logged_then_data_logged_and_acks_clamped() -> None:
    async def body(eng: Engine, q: FakeQueue, sent: list[list[Any]]) -> None:
        syn = build_tcp(C, S, CP, SP, 1000, 0, SYN, 64240, encode_options(mss=1460, wscale=7))
        synack = build_tcp(S, C, SP, CP, 5000, 1001, SYN | ACK, 65160,
                           encode_options(mss=1460, wscale=7))  # fmt: skip
        q.batch = [qp(1, syn, NF_INET_LOCAL_IN), qp(2, synack, NF_INET_LOCAL_OUT)]
        eng._on_queue()
        assert q.verdicts == {1: ("accept", None)}  # SYN-ACK held
        assert isinstance(sent[0][0], Handshake)
        cid = sent[0][0].conn_id
        eng.on_logger_acks([wire.HandshakeAck(cid)])
        assert q.verdicts[2] == ("accept", None)
        # client data, then the server's pure ack for it: held (Lazy) until logged
        data = build_tcp(C, S, CP, SP, 1001, 5001, PSH | ACK, 502, b"", b"x" * 100)
        ack = build_tcp(S, C, SP, CP, 5001, 1101, ACK, 509)
        q.batch = [qp(3, data, NF_INET_LOCAL_IN), qp(4, ack, NF_INET_LOCAL_OUT)]
        eng._on_queue()
        assert q.verdicts[3] == ("accept", None) and 4 not in q.verdicts
        seg = sent[-1][0]
        assert isinstance(seg, InSegment) and seg.payload == b"x" * 100
        eng.on_logger_acks([wire.StreamAck(cid, 1101, 1101)])
        assert q.verdicts[4] == ("accept", None)
        # a server data segment acking unlogged client data leaves clamped
        data2 = build_tcp(C, S, CP, SP, 1101, 5001, PSH | ACK, 502, b"", b"y" * 50)
        out = build_tcp(S, C, SP, CP, 5001, 1151, PSH | ACK, 509, b"", b"z" * 10)
        q.batch = [qp(5, data2, NF_INET_LOCAL_IN), qp(6, out, NF_INET_LOCAL_OUT)]
        eng._on_queue()
        verdict, payload = q.verdicts[6]
        assert verdict == "accept" and payload is not None
        p = TcpPacket.parse(payload)
        assert p.ack == 1101 and p.tcp_checksum_ok()

    run_engine(body)


def test_unknown_and_garbage_packets_are_dropped() -> None:
    async def body(eng: Engine, q: FakeQueue, sent: list[list[Any]]) -> None:
        stray = build_tcp(C, S, CP, SP, 1, 2, ACK, 100)
        q.batch = [qp(1, stray, NF_INET_LOCAL_IN), qp(2, b"\x45garbage", NF_INET_LOCAL_IN)]
        eng._on_queue()
        assert q.verdicts == {1: ("drop", None), 2: ("drop", None)}
        assert eng.stats.unknown == 1 and eng.stats.parse_errors == 1

    run_engine(body)


def test_status_without_supervisor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["status", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0 and "no ftcp supervisor running" in r.output


def test_run_needs_a_command_and_a_logger() -> None:
    r = CliRunner().invoke(main, ["run", "--port", "80", "--insecure", "--", "true"])
    assert r.exit_code == 2 and "--logger" in r.output


def _established(eng: Engine, q: FakeQueue, sent: list[list[Any]], port: int, base: int) -> int:
    syn = build_tcp(C, S, port, SP, 1000, 0, SYN, 64240, encode_options(mss=1460, wscale=7))
    synack = build_tcp(S, C, SP, port, 5000, 1001, SYN | ACK, 65160,
                       encode_options(mss=1460, wscale=7))  # fmt: skip
    q.batch = [qp(base, syn, NF_INET_LOCAL_IN), qp(base + 1, synack, NF_INET_LOCAL_OUT)]
    eng._on_queue()
    cid = sent[-1][0].conn_id
    eng.on_logger_acks([wire.HandshakeAck(cid)])
    return cid


def test_timers_without_scanning_every_connection() -> None:
    """Core timers (a crashed conn's closed-window probes) and the linger of finished
    conns are armed from their own tables; the conns that have none cost nothing."""
    from ftcp.core.events import ProcessDied

    async def body(eng: Engine, q: FakeQueue, sent: list[list[Any]]) -> None:
        eng.linger = 0.05
        eng.injector = type("Inj", (), {"send": lambda self, raw: None})()
        ids = [_established(eng, q, sent, CP + i, 10 * i + 1) for i in range(3)]
        assert eng._timer is None  # established, nothing to wait for
        crashed = eng.by_id[ids[0]]
        eng.feed(crashed, ProcessDied(eng._now()))
        probe = crashed.core.get_timer()
        assert probe is not None and eng._timer_at == probe
        eng._finish(eng.by_id[ids[1]], eng._now())  # also ends the conn's core timer
        gone = eng.by_id[ids[1]]
        assert eng._timer_at is not None and eng._timer_at <= gone.finished_at + eng.linger
        for _ in range(200):  # the timer fires by itself: the finished conn is forgotten
            if ids[1] not in eng.by_id:
                break
            await asyncio.sleep(0.01)
        assert ids[1] not in eng.by_id and gone.key not in eng.conns
        assert ids[0] in eng.by_id and ids[2] in eng.by_id
        assert eng.stats.fabricated >= 1  # the crashed conn's probes were sent
        eng._finish(crashed, eng._now())
        for _ in range(200):
            if ids[0] not in eng.by_id:
                break
            await asyncio.sleep(0.01)
        assert ids[0] not in eng.by_id and not eng._core_timers and not eng._lingering
        assert eng._timer is None  # only the live, timer-less conn is left

    run_engine(body)


def test_reads_released_to_the_processes_that_read_them() -> None:
    """Read results are logged in the order the processes reported them; each
    process's released count moves once the logger has its reads and every earlier one
    (an unprotected read gets no order but keeps its place)."""

    async def body(eng: Engine, q: FakeQueue, sent: list[list[Any]]) -> None:
        released: list[tuple[int, int]] = []
        eng.publish = lambda source, count: released.append((source, count))
        a, b = (_established(eng, q, sent, CP + i, 10 * i + 1) for i in range(2))
        eng.on_read(1, 1, a, ReadKind.DATA, 10)
        eng.on_read(2, 1, b, ReadKind.DATA, 20)
        eng.on_read(1, 2, a, ReadKind.DATA, 30)
        eng.on_read(2, 2, 999, ReadKind.DATA, 5)  # no such connection: not logged
        eng.send_logs()
        reads = [r for batch in sent for r in batch if isinstance(r, ReadResult)]
        got = [(r.conn_id, r.order, r.length) for r in reads]
        assert got == [(a, 0, 10), (b, 1, 20), (a, 2, 30)]
        assert eng.commit.unstable(a) == 2 and released == []
        eng.on_logger_acks([wire.ReadsAck(2)])  # orders 0, 1: a's first read, b's read
        assert released == [(1, 1), (2, 1)] and eng.commit.unstable(a) == 1
        eng.on_logger_acks([wire.ReadsAck(3)])  # the unprotected read follows at once
        assert released[2:] == [(1, 2), (2, 2)] and eng.commit.unstable(a) == 0

    run_engine(body)
