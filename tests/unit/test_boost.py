"""`recovery.Boost`: the event loop's thread runs ahead of the application while a
recovery runs, and goes back to its own priority after."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ftcp.recovery import Boost


def _in_thread(body: Callable[[Callable[[], int]], Any]) -> Any:
    """body(nice) in a thread of its own (nice(): that thread's nice value)."""
    out: list[Any] = []

    def run() -> None:
        tid = threading.get_native_id()
        out.append(body(lambda: os.getpriority(os.PRIO_PROCESS, tid)))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def test_on_then_off_moves_only_the_calling_thread() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)

    def body(nice: Callable[[], int]) -> tuple[int, int | None, int, int | None, int, int]:
        b = Boost(3)
        before = nice()
        got = b.on()
        during = nice()
        again = b.on()  # a crash during the recovery: already boosted
        b.off()
        b.off()
        return before, got, during, again, nice(), os.getpriority(os.PRIO_PROCESS, 0)

    before, got, during, again, after, main = _in_thread(body)
    assert main == mine  # the test's own thread never moved
    assert after == before
    if os.geteuid() == 0:
        assert got == again == during == max(-20, before - 3)
    else:  # no CAP_SYS_NICE: refused, said once, nothing changed
        assert got is None and again is None and during == before


def test_zero_levels_is_off() -> None:
    def body(nice: Callable[[], int]) -> tuple[int | None, int, int]:
        before = nice()
        return Boost(0).on(), before, nice()

    got, before, after = _in_thread(body)
    assert got is None and after == before


def test_refused_is_said_once_and_harmless(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "setpriority", refuse)
    b = Boost(10)
    assert b.on() is None
    assert b.on() is None
    b.off()
    err = capsys.readouterr().err
    assert err.count("cannot raise the supervisor's CPU priority") == 1
    assert "(Permission denied)" in err and "--boost 0" in err
