"""`supervisor.boost_loop`: the event loop's thread runs ahead of the application."""

from __future__ import annotations

import os
import threading

import pytest

from ftcp.supervisor import boost_loop


def _in_thread(levels: int) -> tuple[int | None, int, int]:
    """boost_loop(levels) in a thread of its own: (its result, nice before, nice after)."""
    out: list[tuple[int | None, int, int]] = []

    def body() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        got = boost_loop(levels)
        out.append((got, before, os.getpriority(os.PRIO_PROCESS, tid)))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out[0]


def test_zero_leaves_the_priority_alone() -> None:
    assert _in_thread(0)[1:] == (os.getpriority(os.PRIO_PROCESS, 0),) * 2
    assert _in_thread(0)[0] is None


def test_only_the_calling_thread_moves() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    got, before, after = _in_thread(3)
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # this thread is untouched
    if os.geteuid() == 0:
        assert got == after == max(-20, before - 3)
    else:  # no CAP_SYS_NICE: refused, said, and nothing changed
        assert got is None and after == before


def test_refused_is_said_and_harmless(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "setpriority", refuse)
    assert boost_loop(10) is None
    err = capsys.readouterr().err
    assert "cannot raise the supervisor's CPU priority (Permission denied)" in err
    assert "--boost 0" in err
