"""Recovery planning (SYN, delta_seq, refill) and the outstream check (invariant 5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftcp.core import seq
from ftcp.core.records import (
    Close,
    CloseHow,
    ConnectionLog,
    Handshake,
    ReadKind,
    ReadResult,
    SynOptions,
    WriteMark,
)
from ftcp.core.replay import OutstreamCheck, outstream_crc, plan_recovery, recovery_order
from ftcp.errors import LocalProtocolError

u32 = st.integers(0, seq.MASK)
C_OPTS = SynOptions(mss=1460, wscale=7, sack_ok=True, ts_val=1000, ts_ecr=0)
S_OPTS = SynOptions(mss=1400, wscale=2, sack_ok=True, ts_val=5000, ts_ecr=1000)


def make_log(
    c_isn: int = 1000,
    s_isn: int = 9000,
    instream: bytes = b"hello world",
    acked: int = 0,
    reads=(),
    c_opts: SynOptions = C_OPTS,
    s_opts: SynOptions = S_OPTS,
    accept_order: int = 0,
    **kw,
) -> ConnectionLog:
    hs = Handshake(1, accept_order, "10.0.0.1", 5555, "10.0.0.2", 80, c_isn, s_isn, c_opts, s_opts)
    return ConnectionLog(
        handshake=hs,
        stable_seq=seq.add(c_isn, 1 + len(instream)),
        server_seq=seq.add(s_isn, 1 + acked),
        instream=instream,
        client_fin=kw.pop("client_fin", False),
        reads=list(reads),
        client_window=kw.pop("client_window", 300),
        client_ts_val=kw.pop("client_ts_val", 1234),
        **kw,
    )


# ------------------------------------------------------------------------- mapping


@given(u32, u32, u32, st.integers(0, 1 << 30), st.integers(0, 5000))
def test_delta_seq_maps_every_byte(c_isn: int, s_isn: int, n_isn: int, acked: int, j: int) -> None:
    """Kernel byte j (view n_isn + 1 + j) is output byte A + j (client view s_isn + 1 + A + j)."""
    p = plan_recovery(make_log(c_isn=c_isn, s_isn=s_isn, acked=acked))
    assert p.discard == acked
    delta = p.delta_seq(n_isn)
    kernel_view = seq.add(n_isn, 1 + j)
    assert seq.add(kernel_view, delta) == seq.add(s_isn, 1 + acked + j)
    assert seq.add(seq.add(s_isn, 1 + acked + j), -delta) == kernel_view


def test_server_seq_hint_and_fin_acked() -> None:
    log = make_log(acked=5, write_mark=WriteMark(1, 10, 0))
    assert plan_recovery(log, server_seq_hint=seq.add(9000, 8)).discard == 7
    assert plan_recovery(log, server_seq_hint=seq.add(9000, 3)).discard == 5
    # the client acked all 10 bytes and our FIN: the FIN is not an output byte
    log = make_log(acked=11, write_mark=WriteMark(1, 10, 0), closes=[Close(1, CloseHow.SHUT_WR)])
    p = plan_recovery(log)
    assert p.discard == 10 and p.fin_acked


def test_ts_offset_never_runs_backwards() -> None:
    p = plan_recovery(make_log(), last_ts_out=seq.MASK - 1, ts_elapsed=0.004)
    assert p.ts_floor == seq.add(seq.MASK - 1, 5)
    off = p.ts_offset(n_tsval=77, floor=p.ts_floor)
    assert seq.add(77, off) == p.ts_floor
    assert seq.gt(seq.add(77 + 1000, off), seq.MASK - 1)
    off = p.ts_offset(n_tsval=77, floor=None)  # unknown: a quarter of the space ahead
    assert seq.sub(seq.add(77, off), S_OPTS.ts_val) == 1 << 30


def test_plan_rejects_inconsistent_logs() -> None:
    log = make_log()
    log.instream = b"short"
    with pytest.raises(LocalProtocolError, match="instream"):
        plan_recovery(log)
    with pytest.raises(LocalProtocolError, match="reads consumed"):
        plan_recovery(make_log(reads=[ReadResult(1, 0, ReadKind.DATA, 12)]))
    with pytest.raises(LocalProtocolError, match="before s_isn"):
        plan_recovery(make_log(acked=-3))


def test_recovery_order() -> None:
    logs = [make_log(accept_order=n) for n in (3, 1, 2)]
    assert [lg.handshake.accept_order for lg in recovery_order(logs)] == [1, 2, 3]


# ------------------------------------------------------ invariant 5: the outstream check


@given(
    st.binary(min_size=1, max_size=300),
    st.lists(st.integers(1, 60), max_size=12),
    st.lists(st.integers(1, 60), max_size=12),
    st.integers(-1, 299),
)
def test_outstream_check_compares_equal_prefixes(
    stream: bytes, cuts_before, cuts_after, flip: int
) -> None:
    """Points noted before the crash and checked in replay, at any (different) write
    boundaries: a divergence is found exactly when a compared prefix differs, at the
    first such point, once."""

    def points(data: bytes, cuts) -> list[tuple[int, int]]:
        out, pos, crc = [], 0, 0
        for n in [*cuts, len(data)]:
            chunk = data[pos : pos + n]
            crc = outstream_crc(chunk, crc)
            pos += len(chunk)
            out.append((pos, crc))
        return out

    regenerated = bytearray(stream)
    if 0 <= flip < len(stream):
        regenerated[flip] ^= 0x01
    check = OutstreamCheck()
    before = points(stream, cuts_before)
    for total, crc in before:
        check.note(7, total, crc)
    noted = {t for t, _ in before}
    found = [check.check(7, t, c, "replay") for t, c in points(bytes(regenerated), cuts_after)]
    hits = [d for d in found if d is not None]
    compared = sorted(t for t, _ in points(stream, cuts_after) if t in noted)
    differs = [t for t in compared if t > flip >= 0]
    assert len(hits) == (1 if differs else 0)
    if differs:
        assert hits[0].conn_id == 7 and hits[0].offset == differs[0]
    check.new_recovery()  # reported again in the next recovery
    if differs:
        assert check.check(7, differs[0], outstream_crc(bytes(regenerated[: differs[0]])), "x")


def test_outstream_crc_is_castagnoli() -> None:
    assert outstream_crc(b"123456789") == 0xE3069283
    assert outstream_crc(b"56789", outstream_crc(b"1234")) == 0xE3069283
    assert outstream_crc(b"") == 0


def test_a_forgotten_connection_is_not_checked() -> None:
    check = OutstreamCheck()
    check.note(7, 3, outstream_crc(b"abc"))
    assert check.check(7, 3, outstream_crc(b"abd"), "replay") is not None
    check.forget(7)
    assert check.check(7, 3, outstream_crc(b"abd"), "replay") is None


def test_unreplayable_read_is_a_divergence() -> None:
    d = OutstreamCheck().unreplayable(7, 4, "SHORT_BUFFER, 10")
    assert (d.conn_id, d.offset) == (7, -1) and "read 4" in d.detail


def test_plan_discard_is_the_acknowledged_output() -> None:
    p = plan_recovery(make_log(acked=4))
    assert p.discard == 4


def test_a_takeover_starts_tsvals_past_the_clients_latest_echo() -> None:
    """On a host that never sent the client anything, the TSval floor comes from the
    client's latest TSecr (what it had from the old server), not from the original
    SYN-ACK: a second takeover must not go back to the first one's clock."""
    from ftcp.core.replay import TS_ECHO_JUMP

    first = plan_recovery(make_log(client_ts_ecr=seq.MASK - 10))
    assert first.ts_floor == seq.add(seq.MASK - 10, TS_ECHO_JUMP)
    # the first new host ran a while; the client echoed its TSvals
    echo = seq.add(first.ts_floor, 5000)
    second = plan_recovery(make_log(client_ts_ecr=echo))
    assert second.ts_floor is not None and seq.gt(second.ts_floor, echo)
    assert seq.gt(second.ts_floor, first.ts_floor)
    # this host's own last TSval, when it knows it, decides
    assert plan_recovery(make_log(client_ts_ecr=echo), last_ts_out=7).ts_floor == 8
