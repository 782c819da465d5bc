"""The supervisor's side of the NSW shim: sessions, held sockets, read order.

`Agent` listens on a Unix ``SOCK_SEQPACKET`` socket (``FTCP_NSW_SOCK`` for the
shim) inside an asyncio loop. Each shim process that needs it connects once
(a *session*); the wire format is in `ftcp.nsw.proto`. The agent:

* keeps the duplicate of every protected socket the shim passes at accept
  (so a process death closes nothing and emits no FIN/RST) until the
  application's last close, or until the supervisor calls `drop`/`take_fd`;
* assigns ``conn_id`` and the mode (normal or replay) through
  `AgentHandler.on_accept`;
* hands each live read result to `AgentHandler.on_read` with its session and
  its number in that session (1, 2, ...), in the order the reports arrive;
* carries out output commit (`ftcp.core.commit` decides): `publish(session,
  count)` writes a session's released count to its shared page, where the
  shim waits for it before a write; with ``auto_log=True`` every read counts
  as released at once (a test without a logger);
* reports shutdown/close before it happens (`AgentHandler.on_close`, then
  the held duplicate is closed, then the shim is acked);
* tells the supervisor which connections lost their last process
  (`AgentHandler.on_session_end`), looking in ``/proc`` for holders it was
  not told about (exec'd images) before calling one lost.

Forked children (the fork race).  A connection's holders are the sessions
that hold it plus the children a parent announced (FORKED, with a pidfd)
that have no session yet.  The parent sends FORKED right after fork(), before
it can report any later close, and the child says HELLO only after that, so a
parent's close (socat closes its copy at once) is never the last close while
a child it announced may still hold the connection.  A child that ends
before its session exists, and a process killed while its close waited for
the ack (its real close never ran), *crashed*: the connection is then never
closed by the application (no FIN is let through) and, once no process holds
it, it is an orphan.  The end of a registered session is, as before, checked
against ``/proc`` (an exec'd image may still hold the socket).  A voluntary
exit (exit, _exit) reports its closes first (the shim).

Every method runs in the agent's loop thread; `AgentThread` runs an agent in
a thread of its own (tests, simple tools).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import inspect
import logging
import mmap
import os
import platform
import select
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcp.core.records import ReadLog
from ftcp.errors import RemoteProtocolError
from ftcp.nsw import proto
from ftcp.nsw.proto import How, Kind, MarkReason, MismatchCode, Mode

log = logging.getLogger("ftcp.nsw")

TCP_REPAIR = 19
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "riscv64": 98}.get(platform.machine())
_FUTEX_WAKE = 1
_READ_PACKET = struct.Struct("<HHI" + proto.READ.format.lstrip("<"))
_READ_SIZE = _READ_PACKET.size


# ---- what the supervisor sees and decides ----------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: int
    pid: int
    parent_session: int  # 0 unless a forked child


@dataclass(frozen=True, slots=True)
class AcceptInfo:
    """A protected connection the application just accepted."""

    session: SessionInfo
    family: int
    local: tuple[str, int]
    remote: tuple[str, int]
    fd: int  # the agent's duplicate (owned by the agent: do not close)


@dataclass(frozen=True, slots=True)
class Normal:
    """Serve the connection live. ``conn_id`` None: the agent numbers it."""

    conn_id: int | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """Recovery: reproduce ``reads`` exactly, swallow the first ``discard`` output bytes."""

    # (kind, length-or-errno) in logged order, or the logged reads themselves
    reads: Sequence[tuple[Kind, int]] | ReadLog
    discard: int  # A = server_seq - (s_isn + 1)
    conn_id: int | None = None


Decision = Normal | Replay


class AgentHandler:
    """Callbacks, all run in the agent's loop thread; override what you need.

    `on_accept` and `on_close` may return an awaitable: the shim waits (the
    application is blocked in accept/close) until it completes.
    """

    def on_session(self, session: SessionInfo) -> None:
        """A shim process connected."""

    def on_accept(self, info: AcceptInfo) -> Decision | Awaitable[Decision]:
        return Normal()

    def on_read(
        self, session: int, seq: int, conn_id: int, kind: Kind, value: int, wtotal: int, wcrc: int
    ) -> None:
        """Live read ``seq`` (1, 2, ... in its session) on ``conn_id``; ``value``: the
        length or errno. ``wtotal``/``wcrc``: the connection's output (bytes, CRC-32C)
        at that read.
        """

    def on_replay_read(
        self, conn_id: int, index: int, kind: Kind, value: int, wtotal: int, wcrc: int
    ) -> None:
        """Script entry ``index`` was served during replay (compare wtotal/wcrc)."""

    def on_write_mark(self, conn_id: int, total: int, crc: int, reason: MarkReason) -> None:
        """Replay output reached ``discard`` (DISCARD_END) or replay ended (REPLAY_DONE)."""

    def on_mismatch(self, conn_id: int, index: int, code: MismatchCode, value: int) -> None:
        """Replay could not reproduce script entry ``index``: the server diverged."""

    def on_close(self, conn_id: int, how: How, wtotal: int, wcrc: int) -> None | Awaitable[None]:
        """The application shuts down, or closes for the last time, the connection.

        Runs before the real call: no FIN leaves until this (and the ack) is done.
        For CLOSE the agent closes its duplicate after this returns.
        """

    def on_session_end(self, session: SessionInfo, orphans: list[int]) -> None:
        """A shim process went away. ``orphans``: connections it held that no
        process holds any more (the process died holding them: recover them).
        The agent still holds their sockets."""


# ---- internal state ---------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    conn_id: int
    fd: int | None
    info: AcceptInfo
    holders: set[int] = field(default_factory=set)  # session ids
    pending: set[int] = field(default_factory=set)  # pids of announced children, no session yet
    shared: bool = False  # may be held by processes we have no session with
    replay: bool = False
    crashed: SessionInfo | None = None  # a holder that ended holding it (never an app close)
    orphaned: bool = False  # reported to the handler as lost


@dataclass(slots=True)
class _Child:
    """A forked child its parent announced (FORKED) that has no session yet."""

    pid: int
    parent_session: int
    pidfd: int | None  # None: could not be watched (gone already)
    conns: dict[int, _Conn] = field(default_factory=dict)


class _Session:
    def __init__(self, agent: Agent, sock: socket.socket, session_id: int) -> None:
        self.agent = agent
        self.sock = sock
        self.id = session_id
        self.info: SessionInfo | None = None
        self.holds: set[int] = set()
        self.last_seq = 0  # its last live read
        self.out: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        self.paused = False
        self.closed = False
        self.draining = False
        self.pidfd: int | None = None  # the process (its identity: pids are reused)
        memfd = os.memfd_create("ftcp-nsw", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, proto.PAGE_SIZE)
            self.page = mmap.mmap(memfd, proto.PAGE_SIZE)
        except BaseException:
            os.close(memfd)
            raise
        self.memfd: int | None = memfd
        struct.pack_into("<Q", self.page, 16, proto.PAGE_MAGIC)
        self._logged = ctypes.c_uint64.from_buffer(self.page, 0)
        self._futex = ctypes.c_uint32.from_buffer(self.page, 8)
        self._waiters = ctypes.c_uint32.from_buffer(self.page, 12)

    def publish(self, seq: int) -> None:
        """Every live read of this session with seq <= `seq` is released."""
        self._logged.value = seq  # one aligned 8-byte store
        self._futex.value = seq & 0xFFFFFFFF
        if self._waiters.value and _SYS_FUTEX is not None:
            _libc().syscall(
                _SYS_FUTEX,
                ctypes.c_void_p(ctypes.addressof(self._futex)),
                _FUTEX_WAKE,
                0x7FFFFFFF,
                None,
                None,
                0,
            )

    @property
    def logged(self) -> int:
        return self._logged.value

    def release_page(self) -> None:
        del self._logged, self._futex, self._waiters
        self.page.close()
        if self.memfd is not None:
            os.close(self.memfd)
            self.memfd = None


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def process_alive(pid: int) -> bool:
    """Running and not exiting (a dying process's fds do not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    pf_exiting = 0x4
    return fields[0] not in ("Z", "X") and not int(fields[6]) & pf_exiting


def pidfd_exited(pidfd: int) -> bool:
    """Has the process behind `pidfd` ended? (A pidfd polls readable when it has.)"""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def sigkill_pending(pid: int) -> bool:
    """Has `pid` been sent SIGKILL it has not acted on yet? (True if it is gone.)"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & (1 << 8):
            return True
    return False


def holders_of(inodes: set[int], exclude: set[int]) -> dict[int, set[int]]:
    """For each socket inode, the pids (other than ours and `exclude`) with an fd on it:
    one pass over /proc however many sockets are asked about (~2 ms with 70 processes
    here; a crash asks about every connection its process held)."""
    targets = {f"socket:[{ino}]": ino for ino in inodes}
    me = os.getpid()
    found: dict[int, set[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me or pid in exclude:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        hits = []
        for f in fds:
            try:
                ino = targets.get(os.readlink(f"/proc/{pid}/fd/{f}"))
            except OSError:
                continue
            if ino is not None:
                hits.append(ino)
        if hits and process_alive(pid):
            for ino in hits:
                found.setdefault(ino, set()).add(pid)
    return found


def close_silently(fd: int) -> None:
    """Close a TCP socket without FIN or RST (TCP_REPAIR on first; needs CAP_NET_ADMIN)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    finally:
        s.close()


# ---- the agent --------------------------------------------------------------


class Agent:
    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: AgentHandler | None = None,
        *,
        auto_log: bool = False,
        first_conn_id: int = 1,
    ) -> None:
        self.path = os.fspath(path)
        self.handler = handler or AgentHandler()
        self.auto_log = auto_log
        self._next_conn = first_conn_id
        self._next_session = 1
        self._unpublished: set[_Session] = set()  # auto_log: sessions with reads to release
        self._sessions: dict[int, _Session] = {}
        self.conns: dict[int, _Conn] = {}
        self._children: dict[int, _Child] = {}  # pid -> announced child without a session
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle --

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        lst.bind(self.path)
        lst.listen(128)
        lst.setblocking(False)
        self._listener = lst
        self._loop.add_reader(lst.fileno(), self._on_listen)

    def close(self) -> None:
        """Stop listening, end every session, close every held socket."""
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for s in list(self._sessions.values()):
            self._close_session(s, notify=False)
        for ch in list(self._children.values()):
            self._forget_child(ch)
        for c in list(self.conns.values()):
            if c.fd is not None:
                os.close(c.fd)
        self.conns.clear()
        for t in self._tasks:
            t.cancel()

    # -- supervisor API --

    def env(self, port: int, shim: str | os.PathLike[str]) -> dict[str, str]:
        """Environment entries that put an application under this agent."""
        return {"LD_PRELOAD": os.fspath(shim), "FTCP_NSW_SOCK": self.path, "FTCP_PORT": str(port)}

    def publish(self, session_id: int, count: int) -> None:
        """Reads 1..`count` of session `session_id` are released: its writes may go."""
        s = self._sessions.get(session_id)
        if s is not None and not s.closed:
            s.publish(count)

    def fd(self, conn_id: int) -> int | None:
        """The agent's duplicate of a protected socket (still owned by the agent)."""
        c = self.conns.get(conn_id)
        return None if c is None else c.fd

    def take_fd(self, conn_id: int) -> int | None:
        """Hand the duplicate over to the caller (who must close it)."""
        c = self.conns.get(conn_id)
        if c is None or c.fd is None:
            return None
        fd, c.fd = c.fd, None
        return fd

    def drop(self, conn_id: int, *, silent: bool = False) -> None:
        """Close the duplicate now (silently: TCP_REPAIR first, no FIN/RST) and forget it."""
        c = self.conns.pop(conn_id, None)
        if c is None or c.fd is None:
            return
        if silent:
            close_silently(c.fd)
        else:
            os.close(c.fd)
        c.fd = None

    def sessions(self) -> list[SessionInfo]:
        return [s.info for s in self._sessions.values() if s.info is not None]

    # -- I/O --

    def _on_listen(self) -> None:
        assert self._listener is not None and self._loop is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("nsw agent: accept failed: %s", e)
                return
            sock.setblocking(False)
            try:
                s = _Session(self, sock, self._next_session)
            except OSError as e:
                log.warning("nsw agent: cannot create session page: %s", e)
                sock.close()
                continue
            self._next_session += 1
            self._sessions[s.id] = s
            self._loop.add_reader(sock.fileno(), self._on_readable, s)

    def _on_readable(self, s: _Session) -> None:
        try:
            self._drain(s)
        finally:
            if self._unpublished:  # auto_log: once per batch, not per read
                for u in self._unpublished:
                    if not u.closed:
                        u.publish(u.last_seq)
                self._unpublished.clear()

    def _drain(self, s: _Session) -> None:
        if s.draining:  # re-entered (a child's HELLO drains its parent first)
            return
        s.draining = True
        try:
            self._drain_loop(s)
        finally:
            s.draining = False

    def _drain_loop(self, s: _Session) -> None:
        while not s.paused and not s.closed:
            try:
                data, anc, _flags, _ = s.sock.recvmsg(proto.MAX_PACKET, socket.CMSG_SPACE(4 * 4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.info("nsw agent: session %d: %s", s.id, e)
                self._close_session(s)
                return
            fds = _fds_of(anc)
            if not data:
                for f in fds:
                    os.close(f)
                self._close_session(s)
                return
            try:
                if len(data) == _READ_SIZE and data[0] == proto.Msg.READ and not fds:
                    self._fast_read(s, data)
                else:
                    self._dispatch(s, proto.decode(data), fds)
            except RemoteProtocolError as e:
                log.error("nsw agent: session %d: %s; dropping it", s.id, e)
                for f in fds:
                    os.close(f)
                self._close_session(s)
                return

    def _fast_read(self, s: _Session, data: bytes) -> None:
        """READ without building a message object: one of these per application read."""
        _, flags, _, cid, seq, wtotal, kind, value, wcrc, _ = _READ_PACKET.unpack(data)
        if s.info is None or kind > Kind.ERROR:
            self._dispatch(s, proto.decode(data), [])  # raises the right error
            return
        if flags & proto.F_REPLAYED:
            self.handler.on_replay_read(cid, seq, Kind(kind), value, wtotal, wcrc)
        else:
            self._on_live_read(s, cid, seq, Kind(kind), value, wtotal, wcrc)

    def _send(self, s: _Session, packet: bytes, fds: Sequence[int] = ()) -> None:
        if s.closed:
            return
        if s.out:
            s.out.append((packet, [os.dup(f) for f in fds]))
            return
        try:
            _sendmsg(s.sock, packet, fds)
        except BlockingIOError:
            s.out.append((packet, [os.dup(f) for f in fds]))
            assert self._loop is not None
            self._loop.add_writer(s.sock.fileno(), self._on_writable, s)
        except OSError as e:
            log.info("nsw agent: session %d: send: %s", s.id, e)

    def _on_writable(self, s: _Session) -> None:
        assert self._loop is not None
        while s.out:
            packet, fds = s.out[0]
            try:
                _sendmsg(s.sock, packet, fds)
            except BlockingIOError:
                return
            except OSError as e:
                log.info("nsw agent: session %d: send: %s", s.id, e)
                for _, queued in s.out:
                    for f in queued:
                        os.close(f)
                s.out.clear()
                break
            s.out.popleft()
            for f in fds:
                os.close(f)
        self._loop.remove_writer(s.sock.fileno())

    def _pause_until(self, s: _Session, work: Awaitable[None]) -> None:
        """Stop reading `s` until `work` completes (the shim waits for its reply)."""
        assert self._loop is not None
        s.paused = True

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("nsw agent: session %d: callback failed", s.id)
            finally:
                s.paused = False
                if not s.closed:
                    self._on_readable(s)

        task = self._loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- messages --

    def _dispatch(self, s: _Session, msg: proto.ShimMessage, fds: list[int]) -> None:
        if s.info is None and not isinstance(msg, proto.Hello):
            raise RemoteProtocolError(f"nsw: {type(msg).__name__} before HELLO")
        match msg:
            case proto.Read():
                self._on_read(s, msg)
            case proto.Hello():
                if s.info is not None:
                    raise RemoteProtocolError("nsw: second HELLO")
                if msg.version != proto.VERSION:
                    raise RemoteProtocolError(f"nsw: shim version {msg.version}")
                s.info = SessionInfo(s.id, msg.pid, msg.parent_session)
                assert s.memfd is not None
                self._send(s, proto.hello_reply(s.id), [s.memfd])
                os.close(s.memfd)
                s.memfd = None
                self._on_hello(s)
                self.handler.on_session(s.info)
            case proto.Accept():
                if len(fds) != 1:
                    for f in fds:
                        os.close(f)
                    raise RemoteProtocolError(f"nsw: ACCEPT with {len(fds)} fds")
                self._on_accept(s, msg, fds[0])
                return
            case proto.WriteMarkMsg():
                self.handler.on_write_mark(msg.conn_id, msg.total, msg.crc, msg.reason)
            case proto.CloseMsg():
                self._on_close(s, msg)
            case proto.Fork():
                for cid in s.holds:
                    if cid in self.conns:
                        self.conns[cid].shared = True
            case proto.Hold():
                c = self.conns.get(msg.conn_id)
                if c is not None:
                    c.holders.add(s.id)
                    c.shared = True
                    s.holds.add(msg.conn_id)
            case proto.Forked():
                self._on_forked(s, msg, fds.pop(0) if fds else None)
            case proto.Mismatch():
                self.handler.on_mismatch(msg.conn_id, msg.index, msg.code, msg.value)
        for f in fds:
            os.close(f)

    def _on_read(self, s: _Session, msg: proto.Read) -> None:
        if msg.replayed:
            self.handler.on_replay_read(
                msg.conn_id, msg.seq, msg.kind, msg.value, msg.wtotal, msg.wcrc
            )
        else:
            self._on_live_read(s, msg.conn_id, msg.seq, msg.kind, msg.value, msg.wtotal, msg.wcrc)

    def _on_live_read(
        self, s: _Session, cid: int, seq: int, kind: Kind, value: int, wtotal: int, wcrc: int
    ) -> None:
        s.last_seq = seq
        if self.auto_log:
            self._unpublished.add(s)  # a parent's reads may be drained in its child's turn
        self.handler.on_read(s.id, seq, cid, kind, value, wtotal, wcrc)

    def _on_accept(self, s: _Session, msg: proto.Accept, fd: int) -> None:
        assert s.info is not None
        info = AcceptInfo(s.info, msg.family, msg.local, msg.remote, fd)
        try:
            res = self.handler.on_accept(info)
        except Exception:
            log.exception("nsw agent: on_accept failed; serving the connection live")
            res = Normal()

        def finish(decision: Decision) -> None:
            cid = decision.conn_id
            if cid is None:
                cid = self._next_conn
            self._next_conn = max(self._next_conn, cid + 1)
            if cid in self.conns:
                log.error("nsw agent: conn_id %d reused while live", cid)
            conn = _Conn(cid, fd, info, {s.id}, replay=isinstance(decision, Replay))
            self.conns[cid] = conn
            s.holds.add(cid)
            if isinstance(decision, Replay):
                reads = decision.reads
                if isinstance(reads, ReadLog):  # recovery: packed as the logger sent them
                    packets = proto.script_packets_packed(reads.script())
                else:
                    packets = proto.script_packets([(int(k), int(v)) for k, v in reads])
                self._send(s, proto.accept_reply(cid, Mode.REPLAY, len(reads), decision.discard))
                for p in packets:
                    self._send(s, p)
            else:
                self._send(s, proto.accept_reply(cid, Mode.NORMAL))

        if inspect.isawaitable(res):
            awaitable = res

            async def later() -> None:
                try:
                    decision = await awaitable
                except Exception:
                    log.exception("nsw agent: on_accept failed; serving the connection live")
                    decision = Normal()
                finish(decision)

            self._pause_until(s, later())
        else:
            finish(res)

    def _on_close(self, s: _Session, msg: proto.CloseMsg) -> None:
        c = self.conns.get(msg.conn_id)
        final = True
        if msg.how == How.CLOSE:
            s.holds.discard(msg.conn_id)
            if c is not None:
                c.holders.discard(s.id)
                self._settle_children(c)
                if self._dying(s):
                    # Killed while it waited for our ack: its real close never ran, its
                    # death released the socket. Never the application's close.
                    final = False
                    self._died_holding(s, c)
                elif c.holders or c.pending:
                    final = False  # another process holds it (or may: a child not heard from)
                elif c.crashed is not None:
                    final = False  # a holder died holding it: a crash, not the app's close
                    self._died_holding(s, c)
                elif c.shared and c.fd is not None:
                    self._pause_until(s, self._close_if_unheld(s, msg, c))
                    return
        if not final or c is None:
            self._send(s, proto.ack(msg.conn_id))
            return
        later = self._final_close(s, msg)
        if later is not None:
            self._pause_until(s, later)

    def _died_holding(self, s: _Session, c: _Conn) -> None:
        """A process died holding `c` (`s`'s, unless an earlier death is known): once
        nothing else may hold it, the connection crashed."""
        if c.crashed is None:
            c.crashed = s.info
        if self._orphaned(c):
            self.handler.on_session_end(c.crashed, [c.conn_id])

    def _final_close(self, s: _Session, msg: proto.CloseMsg) -> Awaitable[None] | None:
        """The application's own close: the handler's `on_close`, then (a full close)
        the connection dropped, and the shim's ack. When the handler's answer is
        awaitable, the rest waits for it: the coroutine to run is returned."""

        def finish() -> None:
            if msg.how == How.CLOSE:
                self.drop(msg.conn_id)
            self._send(s, proto.ack(msg.conn_id))

        try:
            res = self.handler.on_close(msg.conn_id, msg.how, msg.wtotal, msg.wcrc)
        except BaseException:
            finish()
            raise
        if not inspect.isawaitable(res):
            finish()
            return None
        awaitable = res

        async def later() -> None:
            try:
                await awaitable
            finally:
                finish()

        return later()

    async def _close_if_unheld(self, s: _Session, msg: proto.CloseMsg, c: _Conn) -> None:
        """The application closed a socket that processes without a session may hold
        (forked, or exec'd): final only if none does. The /proc scan takes ms and runs
        in a thread: the loop meanwhile goes on with packets (the shim waits for its
        ack anyway)."""
        assert s.info is not None and c.fd is not None and self._loop is not None
        cid = c.conn_id
        ino = os.fstat(c.fd).st_ino
        found = await self._loop.run_in_executor(None, holders_of, {ino}, {s.info.pid})
        others = found.get(ino, set())
        if self.conns.get(cid) is not c:
            self._send(s, proto.ack(cid))
            return
        if self._dying(s):  # killed during the scan: its death, not its close
            self._died_holding(s, c)
            self._send(s, proto.ack(cid))
            return
        if others or c.holders or c.pending or c.crashed is not None:
            if others:
                log.debug("conn %d still held by %s", cid, sorted(others))
            self._send(s, proto.ack(cid))
            return
        later = self._final_close(s, msg)
        if later is not None:
            await later

    def _close_session(self, s: _Session, *, notify: bool = True) -> None:
        if s.closed:
            return
        s.closed = True
        if self._loop is not None:
            self._loop.remove_reader(s.sock.fileno())
            if s.out:
                self._loop.remove_writer(s.sock.fileno())
        s.sock.close()
        for _, queued in s.out:
            for f in queued:
                os.close(f)
        s.out.clear()
        self._sessions.pop(s.id, None)
        s.release_page()
        if s.pidfd is not None:
            os.close(s.pidfd)
            s.pidfd = None
        orphans = []
        held: list[_Conn] = []
        for cid in sorted(s.holds):
            c = self.conns.get(cid)
            if c is None:
                continue
            c.holders.discard(s.id)
            if c.fd is None:
                continue
            # Ended (or exec'd: then its image may hold it without a session, and a
            # session's end cannot tell the two apart once the image has exited).
            c.shared = True
            held.append(c)
        if notify and held:
            others = self._scan([c for c in held if self._may_be_orphaned(c)])
            orphans = [c.conn_id for c in held if self._orphaned(c, others)]
        s.holds.clear()
        if notify and s.info is not None:
            self.handler.on_session_end(s.info, orphans)

    # -- forked children --

    def _on_forked(self, s: _Session, msg: proto.Forked, pidfd: int | None) -> None:
        """The parent (session `s`) forked child `msg.pid`, which holds `msg.conn_ids`."""
        assert s.info is not None and self._loop is not None
        ch = self._children.get(msg.pid)
        if ch is not None and ch.parent_session != s.id:  # an earlier process with that pid
            self._child_ended(ch)
            ch = None
        if ch is None:
            if pidfd is None:
                try:
                    pidfd = os.pidfd_open(msg.pid)
                except OSError:
                    pidfd = None  # gone already (or no pidfd: then it cannot be watched)
            ch = _Child(msg.pid, s.id, pidfd)
            self._children[msg.pid] = ch
            if pidfd is not None:
                self._loop.add_reader(pidfd, self._child_ended, ch)
        elif pidfd is not None:
            os.close(pidfd)
        for cid in msg.conn_ids:
            c = self.conns.get(cid)
            if c is None or c.fd is None:
                continue
            ch.conns[cid] = c
            c.pending.add(ch.pid)
            c.shared = True
        log.debug("nsw agent: pid %d forked %d holding %s", s.info.pid, ch.pid, list(msg.conn_ids))
        if ch.pidfd is None:
            self._child_ended(ch)

    def _on_hello(self, s: _Session) -> None:
        """A session's HELLO: if its process is a child its parent announced, it holds
        what the parent said (its HOLDs then only repeat it)."""
        info = s.info
        assert info is not None
        if info.parent_session:
            parent = self._sessions.get(info.parent_session)
            if parent is not None and not parent.paused and not parent.closed:
                self._drain(parent)  # the parent's FORKED was sent before this HELLO
        ch = self._children.get(info.pid)
        if ch is not None and ch.parent_session == info.parent_session:
            if ch.pidfd is not None and self._loop is not None:
                self._loop.remove_reader(ch.pidfd)  # the session keeps the pidfd, unwatched
            s.pidfd, ch.pidfd = ch.pidfd, None
            self._forget_child(ch)
            for cid, c in ch.conns.items():
                if self.conns.get(cid) is c:
                    c.pending.discard(ch.pid)
                    c.holders.add(s.id)
                    s.holds.add(cid)
        if s.pidfd is None:
            with contextlib.suppress(OSError):
                s.pidfd = os.pidfd_open(info.pid)  # it waits for our reply: it exists

    def _dying(self, s: _Session) -> bool:
        """Has the process of session `s` ended, or is it being killed?"""
        if s.info is None:
            return False
        if s.pidfd is not None and pidfd_exited(s.pidfd):
            return True
        return not process_alive(s.info.pid) or sigkill_pending(s.info.pid)

    def _forget_child(self, ch: _Child) -> None:
        if self._children.get(ch.pid) is ch:
            del self._children[ch.pid]
        if ch.pidfd is not None:
            if self._loop is not None:
                self._loop.remove_reader(ch.pidfd)
            os.close(ch.pidfd)
            ch.pidfd = None

    def _child_alive(self, ch: _Child) -> bool:
        if ch.pidfd is not None:
            return not pidfd_exited(ch.pidfd)
        return False

    def _settle_children(self, c: _Conn) -> None:
        """Resolve the announced children of `c` that have ended."""
        for pid in list(c.pending):
            ch = self._children.get(pid)
            if ch is None:
                c.pending.discard(pid)
            elif not self._child_alive(ch):
                self._child_ended(ch)

    def _child_ended(self, ch: _Child) -> None:
        """An announced child ended (its pidfd fired) or cannot be watched."""
        if self._children.get(ch.pid) is not ch:
            return
        # It says HELLO only after its parent's FORKED: a session of it, if any, is
        # queued now. Read new sessions first (its HELLO takes the entry over).
        if self._listener is not None:
            self._on_listen()
        for s in list(self._sessions.values()):
            if s.info is None and not s.closed and not s.paused:
                self._drain(s)
        if self._children.get(ch.pid) is not ch:
            return  # it had a session after all: the session's end decides
        self._forget_child(ch)
        gone = SessionInfo(0, ch.pid, ch.parent_session)
        orphans = []
        for cid, c in sorted(ch.conns.items()):
            if self.conns.get(cid) is not c or ch.pid not in c.pending:
                continue
            c.pending.discard(ch.pid)
            if any(
                s.info is not None and s.info.pid == ch.pid and cid in s.holds
                for s in self._sessions.values()
            ):
                continue  # registered by HOLD on a session of its own
            log.info("nsw agent: conn %d: child %d ended before its session", cid, ch.pid)
            if c.crashed is None:
                c.crashed = gone
            if self._orphaned(c):
                orphans.append(cid)
        if orphans:
            self.handler.on_session_end(gone, orphans)

    def _may_be_orphaned(self, c: _Conn) -> bool:
        return not c.orphaned and c.fd is not None and not c.holders

    @staticmethod
    def _scan(conns: list[_Conn]) -> dict[int, set[int]]:
        """Processes holding each of `conns`' sockets, by inode (one /proc pass)."""
        inodes = {os.fstat(c.fd).st_ino for c in conns if c.fd is not None}
        return holders_of(inodes, set()) if inodes else {}

    def _orphaned(self, c: _Conn, others: dict[int, set[int]] | None = None) -> bool:
        """Has `c` just lost its last holder? (Reported once.) `others`: a `_scan`
        that covered `c` (default: scan for it now)."""
        if not self._may_be_orphaned(c):
            return False
        self._settle_children(c)
        if c.pending or c.orphaned:
            return False
        assert c.fd is not None
        if others is None:
            others = self._scan([c])
        if others.get(os.fstat(c.fd).st_ino):
            c.shared = True  # held by a process without a session (exec'd image)
            return False
        c.orphaned = True
        return True


def _fds_of(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(data) // 4
            fds.extend(struct.unpack(f"{n}i", data[: 4 * n]))
    return fds


def _sendmsg(sock: socket.socket, packet: bytes, fds: Sequence[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    while True:
        try:
            sock.sendmsg([packet], anc)
            return
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno == errno.EAGAIN:
                raise BlockingIOError(e.errno, e.strerror) from None
            raise


# ---- running an agent in a thread --------------------------------------------


class AgentThread:
    """An `Agent` with its own event loop in a daemon thread (a context manager).

    Handler callbacks run in that thread. `call` runs a function (or awaits a
    coroutine function) there and returns its result.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: AgentHandler | None = None,
        **kwargs: Any,
    ) -> None:
        self.agent = Agent(path, handler, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nsw-agent", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def __enter__(self) -> AgentThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.agent.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call(self.agent.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10, **kw: Any) -> Any:
        async def run() -> Any:
            r = fn(*args, **kw)
            if inspect.isawaitable(r):
                r = await r
            return r

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)
