"""Building, using and removing a lab: `up`, `Lab`, `down`.

`up(topology, name)` records every namespace (and the hub process) in the
lab's state file *before* creating it, so `down(name)` can remove exactly what
was made even if the process that ran `up` died half-way. A failed `up` tears
down what it made before raising `UserError`. Nothing is created in the root
namespace: bridges and switch-side veth ends live in `ftcp-<name>-sw`.

`down` deletes the lab's namespaces and, first, ends the processes still
running inside them (found by namespace identity, not by name) and the hub
(by its recorded PID and start time), so no veth or TAP outlives the lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ftcp
from ftcp.errors import UserError
from ftcp.lab.topology import LabLayout, Step, Topology, get_topology, validate_host, validate_name

NETNS_RUN_DIR = Path("/run/netns")
DEFAULT_STATE_DIR = Path("/run/ftcp/labs")
STATE_VERSION = 1
_CHILDREN: dict[int, subprocess.Popen] = {}  # hubs this process started, to reap them


def state_dir() -> Path:
    return Path(os.environ.get("FTCP_LAB_STATE_DIR") or DEFAULT_STATE_DIR)


def state_path(name: str) -> Path:
    return state_dir() / f"{name}.json"


def hub_stats_path(name: str) -> Path:
    return state_dir() / f"{name}.hub.stats.json"


def netns_exists(ns: str) -> bool:
    return (NETNS_RUN_DIR / ns).exists()


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the lab needs root (network namespaces); run it as root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise UserError(f"'{tool}' not found: install iproute2")


def proc_starttime(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


# --- state file ---------------------------------------------------------------------------


@dataclass
class LabState:
    name: str
    topology: Topology
    namespaces: list[str] = field(default_factory=list)  # created by this lab, in order
    hub_pid: int | None = None
    hub_starttime: int | None = None
    status: str = "building"
    created: float = field(default_factory=time.time)

    @property
    def layout(self) -> LabLayout:
        return LabLayout(self.name, self.topology)

    def to_json(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "status": self.status,
            "created": self.created,
            "topology": self.topology.to_json(),
            "namespaces": self.namespaces,
            "hub": None
            if self.hub_pid is None
            else {"pid": self.hub_pid, "starttime": self.hub_starttime},
            "netns": {h: lay.netns(h) for h in self.topology.hosts},
            "switch_netns": lay.switch_netns,
            "interfaces": {
                h: {s: lay.ifname(h, s) for s in self.topology.segments_of(h)}
                for h in self.topology.hosts
            },
            "addresses": lay.addresses(),
            "subnets": {s.name: str(lay.subnet(s.name)) for s in self.topology.segments},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabState:
        hub = d.get("hub") or {}
        return cls(
            name=d["name"],
            topology=Topology.from_json(d["topology"]),
            namespaces=list(d.get("namespaces", [])),
            hub_pid=hub.get("pid"),
            hub_starttime=hub.get("starttime"),
            status=d.get("status", "?"),
            created=d.get("created", 0.0),
        )

    def save(self) -> None:
        path = state_path(self.name)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)


def read_state(name: str) -> LabState | None:
    try:
        return LabState.from_json(json.loads(state_path(name).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as e:
        raise UserError(f"state file {state_path(name)} is unreadable: {e}") from None


def list_states() -> list[LabState]:
    d = state_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        with contextlib.suppress(UserError):
            st = read_state(p.stem)
            if st is not None:
                out.append(st)
    return out


# --- the Lab object -------------------------------------------------------------------------


class Lab:
    """A running lab: names, addresses, and processes in its hosts.

    `lab.popen("server", ["iperf3", "-s"])` starts a process in the server's
    namespace (via `ip netns exec`, which execs, so `Popen.pid` is the command's
    own PID); `lab.run(...)` runs one to completion. Processes started with
    `popen` are ended by `close()`/`down()`.
    """

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.layout = state.layout
        self._procs: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, {self.topology.name!r})"

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def topology(self) -> Topology:
        return self.state.topology

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.topology.hosts

    @property
    def hub_pid(self) -> int | None:
        return self.state.hub_pid

    def netns(self, host: str) -> str:
        return self.layout.netns(validate_host(self.topology, host))

    def segments_of(self, host: str) -> tuple[str, ...]:
        return self.topology.segments_of(validate_host(self.topology, host))

    def _segment(self, host: str, segment: str | None) -> str:
        segs = self.segments_of(host)
        if segment is None:
            return segs[0]  # client/server/backup: front; logger: back
        if segment not in segs:
            raise UserError(f"host '{host}' is not on segment '{segment}'")
        return segment

    def ip(self, host: str, segment: str | None = None) -> str:
        """The host's IPv4 address on `segment` (default: its first segment)."""
        return self.layout.ip(host, self._segment(host, segment))

    def ifname(self, host: str, segment: str | None = None) -> str:
        return self.layout.ifname(host, self._segment(host, segment))

    def subnet(self, segment: str) -> str:
        return str(self.layout.subnet(segment))

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(host, argv), **kw)
        self._procs.append(p)
        return p

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60.0,
        **kw: Any,
    ) -> subprocess.CompletedProcess:
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(host, argv), check=check, timeout=timeout, **kw)

    def python(self, host: str, module: str, *args: str, **kw: Any) -> subprocess.Popen:
        """`python -m module args` in `host`, with this ftcp importable."""
        env = dict(kw.pop("env", None) or os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH", "")) if p
        )
        return self.popen(host, [sys.executable, "-m", module, *args], env=env, **kw)

    def hub_stats(self, timeout: float = 2.0) -> dict[str, Any]:
        """Fresh counters of the hub (frames, drops, bytes through the bucket)."""
        if self.hub_pid is None:
            raise UserError(f"lab '{self.name}' ({self.topology.name}) has no hub")
        path = hub_stats_path(self.name)

        def seq() -> int:
            try:
                return int(json.loads(path.read_text())["seq"])
            except (OSError, ValueError, KeyError):
                return -1

        before = seq()
        if proc_starttime(self.hub_pid) != self.state.hub_starttime:
            raise UserError(f"the hub of lab '{self.name}' (pid {self.hub_pid}) is not running")
        os.kill(self.hub_pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seq() > before:
                return json.loads(path.read_text())
            time.sleep(0.005)
        raise UserError(f"the hub of lab '{self.name}' did not report its counters")

    # -- host failures (host failover tests) --

    def cut(self, host: str, segment: str | None = None) -> None:
        """Cut `host`'s link to `segment` (None: every link): nothing it sends arrives,
        nothing reaches it. The host itself runs on."""
        segs = self.segments_of(host) if segment is None else (self._segment(host, segment),)
        ns = self.netns(host)
        for seg in segs:
            subprocess.run(
                ["ip", "-n", ns, "link", "set", "dev", self.ifname(host, seg), "down"],
                check=True, capture_output=True, timeout=10,
            )  # fmt: skip

    def power_off(self, host: str) -> list[int]:
        """`host` loses power: its links cut, then every process in it SIGKILLed at
        once (nothing it could still send reaches anyone). The PIDs it killed."""
        self.cut(host)
        pids = pids_in_netns([self.netns(host)])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self._procs:
            if p.pid in pids:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        return pids

    def power_on(self, host: str) -> None:
        """`host` boots again: its links up with the lab's addresses only (what was added
        at run time, a service address say, is gone, as after a reboot)."""
        ns = self.netns(host)
        for seg in self.segments_of(host):
            dev = self.ifname(host, seg)
            prefix = self.layout.subnet(seg).prefixlen
            for argv in (
                ["addr", "flush", "dev", dev],
                ["addr", "add", f"{self.ip(host, seg)}/{prefix}", "dev", dev],
                ["link", "set", "dev", dev, "up"],
            ):
                subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, timeout=10)

    def close(self) -> None:
        """End the processes this object started (not the lab)."""
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 2.0
        for p in self._procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()

    def down(self) -> None:
        self.close()
        down(self.name)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _package_root() -> str:
    return str(Path(ftcp.__file__).resolve().parent.parent)


def load(name: str) -> Lab:
    validate_name(name)
    st = read_state(name)
    if st is None:
        raise UserError(f"no lab named '{name}' (see `ftcp lab list`)")
    return Lab(st)


# --- up ---------------------------------------------------------------------------------------


def _run_step(step: Step, name: str) -> None:
    r = subprocess.run(step.argv, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        detail = (r.stderr or r.stdout).strip().splitlines()
        why = detail[-1] if detail else f"exit status {r.returncode}"
        raise UserError(
            f"cannot build lab '{name}': {step.feature} unavailable or failed "
            f"({' '.join(step.argv[:6])} ...: {why})"
        )


def unique_name(prefix: str = "t") -> str:
    """A lab name not in use: `prefix` and random hex digits, 8 characters in all."""
    while True:
        name = prefix + secrets.token_hex(4)[: 8 - len(prefix)]
        if not state_path(name).exists() and not any(
            netns_exists(f"ftcp-{name}-{h}") for h in ("sw", "client", "server")
        ):
            return name


def up(topology: Topology | str, name: str = "lab") -> Lab:
    """Build lab `name` from `topology` (a Topology or a topology name)."""
    topo = get_topology(topology) if isinstance(topology, str) else topology
    validate_name(name)
    require_root()
    layout = LabLayout(name, topo)
    sdir = state_dir()
    sdir.mkdir(parents=True, exist_ok=True)
    st = LabState(name, topo)
    try:  # the state file doubles as the lock on the name
        fd = os.open(state_path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UserError(f"lab '{name}' already exists; `ftcp lab down {name}` first") from None
    os.close(fd)
    taken = [ns for ns in layout.all_netns if netns_exists(ns)]
    if taken:
        state_path(name).unlink()
        raise UserError(
            f"namespace {taken[0]} already exists but is not lab '{name}''s; not touching it"
        )
    st.save()
    try:
        _build(st, layout)
    except BaseException as e:
        _teardown(st)
        if isinstance(e, UserError):
            raise
        if isinstance(e, (OSError, subprocess.SubprocessError)):
            raise UserError(f"cannot build lab '{name}': {e}") from e
        raise
    st.status = "up"
    st.save()
    return Lab(st)


def _build(st: LabState, layout: LabLayout) -> None:
    for step in layout.netns_steps():
        if step.argv[:3] == ["ip", "netns", "add"]:
            st.namespaces.append(step.argv[3])
            st.save()
        _run_step(step, st.name)
    if st.topology.hub is None:
        for step in layout.bridge_steps():
            _run_step(step, st.name)
        return
    if not Path("/dev/net/tun").exists():
        raise UserError(f"cannot build lab '{st.name}': tun/tap unavailable (no /dev/net/tun)")
    _start_hub(st, layout)
    for step in layout.hub_port_steps():
        _run_step(step, st.name)


def _start_hub(st: LabState, layout: LabLayout) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    log = open(state_dir() / f"{st.name}.hub.log", "wb")  # noqa: SIM115 (handed to the child)
    with log:
        hub = subprocess.Popen(
            layout.hub_argv(sys.executable, str(hub_stats_path(st.name))),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,  # detached: survives the `ftcp lab up` that started it
        )
    _CHILDREN[hub.pid] = hub
    st.hub_pid = hub.pid
    st.hub_starttime = proc_starttime(hub.pid)
    st.save()
    assert hub.stdout is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(hub.stdout, selectors.EVENT_READ)
        if sel.select(timeout=10.0):
            line = hub.stdout.readline()
    hub.stdout.close()
    if line.strip() != b"ready":
        msg = line.decode(errors="replace").strip() or "no answer within 10 s"
        raise UserError(f"cannot build lab '{st.name}': tun/tap hub failed to start: {msg}")


# --- down -------------------------------------------------------------------------------------


def _ns_inode(ns: str) -> tuple[int, int] | None:
    try:
        s = os.stat(NETNS_RUN_DIR / ns)
    except OSError:
        return None
    return (s.st_dev, s.st_ino)


def pids_in_netns(namespaces: Sequence[str]) -> list[int]:
    """PIDs of processes whose network namespace is one of `namespaces` (by identity)."""
    wanted = {i for i in (_ns_inode(ns) for ns in namespaces) if i is not None}
    if not wanted:
        return []
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            s = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) in wanted:
            out.append(int(entry.name))
    return out


def _reap(pid: int) -> bool:
    """True when `pid` is gone (reaping it if it is our child)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return False
        del _CHILDREN[pid]
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass
    st = proc_starttime(pid)
    if st is None:
        return True
    try:  # a zombie that is not our child still counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_all(pids: dict[int, int | None], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL, exactly these (pid -> start time; None: any start time)."""

    def same(pid: int, start: int | None) -> bool:
        now = proc_starttime(pid)
        return now is not None and (start is None or now == start)

    live = {p: s for p, s in pids.items() if same(p, s)}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            live = {p: s for p, s in live.items() if not _reap(p)}
            if live:
                time.sleep(0.02)
        if not live:
            return


def _teardown(st: LabState) -> None:
    procs: dict[int, int | None] = {}
    if st.hub_pid is not None and st.hub_starttime is not None:
        procs[st.hub_pid] = st.hub_starttime
    for pid in pids_in_netns(st.namespaces):
        procs.setdefault(pid, proc_starttime(pid))
    _kill_all(procs)
    for ns in reversed(st.namespaces):
        if netns_exists(ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
    leftover = [ns for ns in st.namespaces if netns_exists(ns)]
    if leftover:
        raise UserError(f"could not delete namespace {leftover[0]} of lab '{st.name}'")
    for extra in (state_dir() / f"{st.name}.hub.log", hub_stats_path(st.name)):
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()
    with contextlib.suppress(FileNotFoundError):
        state_path(st.name).unlink()


def down(name: str) -> bool:
    """Remove lab `name` exactly as recorded. False (and no error) if there is none."""
    validate_name(name)
    require_root()
    st = read_state(name)
    if st is None:
        return False
    _teardown(st)
    return True


def labs() -> list[Lab]:
    return [Lab(st) for st in list_states()]


@contextlib.contextmanager
def temporary_lab(topology: Topology | str, name: str = "lab") -> Iterator[Lab]:
    """`with lab("10-10", "x") as l:` — built on entry, removed on exit (also on error)."""
    made = up(topology, name)
    try:
        yield made
    finally:
        made.down()
