"""`ftcp run`: protect one TCP port of an unmodified server (failure-free operation).

`run(cfg)` does, in this order, undoing everything on every exit path:

1. check that LD_PRELOAD can wrap COMMAND (`ftcp.nsw.elfcheck`; a static
   binary is refused) and build the shim;
2. remove the rules of an earlier crashed run (`ftcp.ssw.rules.cleanup_stale`);
3. connect and authenticate to the logger (unreachable: one clear line, exit
   status 2, nothing installed);
4. bind the NFQUEUE, open the raw injector, install the queue rules for the
   port (INPUT: client→server on the client-facing interface; OUTPUT:
   server→client on it), start the SSW engine and the NSW agent;
5. launch COMMAND with the shim preloaded, wait for it.

COMMAND's exit status is forwarded when it exits by itself. SIGTERM/SIGINT
stop it (SIGTERM, then SIGKILL after a grace period) and end with status 0.
When the application dies from a signal, `ftcp.recovery.Recovery` restarts
it and rebuilds its connections from the log (at most `max_restarts` times in
a row; past that the crashed clients are reset and the run exits
128+signal).

Losing the logger link does not end the run (`_LoggerLink`): one line says
so, connections stall (nothing new is acknowledged to clients and writes
that follow unlogged reads stay blocked, since acks come only from the
logger), the client reconnects with back-off, resends everything not yet
acknowledged, and connections resume. A logger that does not hold the
acknowledged history (restarted on an empty data dir) is refused: the
connections keep stalling, loudly, until the right logger is back. While
too many bytes are waiting for the logger, the queue is not read (packets
wait, then the kernel drops them; clients retransmit). A crash meanwhile is
recovered once the logger is back (recovery waits for it).

The client-facing interface is `--iface`, else found from the routing
table: the only interface with an IPv4 address (lo excluded), or the only one
left after removing the one that routes to the logger, or the one holding
the default route.

Per-run files live in the state directory (default ``/run/ftcp``), named
after the network namespace and the port so that runs in different
namespaces never collide: the rules state file, the agent's socket, and a
status file refreshed every second (read by `ftcp status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from ftcp.appproc import AppProcess, Spawner
from ftcp.core.ackpolicy import make_policy
from ftcp.core.lease import LeaseTerms
from ftcp.errors import UserError
from ftcp.failover import Fence, LeaseKeeper, ServiceAddress, parse_vip
from ftcp.logger.assembly import InstreamArena
from ftcp.logger.client import LoggerClient, LoggerError
from ftcp.logger.leaselink import LeaseLink
from ftcp.nsw import build, elfcheck
from ftcp.nsw.agent import Agent
from ftcp.recovery import Recovery, RecoveryBridge
from ftcp.ssw import rules as ssw_rules
from ftcp.ssw.engine import Engine
from ftcp.ssw.inject import Injector
from ftcp.ssw.nfqueue import Queue

log = logging.getLogger("ftcp.run")
T = TypeVar("T")

DEFAULT_STATE_DIR = "/run/ftcp"
DEFAULT_MARK = 0x66746370  # "ftcp"
STOP_GRACE = 5.0
RECOVERY_ARENA = 4 << 20  # pre-faulted memory for the instreams a recovery fetches
REFILL_CHUNK = 60000  # refill segments go over loopback (MTU 64 KiB): fewer, larger
# (not 65000: that skb no longer fits a 64 KiB allocation, its truesize doubles, which
# the rebuilt socket's window accounting pays for; no gain was measured with it)


@dataclass(slots=True)
class RunConfig:
    logger_host: str
    logger_port: int
    port: int
    command: list[str]
    secret: bytes | None = None  # None: --insecure
    ack_strategy: str = "lazy"
    restore: str = "repair"  # or "handshake" (the paper's)
    iface: str | None = None
    queue_num: int | None = None
    mark: int = DEFAULT_MARK
    state_dir: str = DEFAULT_STATE_DIR
    app_id: str | None = None
    ack_trace: str | None = None
    logger_timeout: float = 5.0
    extra_env: dict[str, str] = field(default_factory=dict)
    max_restarts: int = 5  # recovery: restarts in a row before giving up
    on_divergence: str = "continue"  # recovery: "continue" | "close"
    boost: int = 10  # nice levels the event loop runs ahead of the application in a recovery
    vip: str | None = None  # host failover: the service address (ADDR/PREFIX)
    standby: bool = False  # host failover: wait for the lease, then take over
    lease: LeaseTerms = field(default_factory=LeaseTerms)


def netns_id() -> str:
    """An identifier of the current network namespace (its inode)."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


def state_files(state_dir: str, port: int) -> tuple[str, str, str]:
    """(rules state file, agent socket, status file) of a run on `port` in this namespace."""
    tag = f"{netns_id()}-{port}"
    d = Path(state_dir)
    return str(d / f"rules-{tag}.json"), str(d / f"nsw-{tag}.sock"), str(d / f"status-{tag}.json")


def _ip_json(*args: str) -> list[dict]:
    try:
        r = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError("ip (iproute2) not found") from None
    if r.returncode != 0 or not r.stdout.strip():
        return []
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        return []
    return doc if isinstance(doc, list) else []


def detect_iface(logger_host: str) -> str:
    """The interface that faces the clients (see the module docstring)."""
    ifaces = [
        d["ifname"]
        for d in _ip_json("-4", "addr", "show")
        if d.get("ifname") and d["ifname"] != "lo" and d.get("addr_info")
    ]
    if len(ifaces) == 1:
        return ifaces[0]
    try:
        logger_ip = socket.gethostbyname(logger_host)
        routes = _ip_json("route", "get", logger_ip)
        logger_dev = routes[0].get("dev") if routes else None
    except OSError:
        logger_dev = None
    rest = [i for i in ifaces if i != logger_dev]
    if len(rest) == 1:
        return rest[0]
    default = [d.get("dev") for d in _ip_json("route", "show", "default") if d.get("dev")]
    if default:
        return str(default[0])
    raise UserError(
        f"cannot tell which interface faces the clients (candidates: {', '.join(ifaces) or 'none'})"
        "; give --iface"
    )


class _Status:
    def __init__(self, path: str, cfg: RunConfig, iface: str) -> None:
        self.path = path
        self.cfg = cfg
        self.iface = iface
        self.started = time.time()

    def write(
        self,
        engine: Engine,
        client: LoggerClient,
        app_pid: int | None,
        recovery: Recovery | None = None,
        keeper: LeaseKeeper | None = None,
    ) -> None:
        doc = {
            "pid": os.getpid(),
            "port": self.cfg.port,
            "iface": self.iface,
            "app_pid": app_pid,
            "started": self.started,
            "ack_strategy": self.cfg.ack_strategy,
            "logger": f"{self.cfg.logger_host}:{self.cfg.logger_port}",
            "logger_ok": client.closed is None and client.link_up,
            "logger_link": client.link_status(),
            "logger_batches": [client.batch, client.batch_acked],
            "stats": {k: getattr(engine.stats, k) for k in engine.stats.__slots__},
            "connections": engine.snapshot(),
        }
        if recovery is not None:
            doc["recovery"] = recovery.status()
        if self.cfg.vip:
            doc["failover"] = {
                "vip": self.cfg.vip,
                "role": "primary" if keeper is not None and keeper.holder.held else "standby",
                **(keeper.status() if keeper is not None else {}),
            }
        tmp = f"{self.path}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def run(cfg: RunConfig) -> int:
    """Run the supervisor until COMMAND exits or a signal stops it; the exit status."""
    if not cfg.command:
        raise UserError("no COMMAND given: ftcp run [OPTIONS] -- COMMAND ...")
    if not 0 < cfg.port < 65536:
        raise UserError(f"--port {cfg.port} out of range 1..65535")
    make_policy(cfg.ack_strategy)
    elfcheck.check_preloadable(cfg.command)
    shim = build.shim_path()
    os.makedirs(cfg.state_dir, exist_ok=True)
    rules_file, _, _ = state_files(cfg.state_dir, cfg.port)
    n = ssw_rules.cleanup_stale(rules_file)
    if n:
        log.warning("removed %d queue rule(s) left by a crashed run", n)
    iface = cfg.iface or detect_iface(cfg.logger_host)
    return asyncio.run(_supervise(cfg, str(shim), iface))


@dataclass(slots=True)
class _Run:
    """What one `ftcp run` started (each piece registered for teardown as it was made)."""

    cfg: RunConfig
    client: LoggerClient
    engine: Engine
    agent: Agent
    recovery: Recovery
    status: _Status
    spawn: Callable[[], Awaitable[AppProcess]]
    stop: _Stop
    proc: AppProcess | None = None
    keeper: LeaseKeeper | None = None


class _Stop:
    """Why the run must end: a signal, or the lease lost (host failover)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal: int | None = None
        self.lease_lost: str | None = None

    def on_signal(self, sig: int) -> None:
        self.signal = sig
        self.event.set()

    def on_lease_lost(self, why: str) -> None:
        self.lease_lost = why
        self.event.set()

    async def until(self, aw: Awaitable[T]) -> T | None:
        """`aw`'s result, or None (`aw` cancelled) once the run is stopped."""
        task = asyncio.ensure_future(aw)
        stopped = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None


async def _supervise(cfg: RunConfig, shim: str, iface: str) -> int:
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    stop = _Stop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.on_signal, sig)
    try:
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(_report, errors)  # last: after everything else is undone
            run = await _start(cfg, shim, iface, stack, errors, stop)
            if run is None:  # stopped before the application ran (a standby, a takeover)
                return LEASE_LOST_EXIT if stop.lease_lost is not None else 0
            return await _watch(run)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _report(errors: list[str]) -> None:
    if errors:
        print(f"ftcp run: {'; '.join(errors)}", file=sys.stderr)


async def _connect_logger(cfg: RunConfig, link: _LoggerLink) -> LoggerClient:
    try:
        return await LoggerClient.connect(
            cfg.logger_host,
            cfg.logger_port,
            app_id=cfg.app_id or f"port-{cfg.port}",
            secret=cfg.secret,
            on_ack=link.on_ack,
            timeout=cfg.logger_timeout,
            reconnect=True,
            on_link=link.on_link,
            on_pressure=link.on_pressure,
            standby=cfg.standby,
        )
    except (TimeoutError, OSError, LoggerError) as e:
        what = str(e) or type(e).__name__
        if isinstance(e, asyncio.TimeoutError):
            what = f"no answer within {cfg.logger_timeout:g} s"
        raise UserError(
            f"cannot reach the logger at {cfg.logger_host}:{cfg.logger_port}: {what}"
        ) from None


def _agent_socket(path: str, stack: contextlib.AsyncExitStack) -> str:
    """`path`, or one in a directory of its own when `path` is too long for sun_path."""
    if len(os.fsencode(path)) <= 100:  # sun_path holds 108 bytes
        return path
    sock_dir = tempfile.mkdtemp(prefix="ftcp-nsw-")
    stack.callback(_rmdir, sock_dir)
    return os.path.join(sock_dir, "nsw.sock")


def _rmdir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _remove_rules(rules: ssw_rules.PortRules, errors: list[str]) -> None:
    try:
        rules.remove()
    except UserError as e:
        errors.append(str(e))


async def _start(
    cfg: RunConfig,
    shim: str,
    iface: str,
    stack: contextlib.AsyncExitStack,
    errors: list[str],
    stop: _Stop,
) -> _Run | None:
    """Connect, install, launch (module docstring, steps 3-5); every piece is undone by
    `stack`, in the reverse order, whatever happens later. With `--vip`, the lease
    first (a standby waits for it here). None if stopped before the application runs."""
    loop = asyncio.get_running_loop()
    _, _, status_path = state_files(cfg.state_dir, cfg.port)
    link = _LoggerLink(f"{cfg.logger_host}:{cfg.logger_port}", loop)
    keeper: LeaseKeeper | None = None
    address = ServiceAddress(parse_vip(cfg.vip), iface) if cfg.vip else None
    fence = Fence()  # what losing the lease stops at once
    if address is not None:
        stack.callback(address.drop)
        fence.add(address.drop)
    if address is not None and not cfg.standby:
        # the lease before anything else: a fresh record link starts a new run of the
        # application at the logger, which must never happen under a live holder
        keeper = await _take_lease(cfg, address, fence, stack, stop)
        if keeper is None:
            return None
    client = await _connect_logger(cfg, link)
    stack.push_async_callback(client.close)
    client.instream_arena = InstreamArena(RECOVERY_ARENA)
    if address is not None and cfg.standby:
        keeper = await _take_lease(cfg, address, fence, stack, stop)
        if keeper is None:
            return None
    next_order = 0
    if keeper is not None:
        # the logger may be away (it can be why the lease came here): bind once it is back
        bound = await stop.until(client.bind(keeper.epoch))
        if bound is None:
            return None
        next_order = bound.next_order
    engine, agent, bridge = await _install_ssw(
        cfg, iface, client, link, next_order, fence, stack, errors
    )
    addressed = 0.0
    if address is not None:
        address.take()  # SSW is in place: the clients' next packets are held, not reset
        addressed = loop.time()
    status = _Status(status_path, cfg, iface)
    stack.callback(status.remove)
    link.intake = True
    stack.callback(setattr, link, "intake", False)  # late acks must not resume the intake

    env = dict(os.environ)
    env.update(agent.env(cfg.port, shim))
    env["FTCP_NSW_STRICT"] = "1"
    env.update(cfg.extra_env)
    spawner = Spawner()  # its thread keeps the application's priority
    stack.callback(spawner.close)

    async def spawn() -> AppProcess:
        return await spawner.start(cfg.command, env)

    recovery = Recovery(
        engine, agent, client, port=cfg.port, spawn=spawn, max_restarts=cfg.max_restarts,
        on_divergence=cfg.on_divergence, restore=cfg.restore, boost=cfg.boost,
    )  # fmt: skip
    bridge.recovery = recovery
    run = _Run(cfg, client, engine, agent, recovery, status, spawn, stop, keeper=keeper)
    status_task = asyncio.ensure_future(_refresh_status(run))
    stack.callback(status_task.cancel)
    stack.push_async_callback(_stop_app, run)
    if cfg.standby:
        assert keeper is not None
        # the takeover can wait for the logger: losing the lease meanwhile ends it
        run.proc = await stop.until(recovery.take_over(keeper.granted_at, addressed))
        if run.proc is None:
            if stop.event.is_set():
                return None
            raise UserError("the takeover could not read the log back")
    else:
        run.proc = await spawn()
        recovery.started(run.proc)
    vip = f", service address {cfg.vip}" if cfg.vip else ""
    print(
        f"ftcp run: protecting port {cfg.port} on {iface} (ack strategy "
        f"{cfg.ack_strategy}, logger {cfg.logger_host}:{cfg.logger_port}{vip}); "
        f"application pid {run.proc.pid}",
        file=sys.stderr,
        flush=True,
    )
    return run


async def _install_ssw(
    cfg: RunConfig,
    iface: str,
    client: LoggerClient,
    link: _LoggerLink,
    next_order: int,
    fence: Fence,
    stack: contextlib.AsyncExitStack,
    errors: list[str],
) -> tuple[Engine, Agent, RecoveryBridge]:
    """The queue, the injector, the engine, the NSW agent and the queue rules (module
    docstring, step 4), each undone by `stack`."""
    loop = asyncio.get_running_loop()
    rules_file, sock_path, _ = state_files(cfg.state_dir, cfg.port)
    qnum = cfg.queue_num if cfg.queue_num is not None else cfg.port
    queue = Queue.open(qnum)
    stack.callback(queue.close)
    injector = Injector(cfg.mark)
    stack.callback(injector.close)
    fence.add(injector.fence)
    trace: IO[str] | None = None
    if cfg.ack_trace:
        trace = stack.enter_context(open(cfg.ack_trace, "w", buffering=1 << 16))  # noqa: SIM115
    engine = Engine(
        port=cfg.port,
        queue=queue,
        injector=injector,
        ack_strategy=cfg.ack_strategy,
        send_records=client.send,
        ack_trace=trace,
        refill_chunk=REFILL_CHUNK,
    )
    engine.continue_reads(next_order)
    if cfg.standby:
        engine.hold_syns()  # from the first packet on: new clients wait for the takeover
    link.engine = engine
    bridge = RecoveryBridge(engine)
    agent = Agent(_agent_socket(sock_path, stack), bridge)
    bridge.attach(agent)
    await agent.start()
    stack.callback(agent.close)
    engine.start(loop)
    stack.callback(engine.stop)
    owner = f"run-{cfg.port}-{os.getpid()}"
    specs = ssw_rules.queue_rules(
        cfg.port, in_queue=qnum, out_queue=qnum, ext_iface=iface, in_iface=iface,
        mark=cfg.mark, owner=owner,
    )  # fmt: skip
    port_rules = ssw_rules.PortRules(specs, state_file=rules_file, owner=owner)
    port_rules.install()
    stack.callback(_remove_rules, port_rules, errors)
    return engine, agent, bridge


PRIMARY_LEASE_WAIT = 2.0  # a primary that is not lent the lease in this long refuses to start


async def _take_lease(
    cfg: RunConfig,
    address: ServiceAddress,
    fence: Fence,
    stack: contextlib.AsyncExitStack,
    stop: _Stop,
) -> LeaseKeeper | None:
    """Hold the application's lease (a standby: wait for it, however long): its keeper
    (`epoch` set), or None when stopped while waiting."""
    loop = asyncio.get_running_loop()
    app_id = cfg.app_id or f"port-{cfg.port}"
    granted: asyncio.Future[int] = loop.create_future()

    def on_granted(epoch: int) -> None:
        if not granted.done():
            granted.set_result(epoch)

    def on_lost(why: str) -> None:
        print(
            f"ftcp run: LOST the lease of {app_id!r} ({why}); {address.vip} removed from "
            f"{address.iface}: the standby serves it now; stopping",
            file=sys.stderr,
            flush=True,
        )
        stop.on_lease_lost(why)

    keeper = LeaseKeeper(
        lambda: LeaseLink(cfg.logger_host, cfg.logger_port, app_id, cfg.secret),
        cfg.lease,
        loop,
        on_granted=on_granted,
        on_lost=on_lost,
        give_up=fence.trip,
    )
    keeper.start()
    stack.callback(keeper.stop)
    if cfg.standby:
        print(
            f"ftcp run: standby for {app_id!r} (service address {cfg.vip}): waiting for "
            "the lease",
            file=sys.stderr,
            flush=True,
        )
    stopped = asyncio.ensure_future(stop.event.wait())
    try:
        timeout = None if cfg.standby else PRIMARY_LEASE_WAIT
        await asyncio.wait({granted, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if granted.done():
        print(
            f"ftcp run: holding the lease of {app_id!r} (epoch {granted.result()})",
            file=sys.stderr,
            flush=True,
        )
        return keeper
    if stop.event.is_set():
        return None
    raise UserError(
        f"another supervisor holds the lease of {app_id!r}; start this one with --standby"
    )


async def _stop_app(run: _Run) -> None:
    """Teardown: stop any recovery under way, then the application if it still runs."""
    run.recovery.close()
    if run.proc is not None and run.proc.returncode is None:
        await _terminate(run.proc)


async def _watch(run: _Run) -> int:
    """Until the application exits or the run is stopped; the exit status."""
    # what start-up made lives as long as the run: out of the collector's way (a full
    # collection over it stopped the datapath for milliseconds, once after every recovery)
    gc.freeze()
    stop = run.stop
    stopper = asyncio.ensure_future(stop.event.wait())
    try:
        rc = await _watch_loop(run, stopper)
    finally:
        stopper.cancel()
    if rc is not None:
        return rc
    proc = run.proc
    assert proc is not None
    if stop.lease_lost is not None:
        await _stop_app(run)
        return LEASE_LOST_EXIT
    if stop.signal is not None and proc.returncode is None:
        await _terminate(proc)
        return 0
    rc = await proc.wait()
    if rc >= 0:
        await _drain(run.engine, DRAIN_S)
        return rc
    print(
        f"ftcp run: the application (pid {proc.pid}) died from signal "
        f"{signal.Signals(-rc).name}; not restarted (gave up)",
        file=sys.stderr,
        flush=True,
    )
    return 128 - rc


LEASE_LOST_EXIT = 4  # host failover: this host lost the lease; the standby took over


async def _watch_loop(run: _Run, stopper: asyncio.Future[bool]) -> int | None:
    """Recover every death from a signal; return when the application exits by itself
    or gives up (None: `_watch` says how it ended), or with the run's exit status."""
    assert run.proc is not None
    status_waits: set[asyncio.Future[None]] = set()  # see `_status_after`
    waiter = asyncio.ensure_future(run.proc.wait())
    while True:
        done = await _next_event(waiter, stopper, 1.0)
        if waiter in done and stopper not in done and waiter.result() < 0:
            new = await _recover(run, waiter.result(), stopper)
            if new is False:
                return 0  # stopped during the recovery
            if new is not None:
                run.proc = new
                waiter = asyncio.ensure_future(new.wait())
                done = set()
        pid = run.proc.pid
        _status_after(
            run.recovery.transfer(),
            lambda pid=pid: run.status.write(
                run.engine, run.client, pid, run.recovery, run.keeper
            ),
            status_waits,
        )
        if done:
            return None
        if run.client.closed is not None or run.engine.fatal is not None:  # not a link loss
            why = run.client.closed or run.engine.fatal
            print(f"ftcp run: logger client failed ({why}); stopping", file=sys.stderr)
            await _terminate(run.proc)
            return 1


async def _recover(run: _Run, rc: int, stopper: asyncio.Future[bool]) -> AppProcess | None | bool:
    """The application died from a signal: the restarted process (None: gave up). A
    stop request must not wait for the recovery's start (it can wait for a lost logger
    however long): cancelled, it stops what it started (False)."""
    dying = asyncio.ensure_future(run.recovery.on_death(rc))
    await asyncio.wait({dying, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if dying.done():
        return dying.result()
    dying.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dying
    print(
        "ftcp run: stopped during a recovery; its connections are closed unrecovered",
        file=sys.stderr,
        flush=True,
    )
    return False


# -- logger link (see the module docstring) ---------------------------------------------


class _LoggerLink:
    """`LoggerClient` callbacks: acks to the engine, say when the link goes and comes,
    pause the queue intake while too much waits for the logger."""

    def __init__(self, where: str, loop: asyncio.AbstractEventLoop):
        self.where = where
        self.loop = loop
        self.engine: Engine | None = None
        self.intake = False  # the engine reads its queue (False: not yet, or no more)
        self.paused = False

    def on_ack(self, acks: list) -> None:
        if self.engine is not None:
            self.engine.on_logger_acks(acks)

    def on_link(self, up: bool, why: str) -> None:
        if up:
            msg = f"logger at {self.where} is back ({why}); connections resume"
        elif "history" in why:
            msg = (
                f"REFUSING the logger at {self.where}: {why}; connections stall until the "
                "logger that holds it is back (restart it on its data dir)"
            )
        else:
            msg = f"logger at {self.where} lost: {why}; connections stall until it is back"
        print(f"ftcp run: {msg}", file=sys.stderr, flush=True)  # one line (not also logged)

    def on_pressure(self, on: bool) -> None:
        """Too much waits for the logger: stop reading the queue (packets are not lost
        to the log: the kernel drops them and the clients retransmit)."""
        if not self.intake or self.engine is None or on == self.paused:
            return
        self.paused = on
        if on:
            self.engine.pause_intake()
            log.warning("logger backlog over its limit: not reading the queue")
        else:
            self.engine.resume_intake()
            log.warning("logger backlog drained: reading the queue again")


DRAIN_S = 30.0  # longest wait, after a normal exit, for the connections to finish


async def _drain(engine: Engine, limit: float) -> None:
    """After the application exited normally, keep SSW running until every protected
    connection has finished (both FINs through), at most `limit` seconds: its kernel
    sockets may still hold output, and after a recovery every segment of it needs
    translating (`delta_seq`); leaving early strands the tail of the stream."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(
        c.finished_at is None for c in engine.conns.values()
    ):
        await asyncio.sleep(0.05)


async def _next_event(
    waiter: asyncio.Future[int], stopper: asyncio.Future[bool], timeout: float
) -> set[asyncio.Future[Any]]:
    """The futures done among the application's exit (`waiter`) and a stop request
    (`stopper`), as soon as either is, or none after `timeout` (the status tick).
    FIRST_COMPLETED matters: with asyncio.wait's default (ALL_COMPLETED) a crash would
    only be seen at the next tick, up to `timeout` after the death, and the client
    would stall that long before recovery even starts."""
    done, _ = await asyncio.wait(
        {waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    return done


def _status_after(
    transfer: asyncio.Future[None] | None,
    write: Callable[[], None],
    waiting: set[asyncio.Future[None]],
) -> None:
    """`write()` the status now, or once the log transfer under way (`transfer`) is
    in: writing it takes ~1 ms of CPU (0.85 ms measured on a 2-core VM), which a
    recovery's transfer would wait for. Once per transfer however many loop turns ask
    during it (`waiting`: the transfers a write already waits for); not at all if the
    transfer is cancelled (the run is ending; the status tick writes it otherwise)."""
    if transfer is None:
        write()
    elif transfer not in waiting:
        waiting.add(transfer)

        def done(f: asyncio.Future[None]) -> None:
            waiting.discard(f)
            if not f.cancelled():
                write()

        transfer.add_done_callback(done)


async def _refresh_status(run: _Run) -> None:
    """The status file every second, also while a recovery waits (for the logger, say)."""
    while True:
        await asyncio.sleep(1.0)
        p = run.proc
        with contextlib.suppress(Exception):
            run.status.write(run.engine, run.client, p.pid if p else None, run.recovery, run.keeper)


async def _terminate(proc: AppProcess) -> None:
    await proc.stop(STOP_GRACE)


def read_status(state_dir: str) -> list[dict]:
    """Status documents of the supervisors running with `state_dir` (any namespace)."""
    out = []
    for p in sorted(Path(state_dir).glob("status-*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        pid = doc.get("pid")
        if isinstance(pid, int):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
        out.append(doc)
    return out
