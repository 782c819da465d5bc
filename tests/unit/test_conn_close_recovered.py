"""The end of a recovered connection (handshake restore: `delta_seq != 0`).

The sequence the crash suite met (socat, `--restore handshake`): the client's FIN
is logged and acked, the application shuts down, the server's FIN reaches the
client and the client (now in TIME-WAIT) acks it; that ack waits in SSW longer
than the kernel's loss probe, so the kernel sends its FIN again and the client's
TIME-WAIT acks again. The first ack then closes the kernel socket, and the second
one finds no socket: the kernel answers it with a bare RST (`seq` = the ack). That
RST tells the client nothing and must not reach it (nor start a recovery, when the
application has not reported its close yet); everything else stays translated.
"""

from __future__ import annotations

import itertools

import pytest

from ftcp.core import seq
from ftcp.core.conn import Connection, State
from ftcp.core.events import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    ClientSegment,
    CloseReported,
    Deliver,
    Drop,
    Log,
    LoggerAck,
    ProcessDied,
    ReadReported,
    Rebuild,
    ReplayDone,
    ServerSegment,
    StartRecovery,
)
from ftcp.core.records import (
    CloseHow,
    ConnectionLog,
    Finished,
    Handshake,
    ReadKind,
    ReadResult,
    SynOptions,
)
from ftcp.core.replay import plan_recovery

_ids = itertools.count(1)

C_ISN, S_ISN, N_ISN = 1000, 9000, 123456
C_OPTS = SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1000, ts_ecr=0)
S_OPTS = SynOptions(mss=1400, wscale=2, sack_ok=True, ts_val=5000, ts_ecr=1000)


def cseg(sq: int, ack: int, flags: int = ACK, payload: bytes = b"", now: float = 0.0):
    return ClientSegment(next(_ids), now, sq, ack, flags, 500, payload=payload)


def sseg(sq: int, ack: int, flags: int = ACK, plen: int = 0, now: float = 0.0, window: int = 100):
    return ServerSegment(next(_ids), now, sq, ack, flags, window, payload_len=plen)


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def out_seq(d: Deliver, s: ServerSegment) -> int:
    return s.seq if d.rewrite is None or d.rewrite.seq is None else d.rewrite.seq


def in_ack(d: Deliver, s: ClientSegment) -> int:
    return s.ack if d.rewrite is None or d.rewrite.ack is None else d.rewrite.ack


def recovered() -> Connection:
    """Crashed after "hello world" in and 6 bytes out (acked), rebuilt by handshake with
    a new ISN, refilled and replayed: live again with `delta_seq != 0`."""
    c = Connection(7, client=("10.0.0.1", 5555), server=("10.0.0.2", 80))
    c.handle(cseg(C_ISN, 0, SYN))
    c.handle(ServerSegment(next(_ids), 0.0, S_ISN, C_ISN + 1, SYN | ACK, 65535, syn_opts=S_OPTS))
    c.handle(LoggerAck(0.0, C_ISN + 1, handshake=True))
    c.handle(cseg(C_ISN + 1, S_ISN + 1))
    c.handle(cseg(C_ISN + 1, S_ISN + 1, payload=b"hello world"))
    c.handle(LoggerAck(0.1, C_ISN + 12))
    c.handle(sseg(S_ISN + 1, C_ISN + 12, plen=6, now=0.2))
    c.handle(cseg(C_ISN + 12, S_ISN + 7))  # the client acks the 6 bytes
    c.handle(ProcessDied(1.0))
    assert c.state is State.CRASHED
    hs = Handshake(7, 0, "a", 1, "b", 2, C_ISN, S_ISN, c.client_opts, c.server_opts)
    log = ConnectionLog(
        handshake=hs,
        stable_seq=C_ISN + 12,
        server_seq=S_ISN + 7,
        instream=b"hello world",
        client_fin=False,
        reads=[ReadResult(7, 0, ReadKind.DATA, 11)],
        client_window=500,
    )
    plan = plan_recovery(log, **c.recovery_hints(2.0))
    c.handle(Rebuild(2.0, plan))
    c.handle(sseg(N_ISN, C_ISN + 1, SYN | ACK, now=2.1))  # refill: "hello world"
    c.handle(sseg(N_ISN + 1, C_ISN + 12, now=2.2))  # all refilled
    c.handle(ReplayDone(2.3))
    assert c.state is State.ESTABLISHED and not c.refilling
    assert c.delta_seq == (S_ISN + 6 - N_ISN) & seq.MASK != 0
    return c


def closed_both_ways(c: Connection) -> tuple[int, int]:
    """Client FIN (logged, acked), app shuts down, server data+FIN out and acked by the
    client. Returns (kernel view, client view) of the end of the server's FIN."""
    k1 = N_ISN + 1
    fin_c = cseg(C_ISN + 12, S_ISN + 7, ACK | FIN, now=3.0)
    (d,) = of(c.handle(fin_c), Deliver)
    assert in_ack(d, fin_c) == k1
    c.handle(LoggerAck(3.1, C_ISN + 12, fin=True))
    assert c.ack_limit == C_ISN + 13
    c.handle(sseg(k1, C_ISN + 13, now=3.2))  # the kernel acks the client's FIN
    assert c.delivered_ack == C_ISN + 13
    c.handle(ReadReported(3.3, ReadResult(7, 1, ReadKind.EOF)))
    assert not of(c.handle(CloseReported(3.5, CloseHow.SHUT_WR)), StartRecovery)
    data_fin = sseg(k1, C_ISN + 13, ACK | PSH | FIN, plen=5, now=3.6)
    (d,) = of(c.handle(data_fin), Deliver)
    assert out_seq(d, data_fin) == S_ISN + 7  # translated
    k_end, c_end = k1 + 6, S_ISN + 13
    ack1 = cseg(C_ISN + 13, c_end, now=3.7)  # the client (TIME-WAIT now) acks the FIN
    (d,) = of(c.handle(ack1), Deliver)
    assert in_ack(d, ack1) == k_end  # translated to the kernel's view
    return k_end, c_end


@pytest.mark.parametrize("app_closed", [True, False])
def test_late_kernel_rst_after_both_fins_is_dropped(app_closed: bool) -> None:
    c = recovered()
    k_end, c_end = closed_both_ways(c)
    if app_closed:
        c.handle(CloseReported(3.75, CloseHow.CLOSE))
    # the ack waited in SSW past the kernel's loss probe: the FIN again, translated
    tlp = sseg(k_end - 1, C_ISN + 13, ACK | FIN, now=3.8)
    (d,) = of(c.handle(tlp), Deliver)
    assert out_seq(d, tlp) == c_end - 1
    ack2 = cseg(C_ISN + 13, c_end, now=3.81)  # the client's TIME-WAIT acks it again
    (d,) = of(c.handle(ack2), Deliver)
    assert in_ack(d, ack2) == k_end
    # the first ack closed the kernel socket: the second one gets a bare RST
    rst = sseg(k_end, 0, RST, now=3.82)
    acts = c.handle(rst)
    assert not of(acts, Deliver) and not of(acts, StartRecovery)
    assert [a.ident for a in of(acts, Drop)] == [rst.ident]
    assert Log(Finished(7)) in acts
    assert c.state is State.CLOSED
    # nothing of this connection reaches the client any more but translated segments
    again = sseg(k_end, 0, RST, now=3.83)
    acts = c.handle(again)
    assert [a.ident for a in of(acts, Drop)] == [again.ident] and not of(acts, Deliver)
    if not app_closed:  # the application's close comes later: no recovery, no error
        assert not of(c.handle(CloseReported(3.9, CloseHow.CLOSE)), StartRecovery)
        assert c.handle(ProcessDied(4.0)) == [] and c.state is State.CLOSED


def test_rst_after_close_still_passes_translated_while_the_client_may_send() -> None:
    """The server's FIN is acked but the client has not closed: an RST after the
    application's close is the real answer to the client's data and goes out
    (translated), as it would without ftcp."""
    c = recovered()
    k1 = N_ISN + 1
    c.handle(ReadReported(3.0, ReadResult(7, 1, ReadKind.EAGAIN)))
    assert not of(c.handle(CloseReported(3.2, CloseHow.CLOSE)), StartRecovery)
    c.handle(sseg(k1, C_ISN + 12, ACK | FIN, now=3.3))
    c.handle(cseg(C_ISN + 12, S_ISN + 8, now=3.4))  # the client acks the FIN
    c.handle(cseg(C_ISN + 12, S_ISN + 8, payload=b"late", now=3.5))
    rst = sseg(k1 + 1, 0, RST, now=3.6)
    acts = c.handle(rst)
    (d,) = of(acts, Deliver)
    assert d.ident == rst.ident and out_seq(d, rst) == S_ISN + 8
    assert not of(acts, StartRecovery) and c.state is State.CLOSED


def test_rst_without_close_before_the_client_fin_still_starts_recovery() -> None:
    """Invariant 4 is untouched: with the client's FIN not in, a RST the application
    did not ask for is a crash."""
    c = recovered()
    c.handle(ReadReported(3.0, ReadResult(7, 1, ReadKind.EAGAIN)))
    assert not of(c.handle(CloseReported(3.2, CloseHow.SHUT_WR)), StartRecovery)
    c.handle(sseg(N_ISN + 1, C_ISN + 12, ACK | FIN, now=3.3))
    c.handle(cseg(C_ISN + 12, S_ISN + 8, now=3.4))
    rst = sseg(N_ISN + 2, 0, RST, now=3.5)
    acts = c.handle(rst)
    assert of(acts, StartRecovery) and not of(acts, Deliver)
    assert c.state is State.CRASHED
