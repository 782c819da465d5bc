"""The iptables rules that feed one protected port into NFQUEUE, installed and removed exactly.

For a protected port P the supervisor queues (table `filter`)::

    INPUT  -p tcp --dport P            -m mark ! --mark M -m comment --comment ftcp:<owner>
           -j NFQUEUE --queue-num N_in
    OUTPUT -o <ext iface> -p tcp --sport P -m mark ! --mark M -m comment --comment ftcp:<owner>
           -j NFQUEUE --queue-num N_out

* The mark exclusion lets segments we inject ourselves (raw socket with
  `SO_MARK` = M, see `ftcp.ssw.inject`) bypass the queue. `-o <ext iface>` on
  OUTPUT additionally keeps injected client segments (which go out via `lo`)
  from looping into the server→client queue.
* Rules are inserted at the head of the chain (`-I CHAIN 1`) so no earlier
  ACCEPT lets a protected segment past unexamined.
* **No `--queue-bypass`.** With it, a packet is *accepted* whenever no program
  is bound to the queue — e.g. while the supervisor restarts, or after it died.
  That would let unclamped acks, and the FIN/RST of a dying server, reach the
  client: exactly what FT-TCP must never allow. Without it the kernel drops
  queued-to-nobody packets and TCP retransmits them later: fail-closed. (The
  queue itself is bound with `F_FAIL_OPEN` off for the same reason.)

Every rule carries `-m comment --comment ftcp:<owner>` so a person reading
`iptables -S` knows whose it is, and is removed with `iptables -D` and the
identical spec. Before anything is inserted, the full list is written to a
state file (path chosen by the caller) together with the owner's pid and
start time; `cleanup_stale(state_file)` removes rules left by a crashed run,
and refuses while that owner process is still alive.

The argv lists come from pure functions (`queue_rules`, `RuleSpec.argv`) and
are unit-tested without root.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ftcp.errors import UserError
from ftcp.ssw import netns as _netns

STATE_FORMAT = "ftcp-rules/1"
COMMENT_PREFIX = "ftcp:"
IPTABLES = "iptables"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One iptables rule: table, chain and the match/target spec (without -A/-I/-D)."""

    table: str
    chain: str
    spec: tuple[str, ...]

    def argv(self, action: str, *, iptables: str = IPTABLES) -> list[str]:
        """iptables argv for `action` in {"-I", "-D", "-C"} (insert goes to position 1)."""
        if action not in ("-I", "-D", "-C"):
            raise ValueError(f"unsupported iptables action {action!r}")
        pos = ["1"] if action == "-I" else []
        return [iptables, "-w", "-t", self.table, action, self.chain, *pos, *self.spec]

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "chain": self.chain, "spec": list(self.spec)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RuleSpec:
        spec = d["spec"]
        if not (isinstance(spec, list) and all(isinstance(s, str) for s in spec)):
            raise ValueError("rule spec must be a list of strings")
        return cls(str(d["table"]), str(d["chain"]), tuple(spec))


def owner_comment(owner: str) -> str:
    if not owner or any(c.isspace() or c in "\"'\\" for c in owner) or len(owner) > 200:
        raise UserError(f"bad rule owner id {owner!r} (no spaces or quotes, <= 200 chars)")
    return COMMENT_PREFIX + owner


def _mark_arg(mark: int, mask: int) -> str:
    if not 0 < mark <= 0xFFFFFFFF or not 0 < mask <= 0xFFFFFFFF:
        raise UserError(f"firewall mark {mark:#x}/{mask:#x} must be non-zero 32-bit values")
    return f"{mark:#x}" if mask == 0xFFFFFFFF else f"{mark:#x}/{mask:#x}"


def queue_rules(
    port: int,
    *,
    in_queue: int,
    out_queue: int,
    ext_iface: str,
    mark: int,
    owner: str,
    mark_mask: int = 0xFFFFFFFF,
    server_addr: str | None = None,
    in_iface: str | None = None,
) -> list[RuleSpec]:
    """The INPUT (client→server) and OUTPUT (server→client) queue rules for `port`.

    `server_addr` narrows both rules to the server's address (`-d` in, `-s`
    out); `in_iface` narrows INPUT to one interface (leave it None to also
    queue clients on the same host)."""
    if not 0 < port < 65536:
        raise UserError(f"port {port} out of range 1..65535")
    for q in (in_queue, out_queue):
        if not 0 <= q <= 0xFFFF:
            raise UserError(f"NFQUEUE number {q} out of range 0..65535")
    if not ext_iface or len(ext_iface) > 15:
        raise UserError(f"bad external interface name {ext_iface!r}")
    comment = owner_comment(owner)
    mk = _mark_arg(mark, mark_mask)
    tail_common = ["-m", "mark", "!", "--mark", mk, "-m", "comment", "--comment", comment]
    inp: list[str] = []
    if in_iface:
        inp += ["-i", in_iface]
    if server_addr:
        inp += ["-d", f"{server_addr}/32"]
    inp += ["-p", "tcp", "-m", "tcp", "--dport", str(port), *tail_common]
    inp += ["-j", "NFQUEUE", "--queue-num", str(in_queue)]
    out: list[str] = ["-o", ext_iface]
    if server_addr:
        out += ["-s", f"{server_addr}/32"]
    out += ["-p", "tcp", "-m", "tcp", "--sport", str(port), *tail_common]
    out += ["-j", "NFQUEUE", "--queue-num", str(out_queue)]
    return [RuleSpec("filter", "INPUT", tuple(inp)), RuleSpec("filter", "OUTPUT", tuple(out))]


# --- state file --------------------------------------------------------------------------


def _proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of `pid`, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields resume after the last ')'
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _write_state(path: str, doc: dict[str, Any]) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_state(path: str) -> dict[str, Any]:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise UserError(f"{path}: not an ftcp rules state file")
    return doc


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} not found: install iptables / iproute2") from None


def _rule_present(rule: RuleSpec, netns: str | None, iptables: str) -> bool:
    r = _run(_netns.exec_argv(netns, rule.argv("-C", iptables=iptables)))
    if r.returncode == 0:
        return True
    if r.returncode == 1:
        return False
    raise UserError(f"iptables -C failed: {r.stderr.strip()}")


def _delete(rule: RuleSpec, netns: str | None, iptables: str) -> bool:
    """Delete one rule if present; True if it was there."""
    if netns is not None and not _netns.netns_exists(netns):
        return False  # the namespace, and every rule in it, is gone
    if not _rule_present(rule, netns, iptables):
        return False
    r = _run(_netns.exec_argv(netns, rule.argv("-D", iptables=iptables)))
    if r.returncode != 0:
        raise UserError(f"cannot remove iptables rule {' '.join(rule.spec)}: {r.stderr.strip()}")
    return True


class PortRules:
    """Queue rules for one protected port: install, remove exactly, survive a crash.

    Use as a context manager (`with PortRules(...) as r:`) or call `install()`
    and `remove()`. `rules` usually comes from `queue_rules(...)`."""

    def __init__(
        self,
        rules: Sequence[RuleSpec],
        *,
        state_file: str,
        owner: str,
        netns: str | None = None,
        iptables: str = IPTABLES,
    ) -> None:
        owner_comment(owner)
        self.rules = list(rules)
        self.state_file = state_file
        self.owner = owner
        self.netns = netns
        self.iptables = iptables
        self.installed: list[RuleSpec] = []

    def install(self, *, cleanup: bool = True) -> None:
        """Record the rules in the state file, then insert them (all or none).

        An existing state file is first cleaned up with `cleanup_stale` when
        `cleanup` (it refuses if its owner is still running); otherwise it is
        an error."""
        if os.path.exists(self.state_file):
            if not cleanup:
                raise UserError(f"{self.state_file} exists: rules from an earlier run?")
            cleanup_stale(self.state_file, iptables=self.iptables)
        if self.netns is not None and not _netns.netns_exists(self.netns):
            raise UserError(f"network namespace {self.netns!r} does not exist")
        pid = os.getpid()
        _write_state(
            self.state_file,
            {
                "format": STATE_FORMAT,
                "owner": self.owner,
                "netns": self.netns,
                "pid": pid,
                "pid_start": _proc_start_time(pid),
                "rules": [r.to_json() for r in self.rules],
            },
        )
        try:
            for rule in self.rules:
                r = _run(_netns.exec_argv(self.netns, rule.argv("-I", iptables=self.iptables)))
                if r.returncode != 0:
                    msg = r.stderr.strip()
                    if "Permission denied" in msg or "must be root" in msg:
                        raise UserError("installing iptables rules needs root / CAP_NET_ADMIN")
                    raise UserError(f"iptables rejected {' '.join(rule.spec)}: {msg}")
                self.installed.append(rule)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Delete every rule this object inserted (same spec), then the state file."""
        errors: list[str] = []
        for rule in reversed(self.installed):
            try:
                _delete(rule, self.netns, self.iptables)
            except UserError as e:
                errors.append(str(e))
        self.installed.clear()
        if not errors:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_file)
        else:
            raise UserError("; ".join(errors))

    def __enter__(self) -> PortRules:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def cleanup_stale(state_file: str, *, iptables: str = IPTABLES) -> int:
    """Remove the rules recorded in `state_file` by a run that is no longer alive.

    Returns how many rules were still present and removed. Missing file → 0.
    Raises `UserError` if the recording process is still running."""
    try:
        doc = read_state(state_file)
    except FileNotFoundError:
        return 0
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{state_file}: unreadable rules state file") from None
    pid = doc.get("pid")
    if isinstance(pid, int) and pid != os.getpid():
        start = _proc_start_time(pid)
        if start is not None and start == doc.get("pid_start"):
            raise UserError(
                f"{state_file}: rules belong to a running process (pid {pid}); not removing"
            )
    netns = doc.get("netns")
    removed = 0
    try:
        rules = [RuleSpec.from_json(r) for r in doc["rules"]]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{state_file}: malformed rules state file ({e})") from None
    for rule in reversed(rules):
        if _delete(rule, netns, iptables):
            removed += 1
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_file)
    return removed


@contextlib.contextmanager
def protected_port(
    port: int,
    *,
    in_queue: int,
    out_queue: int,
    ext_iface: str,
    mark: int,
    owner: str,
    state_file: str,
    netns: str | None = None,
    server_addr: str | None = None,
    in_iface: str | None = None,
) -> Iterator[PortRules]:
    """Install the queue rules for `port` for the duration of the `with` block."""
    rules = queue_rules(
        port,
        in_queue=in_queue,
        out_queue=out_queue,
        ext_iface=ext_iface,
        mark=mark,
        owner=owner,
        server_addr=server_addr,
        in_iface=in_iface,
    )
    with PortRules(rules, state_file=state_file, owner=owner, netns=netns) as r:
        yield r
