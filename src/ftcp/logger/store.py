"""The logger's durable store: append-only segment files, group commit, replay.

Layout (under the data directory)::

    LOCK                          flock'd by the running daemon
    apps/<hex(app_id)>/00000001.seg
    apps/<hex(app_id)>/00000002.seg ...

A segment starts with a 16-byte header (`b"FTCPSEG1"`, segment number u32,
reserved u32) followed by entries::

    length u32 | crc32 u32 (zlib, over the body) | body = kind u8 + data

Kinds: META (the application's id and flags plus a checkpoint of the
read-order watermark; always the first entry of a segment), RECORDS (a batch
of records exactly as the wire carried them — see `ftcp.core.wire`), DELETE
(explicit deletion of connections, or of the whole application), LEASE (the
last lease epoch lent, for host failover: written when an epoch is lent and
again after the META of every new segment, so it outlives dropped segments).

Startup replays every segment of every application through
`AppState.apply`, in order. The first entry whose header, length or CRC does
not check out ends the log: the file is truncated there (a torn tail after a
crash) and any later segment is renamed `*.orphan` and ignored. Writing
always starts a fresh segment after a restart.

Sync policies: `always` writes and fdatasyncs each batch on its own before it
is acknowledged; `batch` (group commit) takes everything that arrived while
the previous write+fdatasync ran and commits it with one fdatasync per file
(the commits are pipelined: the next group is taken the moment the previous
one is durable, while the event loop keeps receiving; a group's entries are
acknowledged only after its own fdatasync returned);
`none` acknowledges after write() (unsafe against power loss or a kernel
crash; for benchmarks). A segment's creation is made durable (file and
directory fsync) before anything in it is acknowledged.

Rotation happens when the active segment passes `segment_size`. Deletion is
logical (a `Finished` record in connection-scoped mode, or a DELETE entry);
space comes back by dropping whole segments: a segment other than the
active one is unlinked once every connection it names is deleted, and, if it
holds a tombstone, once no other segment still holds records of the
tombstoned connection (otherwise a restart would resurrect it). A single
long-lived connection therefore pins the segments it appears in — simple,
and documented.

Write errors (ENOSPC, EIO, ...) stop acknowledgement: the failed write is
truncated away, nothing in it is acked, and the whole group is retried every
`retry_interval` seconds until it succeeds.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import errno
import fcntl
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftcp.core import wire
from ftcp.errors import RemoteProtocolError, UserError
from ftcp.logger.state import AppState

log = logging.getLogger("ftcp.logger")

SEG_MAGIC = b"FTCPSEG1"
_SEG_HEADER = struct.Struct("!8sII")
SEG_HEADER_LEN = _SEG_HEADER.size
_ENTRY = struct.Struct("!II")
ENTRY_HEADER_LEN = _ENTRY.size
MAX_ENTRY = 64 << 20

KIND_META = 1
KIND_RECORDS = 2
KIND_DELETE = 3
KIND_LEASE = 4
_LEASE_EPOCH = struct.Struct("!I")
_META = struct.Struct("!BQI")
_DELETE_HEAD = struct.Struct("!B")

DEFAULT_SEGMENT_SIZE = 64 << 20
HIGH_WATER = 64 << 20  # pending bytes above which peers stop being read
LOW_WATER = 16 << 20


class SyncPolicy(enum.StrEnum):
    ALWAYS = "always"
    BATCH = "batch"
    NONE = "none"


OrderState = tuple[int, tuple[int, ...]]


@dataclass(slots=True)
class Entry:
    """One store entry waiting to be written; `on_durable` runs once it is."""

    app: AppLog
    kind: int
    data: bytes
    conns: set[int]
    tombstones: set[int]
    orders: OrderState
    on_durable: Callable[[], None] | None = None
    reset: bool = False  # a DELETE of the whole application
    seg_no: int = 0

    @property
    def size(self) -> int:
        return ENTRY_HEADER_LEN + 1 + len(self.data)


@dataclass(slots=True)
class SegInfo:
    no: int
    path: Path
    refs: set[int] = field(default_factory=set)
    tombs: set[int] = field(default_factory=set)


def encode_entry(kind: int, data: bytes) -> bytes:
    kb = bytes((kind,))
    return _ENTRY.pack(len(data) + 1, zlib.crc32(data, zlib.crc32(kb))) + kb + data


def meta_data(app_id: str, whole_history: bool, orders: OrderState) -> bytes:
    nxt, ooo = orders
    return (
        _META.pack(1 if whole_history else 0, nxt, len(ooo))
        + struct.pack(f"!{len(ooo)}Q", *ooo)
        + app_id.encode()
    )


def parse_meta(data: bytes) -> tuple[str, bool, OrderState]:
    flags, nxt, n = _META.unpack_from(data)
    off = _META.size
    ooo = struct.unpack_from(f"!{n}Q", data, off)
    app_id = data[off + 8 * n :].decode()
    return app_id, bool(flags & 1), (nxt, tuple(ooo))


DELETE_ALL = 0x01  # every connection of the application
DELETE_EPOCH = 0x02  # with ALL: a new supervisor run; its ids and read orders start afresh


def delete_data(conn_ids: tuple[int, ...], all_: bool, epoch: bool = False) -> bytes:
    flags = (DELETE_ALL if all_ else 0) | (DELETE_EPOCH if epoch else 0)
    return _DELETE_HEAD.pack(flags) + struct.pack(f"!{len(conn_ids)}Q", *conn_ids)


def lease_data(epoch: int) -> bytes:
    return _LEASE_EPOCH.pack(epoch)


def parse_delete(data: bytes) -> tuple[tuple[int, ...], int]:
    """(connection ids, DELETE_* flags)."""
    (flags,) = _DELETE_HEAD.unpack_from(data)
    if flags & ~(DELETE_ALL | DELETE_EPOCH):
        raise RemoteProtocolError(f"unknown DELETE flags {flags:#x}")
    rest = data[1:]
    return struct.unpack(f"!{len(rest) // 8}Q", rest), flags


def read_entries(buf: bytes) -> tuple[list[tuple[int, bytes]], int, str | None]:
    """Parse a segment: (entries, length of the valid prefix, why parsing stopped early)."""
    if len(buf) < SEG_HEADER_LEN:
        return [], 0, f"segment header truncated ({len(buf)} bytes)"
    magic, _no, _ = _SEG_HEADER.unpack_from(buf)
    if magic != SEG_MAGIC:
        return [], 0, "bad segment magic"
    out = []
    off = SEG_HEADER_LEN
    n = len(buf)
    mv = memoryview(buf)
    while off < n:
        if n - off < ENTRY_HEADER_LEN:
            return out, off, f"torn entry header at offset {off}"
        length, crc = _ENTRY.unpack_from(buf, off)
        if length == 0 or length > MAX_ENTRY:
            return out, off, f"bad entry length {length} at offset {off}"
        end = off + ENTRY_HEADER_LEN + length
        if end > n:
            return out, off, f"torn entry at offset {off} ({length} bytes, {n - off - 8} present)"
        body = mv[off + ENTRY_HEADER_LEN : end]
        if zlib.crc32(body) != crc:
            return out, off, f"CRC mismatch at offset {off}"
        out.append((body[0], bytes(body[1:])))
        off = end
    return out, off, None


class AppLog:
    """One application's in-memory state and its segment files."""

    def __init__(self, root: Path, app_id: str, whole_history: bool) -> None:
        self.app_id = app_id
        self.dir = root / app_id.encode().hex()
        self.state = AppState(app_id, whole_history)
        self.segments: dict[int, SegInfo] = {}
        self.conn_segs: dict[int, set[int]] = {}
        self.last_no = 0
        self.active: SegInfo | None = None  # the segment being appended to
        self.fd: int | None = None
        self.size = 0
        self.durable_orders: OrderState = (0, ())
        self.pending = 0  # entries submitted, not yet durable
        self.rotated = False
        self.lease_epoch = 0  # the last lease epoch lent (host failover); never goes back

    def snapshot_orders(self) -> OrderState:
        st = self.state
        return (st.next_order, st.ooo_orders() if st._ooo_set else ())

    def reset(self, *, epoch: bool = False) -> set[int]:
        """Forget every connection (DELETE of the whole app); return their ids.

        Deleted ids stay refused, so a late record of one is not taken for a new
        connection, unless `epoch`: a new supervisor run, whose connection ids and
        read orders start again from the beginning (no earlier session is left
        to send a late record).
        """
        old = self.state
        gone = set(old.conns)
        self.state = AppState(self.app_id, old.whole_history)
        if not epoch:
            self.state.deleted = old.deleted | gone
        return gone

    def has_history(self) -> bool:
        """Anything a new supervisor run would collide with (ids, orders, deletions)."""
        st = self.state
        return bool(st.conns or st.deleted or st.next_order or st._ooo_set)

    # -- bookkeeping shared by replay and live writes ---------------------------

    def note(self, seg_no: int, conns: set[int], tombs: set[int]) -> None:
        seg = self.segments[seg_no]
        if conns:
            seg.refs |= conns
            cs = self.conn_segs
            for c in conns:
                s = cs.get(c)
                if s is None:
                    cs[c] = {seg_no}
                else:
                    s.add(seg_no)
        if tombs:
            seg.tombs |= tombs

    def droppable(self) -> list[SegInfo]:
        """Segments that can be unlinked now (see the module docstring)."""
        deleted = self.state.deleted
        live_conns = self.state.conns
        out = []
        gone: set[int] = set()
        changed = True
        while changed:
            changed = False
            for no in sorted(self.segments):
                seg = self.segments[no]
                if seg is self.active or no in gone:
                    continue
                if any(c in live_conns or c not in deleted for c in seg.refs):
                    continue
                if any(self.conn_segs.get(c, set()) - gone - {no} for c in seg.tombs):
                    continue
                gone.add(no)
                out.append(seg)
                changed = True
        return out

    def forget(self, seg: SegInfo) -> None:
        self.segments.pop(seg.no, None)
        for c in seg.refs:
            s = self.conn_segs.get(c)
            if s is not None:
                s.discard(seg.no)
                if not s:
                    del self.conn_segs[c]

    def apply_entry(self, kind: int, data: bytes) -> tuple[set[int], set[int]]:
        """Replay one stored entry; returns (conns named, tombstones)."""
        if kind == KIND_RECORDS:
            wire.validate_records(data)
            applied = self.state.apply_raw(data)
            return applied.conns, applied.tombstones
        if kind == KIND_DELETE:
            ids, flags = parse_delete(data)
            if flags & DELETE_ALL:
                gone = self.reset(epoch=bool(flags & DELETE_EPOCH))
                return gone, gone
            self.state.delete(ids)
            return set(ids), set(ids)
        if kind == KIND_LEASE:
            (epoch,) = _LEASE_EPOCH.unpack(data)
            self.lease_epoch = max(self.lease_epoch, epoch)
            return set(), set()
        if kind == KIND_META:
            app_id, _whole, orders = parse_meta(data)
            if app_id != self.app_id:
                raise RemoteProtocolError(f"segment of {app_id!r} in the dir of {self.app_id!r}")
            self.state.restore_orders(*orders)
            return set(), set()
        raise RemoteProtocolError(f"unknown entry kind {kind}")


try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (ValueError, OSError):  # pragma: no cover
    _IOV_MAX = 1024


def _write_all(fd: int, data: bytes | memoryview | list[bytes | memoryview]) -> None:
    """Write every byte of `data` (one buffer, or a list written with `writev`: the
    entries go from the records' own buffers to the file without being joined first)."""
    if not isinstance(data, list):
        data = [data]
    bufs = [b for b in data if len(b)]
    i = 0
    while i < len(bufs):
        n = os.writev(fd, bufs[i : i + _IOV_MAX])
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        while n:
            left = len(bufs[i])
            if n >= left:
                n -= left
                i += 1
            else:
                bufs[i] = memoryview(bufs[i])[n:]
                n = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Durable store for every application; `run()` is the committer task."""

    def __init__(
        self,
        data_dir: Path,
        sync: SyncPolicy = SyncPolicy.BATCH,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        retry_interval: float = 1.0,
        on_pressure: Callable[[bool], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "apps"
        self.sync = SyncPolicy(sync)
        self.segment_size = segment_size
        self.retry_interval = retry_interval
        self.on_pressure = on_pressure
        self.apps: dict[str, AppLog] = {}
        self._pending: collections.deque[Entry] = collections.deque()
        self._pending_bytes = 0
        self._pressured = False
        self._submitted = 0
        self._durable_count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._lock_fd: int | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ftcp-store")
        # the committer: one thread doing write+fdatasync of one group at a time, handed
        # groups through `_jobs` and reporting back with `call_soon_threadsafe` (no
        # executor future, no task wake-up between a group and the next)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy = False  # a group is being written (or waits to be retried)
        self.failing: str | None = None  # why writes fail, while they do
        self.stats = {"groups": 0, "entries": 0, "bytes": 0, "syncs": 0}

    # -- startup ----------------------------------------------------------------

    def open(self) -> None:
        """Lock the data dir and replay every application's segments."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise UserError(f"data dir {self.data_dir} is not writable: {e.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            raise UserError(f"data dir {self.data_dir} is in use by another logger") from None
        self._lock_fd = lock
        probe = self.data_dir / ".write-probe"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as e:
            raise UserError(f"data dir {self.data_dir} is not writable: {e.strerror}") from None
        t0 = time.monotonic()
        n_entries = 0
        for d in sorted(self.root.iterdir()):
            if not d.is_dir():
                continue
            try:
                app_id = bytes.fromhex(d.name).decode()
            except (ValueError, UnicodeDecodeError):
                log.warning("ignoring %s: not an application directory", d)
                continue
            n_entries += self._replay_app(d, app_id)
        if self.apps:
            log.info(
                "replayed %d entries of %d application(s) in %.2fs",
                n_entries,
                len(self.apps),
                time.monotonic() - t0,
            )

    def _replay_app(self, d: Path, app_id: str) -> int:
        segs = sorted(p for p in d.iterdir() if p.suffix == ".seg" and p.stem.isdigit())
        app: AppLog | None = None
        n = 0
        stop = False
        for path in segs:
            no = int(path.stem)
            if stop:
                path.rename(path.with_suffix(".orphan"))
                log.error("%s follows a corrupt segment: renamed to .orphan, not replayed", path)
                continue
            buf = path.read_bytes()
            entries, good, why = read_entries(buf)
            if why is not None:
                stop = True
                if good == 0:
                    path.unlink()
                    log.warning("removed %s: %s", path, why)
                    continue
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
                log.warning(
                    "truncated %s at offset %d (%d bytes dropped): %s",
                    path,
                    good,
                    len(buf) - good,
                    why,
                )
            if app is None:
                whole = False
                if entries and entries[0][0] == KIND_META:
                    whole = parse_meta(entries[0][1])[1]
                app = AppLog(self.root, app_id, whole)
                self.apps[app_id] = app
            app.segments[no] = SegInfo(no, path)
            app.last_no = max(app.last_no, no)
            for kind, data in entries:
                try:
                    conns, tombs = app.apply_entry(kind, data)
                except (RemoteProtocolError, struct.error, UnicodeDecodeError) as e:
                    log.error("%s: undecodable entry skipped: %s", path, e)
                    continue
                app.note(no, conns, tombs)
                n += 1
        if app is not None:
            app.durable_orders = app.snapshot_orders()
            for seg in app.droppable():
                self._unlink(app, seg)
        return n

    # -- live path -----------------------------------------------------------

    def app(self, app_id: str, whole_history: bool = False) -> AppLog:
        a = self.apps.get(app_id)
        if a is None:
            a = self.apps[app_id] = AppLog(self.root, app_id, whole_history)
        return a

    def submit(self, e: Entry) -> None:
        self._submitted += 1
        self._pending.append(e)
        e.app.pending += 1
        self._pending_bytes += e.size
        if not self._busy:
            self._kick()
        if not self._pressured and self._pending_bytes > HIGH_WATER:
            self._pressured = True
            if self.on_pressure:
                self.on_pressure(True)

    async def barrier(self) -> None:
        """Wait until everything submitted so far is durable."""
        target = self._submitted
        if self._durable_count >= target:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        await fut

    async def run(self) -> None:
        """The committer: runs until cancelled (groups are written by its thread)."""
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._commit_thread, name="ftcp-store", daemon=True
            )
            self._thread.start()
        self._kick()
        try:
            await self._loop.create_future()  # forever
        finally:
            self._stop_thread()

    def _kick(self) -> None:
        """Start writing the next group if none is in flight."""
        if self._busy or not self._pending or self._loop is None or self._thread is None:
            return
        self._busy = True
        self._jobs.put(self._take_group())

    def _commit_thread(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            group = self._jobs.get()
            if group is None:
                return
            try:
                done, err = self._write_group(group), None
            except Exception as e:  # OSError mostly; anything else is as bad
                done, err = getattr(e, "ftcp_written", 0), e
            try:
                loop.call_soon_threadsafe(self._group_done, group, done, err)
            except RuntimeError:  # the loop is closed: nobody to acknowledge
                return

    def _group_done(self, group: list[Entry], done: int, err: BaseException | None) -> None:
        """In the loop: `group[:done]` is durable (on disk and fdatasync'd)."""
        if err is None:
            if self.failing is not None:
                log.warning("store writes succeed again: acknowledging resumes")
                self.failing = None
            self._durable(group[:done])  # still busy: no write runs beside its bookkeeping
            self._busy = False
            self._kick()
            return
        self._durable(group[:done])
        rest = group[done:]
        why = f"{type(err).__name__}: {err}"
        if self.failing != why:
            log.error(
                "store write failed (%s): not acknowledging; retrying every %.1fs",
                why,
                self.retry_interval,
            )
        self.failing = why
        assert self._loop is not None
        # still busy: nothing newer is written before this group is
        self._loop.call_later(self.retry_interval, self._jobs.put, rest)

    def _stop_thread(self) -> None:
        t = self._thread
        if t is None:
            return
        self._thread = None
        self._jobs.put(None)
        if t is not threading.current_thread():
            t.join()

    def _take_group(self) -> list[Entry]:
        if self.sync is SyncPolicy.ALWAYS:
            return [self._pending.popleft()]
        group = list(self._pending)
        self._pending.clear()
        return group

    def _durable(self, entries: list[Entry]) -> None:
        if not entries:
            return
        compact: dict[AppLog, bool] = {}
        for e in entries:
            app = e.app
            app.pending -= 1
            self._pending_bytes -= e.size
            app.note(e.seg_no, e.conns, e.tombstones)
            if e.tombstones or e.reset or app.rotated:
                compact[app] = compact.get(app, False) or e.reset
                app.rotated = False
            if e.on_durable is not None:
                e.on_durable()
        self._durable_count += len(entries)
        self.stats["groups"] += 1
        self.stats["entries"] += len(entries)
        for app, reset in compact.items():
            self._compact(app, reset)
        if self._waiters:
            still = []
            for target, fut in self._waiters:
                if self._durable_count >= target:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((target, fut))
            self._waiters = still
        if self._pressured and self._pending_bytes < LOW_WATER:
            self._pressured = False
            if self.on_pressure:
                self.on_pressure(False)

    def _compact(self, app: AppLog, reset: bool) -> None:
        for seg in app.droppable():
            self._unlink(app, seg)
        # After a DELETE of the whole application nothing is worth keeping, not
        # even the read-order checkpoint of the active segment: drop it too.
        if reset and not app.state.conns and app.pending == 0 and app.active is not None:
            seg = app.active
            if len(app.segments) == 1 and all(c in app.state.deleted for c in seg.refs):
                self._close_active(app)
                self._unlink(app, seg)
                with contextlib.suppress(OSError):
                    app.dir.rmdir()

    def _unlink(self, app: AppLog, seg: SegInfo) -> None:
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s: %s", seg.path, e)
            return
        app.forget(seg)
        log.debug("dropped segment %s", seg.path)

    def _close_active(self, app: AppLog) -> None:
        if app.fd is not None:
            os.close(app.fd)
        app.fd = None
        app.active = None
        app.size = 0

    # -- committer thread ------------------------------------------------------

    def _write_group(self, group: list[Entry]) -> int:
        """Write (and sync) a group; return how many entries are durable.

        On failure raises with `ftcp_written` = entries already durable.
        """
        by_app: dict[AppLog, list[Entry]] = {}
        for e in group:
            by_app.setdefault(e.app, []).append(e)
        synced = self.sync is not SyncPolicy.NONE
        done_apps: set[AppLog] = set()
        try:
            for app, entries in by_app.items():
                self._write_app(app, entries, synced)
                done_apps.add(app)
        except OSError as e:
            # Entries of fully written apps are durable: move them to the front
            # (order within one app is kept; apps are independent).
            durable = [x for x in group if x.app in done_apps]
            group[:] = durable + [x for x in group if x.app not in done_apps]
            e.ftcp_written = len(durable)  # type: ignore[attr-defined]
            raise
        return len(group)

    def _write_app(self, app: AppLog, entries: list[Entry], synced: bool) -> None:
        parts = []
        total = 0
        for e in entries:
            kb = bytes((e.kind,))
            d = e.data
            parts.append(_ENTRY.pack(len(d) + 1, zlib.crc32(d, zlib.crc32(kb))))
            parts.append(kb)
            parts.append(d)
            total += ENTRY_HEADER_LEN + 1 + len(d)
        if app.fd is None or (
            app.size + total > self.segment_size and app.size > SEG_HEADER_LEN + 64
        ):
            self._rotate(app, synced)
        assert app.fd is not None
        pre = app.size
        try:
            _write_all(app.fd, parts)
            if synced:
                os.fdatasync(app.fd)
                self.stats["syncs"] += 1
                # the pages are clean now and only a restart reads them (from disk):
                # give them back, so the next writes reuse warm pages instead of
                # growing the page cache into memory never touched before
                with contextlib.suppress(OSError):
                    os.posix_fadvise(app.fd, pre, total, os.POSIX_FADV_DONTNEED)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(app.fd, pre)
                os.lseek(app.fd, pre, os.SEEK_SET)
            raise
        app.size = pre + total
        self.stats["bytes"] += total
        no = app.active.no  # type: ignore[union-attr]
        for e in entries:
            e.seg_no = no
        app.durable_orders = entries[-1].orders

    def _rotate(self, app: AppLog, synced: bool) -> None:
        new_dir = not app.dir.exists()
        if new_dir:
            app.dir.mkdir(parents=True, exist_ok=True)
            if synced:
                _fsync_dir(self.root)
        no = app.last_no + 1
        path = app.dir / f"{no:08d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            head = _SEG_HEADER.pack(SEG_MAGIC, no, 0) + encode_entry(
                KIND_META, meta_data(app.app_id, app.state.whole_history, app.durable_orders)
            )
            if app.lease_epoch:
                head += encode_entry(KIND_LEASE, lease_data(app.lease_epoch))
            _write_all(fd, head)
            if synced:
                os.fdatasync(fd)
                _fsync_dir(app.dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        if app.fd is not None:
            os.close(app.fd)
        app.last_no = no
        seg = SegInfo(no, path)
        app.segments[no] = seg
        app.active = seg
        app.fd = fd
        app.size = len(head)
        app.rotated = True  # the previous active segment may be droppable now

    def close(self) -> None:
        for app in self.apps.values():
            if app.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(app.fd)
                app.fd = None
        self._stop_thread()
        self._pool.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
