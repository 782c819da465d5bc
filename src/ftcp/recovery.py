"""Supervisor-side recovery after a process crash (DESIGN.md "Recovery after a process crash").

`Recovery` is what `ftcp run` does when the application dies from a signal:

1. *detect*: the supervisor's wait on the child returns; every live protected
   connection gets `ProcessDied` (the core enters CRASHED: nothing the dead
   connection emits reaches the client, closed-window acks keep the client in
   step); the agent still holds a duplicate of every accepted socket, so the
   death itself emitted no FIN/RST. New SYNs to the port are held by the
   engine until recovery ends (`hold_syns`: held, not refused);
2. *fetch*: the records the crash produced, then a RECOVER, go down the
   logger link (the logger answers once everything before the request is
   durable: no separate sync round trip); the answer streams in, and each
   crashed connection gets its `RecoveryPlan` as soon as its head and reads
   are in (`plan_recovery` with the engine's own hints: newest client ack,
   last TSval sent), its instream filling while the rebuild runs;
3. *restart*: meanwhile the application is started again (at most
   `max_restarts` times in a row, with a doubling back-off after the first;
   the fork and exec run off the event loop, `ftcp.appproc`); past that,
   recovery gives up: each crashed client gets a reset, loudly, and `ftcp run`
   exits;
4. *rebuild*: once the new process listens, in the original accept order,
   the held duplicate is closed silently (TCP_REPAIR: frees the 4-tuple) and
   the core is fed `Rebuild(plan)`: fabricated SYN, captured SYN-ACK, third
   ack, paced refill of the logged instream; with `--restore repair` the
   handshake only makes the application's accept return: on that accept (the
   shim waits for the agent's reply) the very socket the application got is
   rebuilt in place with TCP_REPAIR (`ftcp.tcprepair`: original sequence
   numbers, options, window scales, TSval clock, the logged instream in its
   receive queue) and the core is fed `Repaired` (`delta_seq = 0`: SSW is back
   to ack clamping only). A repair that fails before touching the socket falls
   back to the handshake rebuild; one that fails after resets the client; both
   are reported with the step and errno;
5. *replay*: the application's accept of a rebuilt connection is answered
   with `Replay(reads, discard)`; the shim serves the logged read results and
   swallows the first `discard` output bytes; its REPLAY_DONE mark becomes
   `ReplayDone` (the core translates seq/ack/SACK/TS/window from the rebuild on);
6. *resume*: when no connection is restarting any more, the held SYNs go on.

A death during recovery starts it again from the log (the rebuild task of the
previous attempt is cancelled; connections already rebuilt crash again).

Divergence: the shim reports the running CRC of the regenerated outstream at
replayed reads and where replay ends; `ftcp.core.replay.OutstreamCheck`
compares it with what the same application reported at the same byte offset
before the crash (invariant 5). A mismatch is logged with connection and byte
offset, counted, shown by `ftcp status`, and handled by `on_divergence`
(`continue` or `close`: reset the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcp import sockdiag
from ftcp.appproc import AppProcess
from ftcp.core.conn import State
from ftcp.core.events import InstreamArrived, Rebuild, Repaired, ReplayDone
from ftcp.core.records import Arrival, ConnectionLog
from ftcp.core.replay import Divergence, OutstreamCheck, RecoveryPlan, plan_recovery
from ftcp.nsw.agent import AcceptInfo, Agent, Decision, Replay, SessionInfo, process_alive
from ftcp.nsw.bridge import AgentBridge
from ftcp.nsw.proto import How, Kind, MarkReason, MismatchCode
from ftcp.ssw.engine import Conn, Engine
from ftcp.tcprepair import RepairError, repair_in_place

log = logging.getLogger("ftcp.recovery")

_RESTARTING = (State.CRASHED, State.REPLAY_SYN_SENT, State.REPLAYING)
LISTEN_POLL = 0.001
PRESUM_STEP = 32  # checksum blocks (8 KiB) summed per event loop turn (~0.4 ms)
STABLE_AFTER = 10.0  # a process that lived this long resets the restart count


def listening(port: int) -> bool:
    """A TCP socket in LISTEN on `port` exists in this network namespace.

    Asked of sock_diag for listeners only (recovery polls this every millisecond
    while the application starts; reading /proc/net/tcp that often took a good part
    of a CPU); /proc/net/tcp when netlink is not available."""
    try:
        return sockdiag.listening(port)
    except OSError:
        return _listening_proc(port)


def _listening_proc(port: int) -> bool:
    want = f":{port:04X}"
    for name in ("tcp", "tcp6"):
        try:
            text = Path(f"/proc/net/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) > 3 and f[3] == "0A" and f[1].endswith(want):
                return True
    return False


class Boost:
    """The event loop's thread `levels` nice levels ahead of the rest of the process
    (the application's spawning thread, hence the application) while a recovery runs.

    After a crash the log transfer runs while the restarted application starts on the
    same cores; at equal priority the transfer waits for CPU. Outside a recovery the
    loop shares the CPU as before (a permanent boost starves other processes the
    host runs, measurably). Linux keeps a nice value per thread; threads the loop
    starts while boosted (the instream's page-faulting helper) inherit it.
    Measurements: docs/notes/2026-11-27-kernel-facts.md."""

    def __init__(self, levels: int) -> None:
        self.levels = levels
        self.nice: int | None = None  # the loop's nice value while boosted
        self._base: int | None = None
        self._warned = False

    def on(self) -> int | None:
        """Boost (from the loop's thread); the nice value it now runs at, or None."""
        if self.levels <= 0 or self._base is not None:
            return self.nice
        tid = threading.get_native_id()
        try:
            base = os.getpriority(os.PRIO_PROCESS, tid)
            want = max(-20, base - self.levels)
            os.setpriority(os.PRIO_PROCESS, tid, want)
        except OSError as e:
            if not self._warned:
                self._warned = True
                print(
                    f"ftcp run: cannot raise the supervisor's CPU priority for the recovery "
                    f"({e.strerror}); it runs at the application's (give --boost 0 to not "
                    "try)",
                    file=sys.stderr,
                    flush=True,
                )
            return None
        self._base, self.nice = base, want
        return want

    def off(self) -> None:
        """Back to the nice value from before `on` (from the loop's thread)."""
        if self._base is None:
            return
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._base)
        self._base = self.nice = None


@dataclass(slots=True)
class Timing:
    """One recovery, in loop seconds (for `ftcp bench recovery` and the status file)."""

    died: float
    detected: float = 0.0
    synced: float = 0.0  # the RECOVER is sent (behind every record of the crash)
    fetched: float = 0.0  # the logs are back from the logger (all of the answer)
    planned: float = 0.0  # every crashed connection is planned (its instream may follow)
    plan_s: float = 0.0  # time spent planning
    spawned: float = 0.0
    listening: float = 0.0
    rebuilt: dict[int, float] = field(default_factory=dict)  # conn id -> kernel conn rebuilt
    replayed: dict[int, float] = field(default_factory=dict)  # conn id -> replay done
    done: float | None = None
    logged_bytes: int = 0
    restore: str = "handshake"
    repaired: int = 0  # connections rebuilt with TCP_REPAIR
    queued_bytes: int = 0  # logged instream put straight into their receive queues
    fill_s: float = 0.0  # time spent putting it there (replay's, not restart's)
    nice: int | None = None  # the event loop's nice value during the recovery (`Boost`)
    addressed: float = 0.0  # a takeover: the service address was added and announced
    wall: float = 0.0  # a takeover: wall-clock time of `died` (the lease granted)

    def as_dict(self) -> dict[str, Any]:
        last = max(self.rebuilt.values(), default=None)
        restart = replay = None
        fetched = self.fetched or None
        if last is not None:
            # death -> rebuilt kernel connection, minus the application's own start-up and
            # the log transfer (that is replay's, as in the paper's Table V; the transfer
            # runs during the start-up, so restart + start-up + replay > total)
            rebuild = last - max(self.listening, self.planned)
            restart = (self.synced - self.died) + self.plan_s + rebuild - self.fill_s
            if self.replayed and fetched is not None:
                # the whole transfer, and what the refill (TCP_REPAIR's queue fill
                # included) and the replayed reads still took once the transfer had
                # ended (the instream streams into the rebuild: a large log's transfer
                # and refill overlap, and the time they overlap is counted once)
                replay = (
                    (fetched - self.synced)
                    + max(0.0, min(self.fill_s, last - fetched))
                    + max(0.0, max(self.replayed.values()) - max(last, fetched))
                )
        return {
            "detect_s": self.detected - self.died,
            "sync_s": self.synced - self.died,
            "fetch_s": None if fetched is None else fetched - self.synced,
            # the log transfer overlaps the application's start-up: how long the rebuild
            # still waited for it once the application listened (0: hidden entirely)
            "fetch_wait_s": max(0.0, self.planned - self.listening) if self.listening else None,
            "startup_s": self.listening - self.spawned if self.listening else None,
            "restart_s": restart,
            "replay_s": replay,
            "total_s": None if self.done is None else self.done - self.died,
            "logged_bytes": self.logged_bytes,
            "conns": len(self.rebuilt),
            "restore": self.restore,
            "repaired": self.repaired,
            "queued_bytes": self.queued_bytes,
            # when each step ended, in ms after the death (for reading a slow recovery)
            "at_ms": {
                k: round(1000 * (v - self.died), 3)
                for k, v in (
                    ("synced", self.synced),
                    ("planned", self.planned),
                    ("spawned", self.spawned),
                    ("listening", self.listening),
                    ("fetched", self.fetched),
                    ("rebuilt", last),
                    ("replayed", max(self.replayed.values(), default=None)),
                    ("done", self.done),
                )
                if v
            },
            "loop_nice": self.nice,
            "address_s": self.addressed - self.died if self.addressed else None,
            "wall_started": self.wall or None,
            "plan_ms": round(1000 * self.plan_s, 3),
            "fill_ms": round(1000 * self.fill_s, 3),
        }


class _LogFetch:
    """One streamed RECOVER: each crashed connection is planned as its head and reads
    arrive; `ready` once all of them are. Once the plans are `published` (the rebuild
    uses them), each new piece of a connection's instream pokes its refill.

    `want` None (a takeover): every connection of the log is adopted by the engine as
    its head arrives, and `ready` comes with the answer's end."""

    def __init__(self, rec: Recovery, want: dict[int, Conn] | None, t: Timing) -> None:
        self.rec = rec
        self.want = want
        self.t = t
        self.plans: dict[int, RecoveryPlan] = {}
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Future[Any] | None = None
        self.published = False
        self.ended: float | None = None  # when the answer's last frame was decoded

    def on_head(self, lg: ConnectionLog, arrival: Arrival) -> None:
        cid = lg.handshake.conn_id
        c = self.want.get(cid) if self.want is not None else None
        if cid in self.plans or self.ready.done() or (c is None and self.want is not None):
            return
        now = self.rec._now()  # noqa: SLF001
        try:
            hints = c.core.recovery_hints(now) if c is not None else {}
            plan = plan_recovery(lg, **hints, arrival=arrival)  # type: ignore[arg-type]
            if c is None:  # a takeover: this kernel never saw it
                self.rec.engine.adopt(lg.handshake, plan, now)
        except Exception as e:  # noqa: BLE001 - reported by the planning's await
            self.ready.set_exception(e)
            return
        self.t.plan_s += self.rec._now() - now  # noqa: SLF001
        self.t.logged_bytes += len(plan.instream)
        self.plans[cid] = plan
        if self.want is not None and len(self.plans) == len(self.want):
            self.ready.set_result(None)

    def on_end(self) -> None:
        self.ended = self.rec._now()  # noqa: SLF001
        if self.want is None and not self.ready.done():
            self.ready.set_result(None)

    def on_data(self, cid: int) -> None:
        if not self.published:
            return
        eng = self.rec.engine
        c = eng.by_id.get(cid)
        plan = self.plans.get(cid)
        if c is not None and plan is not None and c.core.plan is plan and c.core.refilling:
            eng.feed(c, InstreamArrived(self.rec._now()))  # noqa: SLF001


class Recovery:
    """Drives recovery for one `ftcp run` (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        agent: Agent,
        client: Any,  # LoggerClient
        *,
        port: int,
        spawn: Callable[[], Awaitable[AppProcess]],
        max_restarts: int = 5,
        backoff: float = 0.05,
        on_divergence: str = "continue",
        sync_timeout: float = 10.0,
        restore: str = "handshake",
        boost: int = 0,
    ) -> None:
        self.engine = engine
        self.agent = agent
        self.client = client
        self.port = port
        self.spawn = spawn
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.on_divergence = on_divergence
        self.sync_timeout = sync_timeout
        self.restore = restore
        self.boost = Boost(boost)
        self.plans: dict[int, RecoveryPlan] = {}
        self.crashes = 0
        self.recoveries = 0
        self.takeovers = 0  # host failover: takeovers by this supervisor
        self.restarts_in_row = 0
        self.gave_up = False
        self.divergences: list[Divergence] = []
        self.timings: list[Timing] = []
        self.pid: int | None = None
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._fetching: asyncio.Future[None] | None = None  # the rest of the log transfer
        self.check = OutstreamCheck()  # invariant 5

    # ------------------------------------------------------------------ state

    @property
    def active(self) -> bool:
        """A recovery is under way (SYNs are held)."""
        return self.engine.holding_syns

    def transfer(self) -> asyncio.Future[None] | None:
        """The rest of a log transfer under way (done when the answer is all in), or None."""
        f = self._fetching
        return None if f is None or f.done() else f

    def status(self) -> dict[str, Any]:
        return {
            "crashes": self.crashes,
            "recoveries": self.recoveries,
            "takeovers": self.takeovers,
            "recovering": self.active,
            "gave_up": self.gave_up,
            "waiting_for_logger": self.waiting_for_logger,
            "divergences": len(self.divergences),
            "divergence_list": [
                {"conn_id": d.conn_id, "offset": d.offset, "detail": d.detail}
                for d in self.divergences[-10:]
            ],
            "last": self.timings[-1].as_dict() if self.timings else None,
        }

    def started(self, proc: AppProcess) -> None:
        """The application (first incarnation or a restart) is running."""
        self.pid = proc.pid
        self._started_at = self._now()
        self.engine.app_started(self._app_alive)

    def close(self) -> None:
        """Stop any rebuild under way (the run is ending)."""
        for task in (self._task, self._fetching):
            if task is not None:
                task.cancel()
        self._task = self._fetching = None
        self.boost.off()

    def _app_alive(self) -> bool:
        return self.pid is not None and process_alive(self.pid)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------- the crash

    async def on_death(self, rc: int) -> AppProcess | None:
        """The application died from a signal: recover; the new process, or None (gave up)."""
        now = self._now()
        t = Timing(died=now, detected=now, restore=self.restore, nice=self.boost.on())
        self.crashes += 1
        self.pid = None
        if now - self._started_at > STABLE_AFTER:
            self.restarts_in_row = 0
        eng = self.engine
        eng.hold_syns()
        for task in (self._task, self._fetching):  # the previous attempt's
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._fetching = None
        crashed = eng.app_died(now)
        print(
            f"ftcp run: the application died from signal {_signame(rc)}; recovering "
            f"{len(crashed)} connection(s)",
            file=sys.stderr,
            flush=True,
        )
        if self.restarts_in_row >= self.max_restarts:
            self.give_up(f"it died {self.restarts_in_row + 1} times in a row")
            return None
        delay = 0.0 if self.restarts_in_row == 0 else self.backoff * 2 ** (self.restarts_in_row - 1)
        self.restarts_in_row += 1
        return await self._restart(crashed, t, delay)

    async def take_over(self, granted: float, addressed: float) -> AppProcess | None:
        """Host failover: this host was lent the application's lease (at loop time
        `granted`; the address was taken at `addressed`). Every live connection comes
        from the log onto a kernel that never saw it (the engine adopts each, CRASHED:
        its client held by closed-window acks); the application is started, and they
        are rebuilt and replayed as after a crash. The new process, or None (no log)."""
        now = self._now()
        t = Timing(died=granted, detected=granted, restore=self.restore, nice=self.boost.on())
        t.addressed = addressed
        t.wall = time.time() - (now - granted)
        self.takeovers += 1
        self.engine.hold_syns()
        print("ftcp run: taking over: fetching the log", file=sys.stderr, flush=True)
        return await self._restart(None, t, 0.0)

    async def _restart(
        self, crashed: list[Conn] | None, t: Timing, delay: float
    ) -> AppProcess | None:
        """Fetch the log (of `crashed`, or of every connection: a takeover) while the
        application starts again; the rebuild runs on from there."""
        # the log transfer and the application's start-up overlap: nothing the new process
        # does before the rebuild (which waits for the plans) touches a crashed connection,
        # and new SYNs wait in the gate
        self.plans = {}
        planning = asyncio.ensure_future(self._plan(crashed, t))
        proc: AppProcess | None = None
        watch: asyncio.Future[bool] | None = None
        try:
            if delay:
                await asyncio.sleep(delay)
            t.spawned = self._now()
            proc = await self.spawn()
            self.started(proc)
            watch = asyncio.ensure_future(self._wait_listening(proc, t))
            try:
                await planning
            except Exception as e:  # no log, no recovery
                watch.cancel()
                log.exception("recovery: cannot plan")
                await _stop(proc)
                self.pid = None
                self.give_up(f"cannot read the log back: {e}")
                return None
        except BaseException:
            planning.cancel()
            with contextlib.suppress(BaseException):
                await planning
            if watch is not None:
                watch.cancel()
            if proc is not None:
                await _stop(proc)
            raise
        assert watch is not None
        self.timings.append(t)
        self._task = asyncio.ensure_future(self._rebuild(proc, t, watch))
        return proc

    async def _wait_listening(self, proc: AppProcess, t: Timing) -> bool:
        """Until the new process listens (True; `t.listening` is when), or ends (False)."""
        while not listening(self.port):
            if proc.returncode is not None:
                return False
            await asyncio.sleep(LISTEN_POLL)
        t.listening = self._now()
        return True

    async def _plan(self, crashed: list[Conn] | None, t: Timing) -> None:
        """Sync with the logger, then ask for the logs: returns once every crashed
        connection is planned. The logger sends every head before any instream, so
        that is early; the instreams go on arriving into the plans' buffers (the
        refill takes what is there, `InstreamArrived` says when there is more) while
        `self._fetching` waits for the end of the answer."""
        eng, client = self.engine, self.client
        eng.send_logs()  # the records the crash produced
        want = None if crashed is None else {c.core.conn_id: c for c in crashed}
        box: list[_LogFetch] = []

        async def attempt() -> None:
            # no separate sync round trip: the RECOVER follows those records down the
            # same link (after a reconnection too: the client resends what is unacked
            # first), and the logger answers from its state once everything before the
            # request is durable
            f = _LogFetch(self, want, t)
            box[:] = [f]
            f.task = asyncio.ensure_future(
                client.recover_streaming(f.on_head, f.on_data, f.on_end)
            )
            if not t.synced:
                t.synced = self._now()
            try:
                await asyncio.wait({f.task, f.ready}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                f.task.cancel()
                raise
            if f.ready.done():
                f.ready.result()  # a log that cannot be planned raises here
            else:
                f.task.result()  # the link broke (the answer is complete otherwise)

        await self._from_logger(attempt)
        f = box[0]
        f.published = True
        plans = dict(sorted(f.plans.items(), key=lambda kv: kv[1].accept_order))
        self._fetching = asyncio.ensure_future(self._fetch_rest(f, t))
        for cid in set(want or ()) - set(plans):  # the answer ended without them
            # nothing logged: cannot be rebuilt (cannot happen after ESTABLISHED)
            log.error("recovery: conn %d has no log; resetting it", cid)
            self._reset_client(want[cid])  # type: ignore[index]
        self.plans = plans
        self.check.new_recovery()
        t.planned = self._now()

    async def _fetch_rest(self, f: _LogFetch, t: Timing) -> None:
        """The rest of a streamed answer (after every crashed connection was planned)."""
        try:
            await f.task
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # the plans' instreams will never be complete: start the recovery again
            # (from the log, once the logger is back), as after a death during recovery
            print(
                f"ftcp run: the log transfer broke off during recovery ({e}); "
                "restarting the application to recover again",
                file=sys.stderr,
                flush=True,
            )
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, 9)
            return
        t.fetched = f.ended if f.ended is not None else self._now()

    # -- logger link (supervisor owner): a recovery waits for a lost logger -------------
    waiting_for_logger = False

    async def _from_logger(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()` with `sync_timeout`, except while the logger link is down: then wait
        for it, however long (the log is the only source; never plan without it)."""
        client = self.client
        while True:
            if not getattr(client, "link_up", True):
                if not self.waiting_for_logger:
                    print(
                        "ftcp run: recovery waits for the logger (it needs the log)",
                        file=sys.stderr,
                        flush=True,
                    )
                self.waiting_for_logger = True
                await client.wait_up()
            try:
                return await asyncio.wait_for(call(), self.sync_timeout)
            except (TimeoutError, ConnectionError, OSError):
                if getattr(client, "link_up", True):
                    raise
            except Exception:
                if getattr(client, "link_up", True) or getattr(client, "closed", None):
                    raise
            finally:
                if getattr(client, "link_up", True):
                    self.waiting_for_logger = False

    async def _rebuild(
        self, proc: AppProcess, t: Timing, watch: asyncio.Future[bool]
    ) -> None:
        eng = self.engine
        presum = asyncio.ensure_future(self._presum())  # while the application starts
        try:
            try:
                if not await watch:
                    return
            finally:
                presum.cancel()  # the refill sums whatever is left as it goes
            for cid, plan in list(self.plans.items()):
                c = eng.by_id.get(cid)
                if c is None or c.core.state is not State.CRASHED:
                    continue
                self.agent.drop(cid, silent=True)
                self._evict_leftover(c)
                eng.feed(c, Rebuild(self._now(), plan, repair=self.restore == "repair"))
                while (
                    c.core.state is State.REPLAY_SYN_SENT
                    and not c.core.awaiting_repair
                    and proc.returncode is None
                ):
                    await asyncio.sleep(0.0005)
                if c.core.state is State.CRASHED or proc.returncode is not None:
                    return
                if self.restore != "repair":  # repair: when the accepted socket is repaired
                    t.rebuilt[cid] = self._now()
            while any(c.core.state in _RESTARTING for c in eng.conns.values()):
                if proc.returncode is not None:
                    return
                await asyncio.sleep(0.002)
            t.done = self._now()
            self.boost.off()
            self.recoveries += 1
            eng.release_syns()
            if self._fetching is not None and not self._fetching.done():
                # every instream was read back, so the answer's end is at most a frame
                # away; the timings need it
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._fetching), 5)
            last = t.as_dict()
            timing_file = os.environ.get("FTCP_BENCH_RECOVERY_TIMING")  # `ftcp bench recovery`
            if timing_file:
                with contextlib.suppress(OSError), open(timing_file, "a") as f:
                    f.write(json.dumps(last) + "\n")
            how = f" ({t.repaired} by TCP_REPAIR)" if self.restore == "repair" else ""
            print(
                f"ftcp run: recovered {len(t.rebuilt)} connection(s){how} in "
                f"{1000 * (t.done - t.died):.1f} ms (restart {_ms(last['restart_s'])}, "
                f"replay {_ms(last['replay_s'])}, app start-up {_ms(last['startup_s'])})",
                file=sys.stderr,
                flush=True,
            )
        except asyncio.CancelledError:
            watch.cancel()
            raise
        except Exception:
            self.boost.off()
            log.exception("recovery: rebuild failed")

    def _evict_leftover(self, c: Conn) -> None:
        """Free the 4-tuple of a crashed connection from a socket its last owner closed
        (`sockdiag.evict_closed`: a restarted application killed while it accepted the
        rebuilt connection leaves one; the reset its abort sends is dropped by SSW, as
        everything the crashed connection's server side sends)."""
        cip, cport, sip, sport = c.key
        try:
            state = sockdiag.evict_closed((sip, sport), (cip, cport))
        except OSError as e:
            log.warning("recovery: conn %d: cannot check its 4-tuple: %s", c.core.conn_id, e)
            return
        if state is not None:
            log.info("recovery: conn %d: aborted a leftover socket in %s", c.core.conn_id, state)

    async def _presum(self) -> None:
        """Checksum block sums of the logged instreams, in steps between other events
        (handshake restore: TCP_REPAIR queues the instream without segments)."""
        if self.restore == "repair":
            return
        if self._fetching is not None:  # not while the log is coming in (same loop)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._fetching)
        for cid, plan in list(self.plans.items()):
            while not self.engine.presum(cid, plan, PRESUM_STEP):
                await asyncio.sleep(0)
            await asyncio.sleep(0)

    def repair(self, c: Conn, fd: int) -> bool:
        """`--restore repair`: the application accepted the handshake connection of `c`
        (socket `fd`): rebuild it in place with TCP_REPAIR. False: the client was reset."""
        core = c.core
        now = self._now()
        try:
            res = repair_in_place(fd, core.repair_spec(now))
        except RepairError as e:
            how = (
                "the connection is lost; resetting the client"
                if e.touched
                else "going on with the handshake rebuild"
            )
            print(
                f"ftcp run: conn {core.conn_id}: {e} (errno {e.errno}); {how}",
                file=sys.stderr,
                flush=True,
            )
            if e.touched:
                self._reset_client(c)
                return False
            self.engine.feed(c, Repaired(self._now(), ok=False))
            rebuilt = self._now()
        else:
            # the kernel connection is back: what follows (the refill of what did not
            # fit the receive queue, or has not arrived yet) is replay
            rebuilt = self._now()
            log.info(
                "conn %d: repaired: %d of %d logged bytes queued, window %d",
                core.conn_id,
                res.queued,
                len(core.plan.instream) if core.plan is not None else 0,
                res.rcv_wnd,
            )
            self.engine.feed(c, Repaired(self._now(), res.rcv_nxt, res.rcv_wnd))
            if self.timings:
                self.timings[-1].repaired += 1
                self.timings[-1].queued_bytes += res.queued
                self.timings[-1].fill_s += res.fill_s
        if self.timings:
            self.timings[-1].rebuilt[core.conn_id] = rebuilt
        return True

    def replay_done(self, conn_id: int) -> None:
        c = self.engine.by_id.get(conn_id)
        if c is None or c.core.state is not State.REPLAYING:
            return
        self.engine.feed(c, ReplayDone(self._now()))
        if self.timings:
            self.timings[-1].replayed[conn_id] = self._now()

    # -------------------------------------------------------------- giving up

    def give_up(self, why: str) -> None:
        """No more restarts: every crashed client is reset (it would wait forever)."""
        self.gave_up = True
        self.boost.off()
        eng = self.engine
        n = 0
        for c in list(eng.conns.values()):
            if c.core.state in _RESTARTING:
                self._reset_client(c)
                n += 1
        eng.release_syns()
        print(
            f"ftcp run: giving up recovery ({why}); {n} connection(s) reset",
            file=sys.stderr,
            flush=True,
        )

    def _reset_client(self, c: Conn) -> None:
        self.engine.reset_client(c)
        self.agent.drop(c.core.conn_id, silent=True)

    # ------------------------------------------------------------- divergence

    def diverged(self, d: Divergence | None) -> None:
        """Report a divergence the check found, and apply `on_divergence`."""
        if d is None:
            return
        self.divergences.append(d)
        print(
            f"ftcp run: DIVERGENCE on connection {d.conn_id} at outstream byte {d.offset}: "
            f"{d.detail} (policy: {self.on_divergence})",
            file=sys.stderr,
            flush=True,
        )
        if self.on_divergence == "close":
            c = self.engine.by_id.get(d.conn_id)
            if c is not None and c.core.state is not State.CLOSED:
                self._reset_client(c)


async def _stop(proc: AppProcess) -> None:
    """Kill an application started for a recovery that cannot go on."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.stop(None), 5)


def _signame(rc: int) -> str:
    import signal

    try:
        return signal.Signals(-rc).name
    except ValueError:
        return str(-rc)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.1f} ms"


class RecoveryBridge(AgentBridge):
    """The NSW agent's handler with recovery: replay on accept, replay-done, divergence."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.recovery: Recovery | None = None

    def on_accept(self, info: AcceptInfo) -> Decision:
        rec = self.recovery
        if rec is not None and rec.plans:
            c = self.engine.conn_by_addr(info.local, info.remote)
            if c is not None:
                plan = rec.plans.get(c.core.conn_id)
                if plan is not None and c.core.awaiting_repair and not rec.repair(c, info.fd):
                    return super().on_accept(info)
                if plan is not None and c.core.state in (State.REPLAYING, State.REPLAY_SYN_SENT):
                    c.accepted = True
                    return Replay(
                        reads=plan.reads,
                        discard=plan.discard,
                        conn_id=plan.conn_id,
                    )
        return super().on_accept(info)

    def on_read(
        self, session: int, seq: int, conn_id: int, kind: Kind, value: int, wtotal: int, wcrc: int
    ) -> None:
        if self.recovery is not None:
            self.recovery.check.note(conn_id, wtotal, wcrc)
        super().on_read(session, seq, conn_id, kind, value, wtotal, wcrc)

    def on_replay_read(
        self, conn_id: int, index: int, kind: Kind, value: int, wtotal: int, wcrc: int
    ) -> None:
        rec = self.recovery
        if rec is not None:
            rec.diverged(rec.check.check(conn_id, wtotal, wcrc, f"replayed read {index}"))

    def on_write_mark(self, conn_id: int, total: int, crc: int, reason: MarkReason) -> None:
        rec = self.recovery
        if rec is None:
            return
        rec.diverged(rec.check.check(conn_id, total, crc, f"replay {reason.name.lower()}"))
        if reason == MarkReason.REPLAY_DONE:
            rec.replay_done(conn_id)

    def on_close(self, conn_id: int, how: How, wtotal: int, wcrc: int) -> None:
        if self.recovery is not None:
            if how == How.CLOSE:  # never recovered from here on: its points can go
                self.recovery.check.forget(conn_id)
            else:
                self.recovery.check.note(conn_id, wtotal, wcrc)
        super().on_close(conn_id, how, wtotal, wcrc)

    def on_mismatch(self, conn_id: int, index: int, code: MismatchCode, value: int) -> None:
        rec = self.recovery
        if rec is not None:
            rec.diverged(rec.check.unreplayable(conn_id, index, f"{code.name}, {value}"))

    def on_session_end(self, session: SessionInfo, orphans: list[int]) -> None:
        self.engine.end_source(session.session_id)
        if orphans:
            log.info("nsw: process %d ended holding connections %s", session.pid, orphans)
