"""How one recovery's timestamps become Table V's restart and replay (`Timing`)."""

from __future__ import annotations

import pytest

from ftcp.recovery import Timing


def _t(**kw: float) -> Timing:
    t = Timing(died=0.0, detected=0.0, synced=0.002, planned=0.003, spawned=0.001)
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def test_a_small_log_is_in_before_the_application_listens() -> None:
    # transfer 2 ms (hidden behind the start-up), rebuilt 1 ms after listening, of which
    # 0.4 ms filling the receive queue; the last read replayed 1.5 ms later
    t = _t(fetched=0.004, plan_s=0.0002, listening=0.080, fill_s=0.0004)
    t.rebuilt[1] = 0.081
    t.replayed[1] = 0.0825
    d = t.as_dict()
    assert d["restart_s"] == pytest.approx(0.002 + 0.0002 + 0.001 - 0.0004)
    assert d["replay_s"] == pytest.approx(0.002 + 0.0004 + 0.0015)
    assert d["fetch_s"] == pytest.approx(0.002)


def test_a_large_log_streams_into_the_rebuild() -> None:
    # rebuilt at 90 ms (30 ms of queue fill while the transfer ran on), the transfer
    # ends at 4 s, the last read 0.2 s later: the overlap is counted once
    t = _t(fetched=4.0, listening=0.060, fill_s=0.030)
    t.rebuilt[1] = 0.090
    t.replayed[1] = 4.2
    d = t.as_dict()
    assert d["restart_s"] == pytest.approx(0.002 + 0.030 - 0.030)
    assert d["replay_s"] == pytest.approx(4.0 - 0.002 + 0.2)


def test_no_figures_before_the_end() -> None:
    d = _t().as_dict()
    assert d["restart_s"] is None and d["replay_s"] is None and d["fetch_s"] is None
