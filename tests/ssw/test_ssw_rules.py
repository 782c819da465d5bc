"""iptables rules: argv generation (pure) and exact install/remove/cleanup (root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ssw_harness import NsPair

from ftcp.errors import UserError
from ftcp.ssw.rules import (
    PortRules,
    RuleSpec,
    cleanup_stale,
    protected_port,
    queue_rules,
    read_state,
)

# --- pure ------------------------------------------------------------------------------


def test_queue_rules_argv() -> None:
    inp, out = queue_rules(8080, in_queue=3, out_queue=4, ext_iface="eth0", mark=0x10, owner="x1")
    assert inp.argv("-I") == [
        "iptables", "-w", "-t", "filter", "-I", "INPUT", "1",
        "-p", "tcp", "-m", "tcp", "--dport", "8080",
        "-m", "mark", "!", "--mark", "0x10",
        "-m", "comment", "--comment", "ftcp:x1",
        "-j", "NFQUEUE", "--queue-num", "3",
    ]  # fmt: skip
    assert out.argv("-D") == [
        "iptables", "-w", "-t", "filter", "-D", "OUTPUT",
        "-o", "eth0", "-p", "tcp", "-m", "tcp", "--sport", "8080",
        "-m", "mark", "!", "--mark", "0x10",
        "-m", "comment", "--comment", "ftcp:x1",
        "-j", "NFQUEUE", "--queue-num", "4",
    ]  # fmt: skip
    assert "--queue-bypass" not in inp.spec + out.spec  # fail-closed
    assert out.argv("-C", iptables="iptables-legacy")[0] == "iptables-legacy"


def test_queue_rules_narrowing_and_mask() -> None:
    inp, out = queue_rules(
        80, in_queue=0, out_queue=1, ext_iface="veth0", mark=0x100, mark_mask=0xF00,
        owner="o", server_addr="10.0.0.2", in_iface="veth0",
    )  # fmt: skip
    assert inp.spec[:4] == ("-i", "veth0", "-d", "10.0.0.2/32")
    assert out.spec[:4] == ("-o", "veth0", "-s", "10.0.0.2/32")
    assert "0x100/0xf00" in inp.spec and "0x100/0xf00" in out.spec


@pytest.mark.parametrize(
    "kw",
    [
        {"port": 0},
        {"port": 70000},
        {"in_queue": 65536},
        {"ext_iface": ""},
        {"ext_iface": "x" * 16},
        {"mark": 0},
        {"owner": "has space"},
        {"owner": 'q"uote'},
    ],
)
def test_queue_rules_rejects_bad_input(kw: dict[str, object]) -> None:
    args: dict[str, object] = {
        "port": 80, "in_queue": 1, "out_queue": 2, "ext_iface": "eth0", "mark": 1, "owner": "o",
    }  # fmt: skip
    args.update(kw)
    port = args.pop("port")
    with pytest.raises(UserError):
        queue_rules(port, **args)  # type: ignore[arg-type]


def test_rulespec_json_roundtrip() -> None:
    r = RuleSpec("filter", "INPUT", ("-p", "tcp", "-j", "ACCEPT"))
    assert RuleSpec.from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(ValueError):
        r.argv("-A")


def test_cleanup_stale_missing_file(tmp_path: Path) -> None:
    assert cleanup_stale(str(tmp_path / "none.json")) == 0


def test_cleanup_stale_rejects_foreign_file(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(UserError):
        cleanup_stale(str(p))


# --- real iptables inside a private namespace --------------------------------------------


def _ours(pair: NsPair, ns: str, owner: str) -> list[str]:
    return [r for r in pair.iptables_rules(ns) if f"ftcp:{owner}" in r]


@pytest.mark.root
def test_rules_installed_and_removed_exactly(nspair: NsPair, tmp_path: Path) -> None:
    state = tmp_path / "rules.json"
    # a rule of "someone else" that looks similar must survive
    foreign = RuleSpec("filter", "INPUT", ("-p", "tcp", "--dport", "7000", "-j", "ACCEPT"))
    nspair.run(nspair.b, *foreign.argv("-I"))
    with protected_port(
        7000, in_queue=5, out_queue=6, ext_iface=nspair.b_if, mark=0x77, owner="t1",
        state_file=str(state), netns=nspair.b,
    ) as pr:  # fmt: skip
        lines = _ours(nspair, nspair.b, "t1")
        assert len(lines) == 2
        assert any(" -A INPUT " in f" {x} " and "--queue-num 5" in x for x in lines)
        assert any("-A OUTPUT -o " + nspair.b_if in x and "--queue-num 6" in x for x in lines)
        assert all("--queue-bypass" not in x for x in lines)
        doc = read_state(str(state))
        assert doc["netns"] == nspair.b and doc["pid"] == os.getpid()
        assert [RuleSpec.from_json(r) for r in doc["rules"]] == pr.rules
    assert _ours(nspair, nspair.b, "t1") == []
    assert not state.exists()
    assert any("--dport 7000 -j ACCEPT" in r for r in nspair.iptables_rules(nspair.b))


_CRASHER = """
import os, sys, time
from ftcp.ssw.rules import PortRules, queue_rules
ns, iface, state, mode = sys.argv[1:5]
rules = queue_rules(7001, in_queue=1, out_queue=2, ext_iface=iface, mark=0x99, owner="crash")
PortRules(rules, state_file=state, owner="crash", netns=ns).install()
print("INSTALLED", flush=True)
if mode == "crash":
    os._exit(9)   # no cleanup: simulated crash
time.sleep(60)
"""


@pytest.mark.root
def test_cleanup_stale_after_crash(nspair: NsPair, tmp_path: Path) -> None:
    state = str(tmp_path / "crash.json")
    p = subprocess.run(
        [sys.executable, "-c", _CRASHER, nspair.b, nspair.b_if, state, "crash"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 9 and "INSTALLED" in p.stdout, p.stderr
    assert len(_ours(nspair, nspair.b, "crash")) == 2
    assert os.path.exists(state)
    assert cleanup_stale(state) == 2
    assert _ours(nspair, nspair.b, "crash") == []
    assert not os.path.exists(state)
    assert cleanup_stale(state) == 0


@pytest.mark.root
def test_cleanup_stale_refuses_live_owner(nspair: NsPair, tmp_path: Path) -> None:
    state = str(tmp_path / "live.json")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHER, nspair.b, nspair.b_if, state, "live"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "INSTALLED"
        with pytest.raises(UserError, match="running process"):
            cleanup_stale(state)
        # a new PortRules on the same state file refuses too
        rules = queue_rules(7001, in_queue=1, out_queue=2, ext_iface=nspair.b_if, mark=1,
                            owner="other")  # fmt: skip
        with pytest.raises(UserError):
            PortRules(rules, state_file=state, owner="other", netns=nspair.b).install()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{proc.pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cleanup_stale(state) == 2
    assert _ours(nspair, nspair.b, "crash") == []


@pytest.mark.root
def test_cleanup_stale_namespace_gone(tmp_path: Path) -> None:
    pair = NsPair()
    state = str(tmp_path / "gone.json")
    try:
        pair.up()
        rules = queue_rules(7002, in_queue=1, out_queue=2, ext_iface=pair.b_if, mark=1, owner="g")
        pr = PortRules(rules, state_file=state, owner="g", netns=pair.b)
        pr.install()
    finally:
        pair.close()
    # simulate the recording process being gone: rewrite the pid to one that cannot exist
    doc = json.loads(Path(state).read_text())
    doc["pid"], doc["pid_start"] = 2**22 + 1, None
    Path(state).write_text(json.dumps(doc))
    assert cleanup_stale(state) == 0
    assert not os.path.exists(state)
