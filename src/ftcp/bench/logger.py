"""`ftcp bench logger`: what the logger sustains, per sync policy.

The logger runs as a real process (`python -m ftcp.logger`) on 127.0.0.1 with
a fresh data directory; one supervisor link multiplexes 1 or 64 connections,
as the real supervisor does. Segment runs send 1448-byte InSegments, 32 per
RECORDS frame, round-robin over the connections, with at most `window` bytes
(and 64 frames) unacknowledged; read runs send ReadResults, 1000 per frame.
Ack latency is from writing a frame to receiving the BatchAck that covers it,
so under full load it includes queueing behind the frames in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ftcp.core import seq, wire
from ftcp.core.records import Finished, Handshake, InSegment, ReadKind, ReadResult, SynOptions

MSS = 1448
SEGS_PER_FRAME = 32
READS_PER_FRAME = 1000
SECRET = b"bench-secret"
MAX_INFLIGHT_FRAMES = 64  # unacked frames on the link (bounds queueing in the latency)


@dataclass
class Result:
    sync: str
    conns: int
    kind: str  # "segments" | "reads"
    seconds: float
    records: int
    payload_bytes: int
    records_per_s: float
    mb_per_s: float
    ack_p50_ms: float
    ack_p99_ms: float


class LoggerProc:
    def __init__(self, sync: str, tmp: Path, profile: Path | None = None) -> None:
        secret = tmp / "secret"
        secret.write_bytes(SECRET)
        data = tmp / f"data-{sync}"
        cmd = [sys.executable]
        if profile is not None:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        cmd += ["-m", "ftcp.logger", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
        cmd += ["--sync", sync, "--secret-file", str(secret)]
        self.errpath = tmp / f"logger-{sync}.err"
        with open(self.errpath, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on ([\d.]+):(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"logger did not start: {self.errpath.read_text()}")
        self.host, self.port = m.group(1), int(m.group(2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _hs(cid: int) -> Handshake:
    o = SynOptions(mss=MSS, wscale=7, sack_ok=True, ts_val=1, ts_ecr=None)
    return Handshake(cid, cid, "10.0.0.2", 10000 + cid, "10.0.0.1", 80, cid * 7919, 1, o, o)


async def _run_one(
    host: str, port: int, app: str, conns: int, kind: str, seconds: float, window: int
) -> Result:
    sent_at: dict[int, float] = {}
    lat: list[float] = []
    acked = [0]
    wake = asyncio.Event()

    def on_ack(acks: list[wire.Ack]) -> None:
        now = time.perf_counter()
        for a in acks:
            if type(a) is wire.BatchAck:
                for b in range(acked[0] + 1, a.batch + 1):
                    t = sent_at.pop(b, None)
                    if t is not None:
                        lat.append(now - t)
                acked[0] = max(acked[0], a.batch)
                wake.set()

    from ftcp.logger.client import LoggerClient

    c = await LoggerClient.connect(host, port, app_id=app, secret=SECRET, on_ack=on_ack)
    c.send([_hs(cid) for cid in range(conns)])
    await c.wait_batch()
    payload = os.urandom(MSS)
    offs = [0] * conns
    isns = [cid * 7919 for cid in range(conns)]
    per_frame = SEGS_PER_FRAME if kind == "segments" else READS_PER_FRAME
    frame_bytes = SEGS_PER_FRAME * MSS if kind == "segments" else READS_PER_FRAME * 22
    max_inflight = max(2, min(MAX_INFLIGHT_FRAMES, window // frame_bytes))
    records = 0
    order = 0
    cid = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        recs: list = []
        if kind == "segments":
            for _ in range(per_frame):
                o = offs[cid]
                recs.append(InSegment(cid, seq.add(isns[cid], 1 + o), 2, 65535, payload=payload))
                offs[cid] = o + MSS
                cid = (cid + 1) % conns
        else:
            for _ in range(per_frame):
                recs.append(ReadResult(cid, order, ReadKind.DATA, 100))
                order += 1
                cid = (cid + 1) % conns
        b = c.send(recs)
        sent_at[b] = time.perf_counter()
        records += per_frame
        while c.batch - acked[0] >= max_inflight:
            wake.clear()
            await wake.wait()
        await c.drain()
    await c.wait_batch()
    elapsed = time.perf_counter() - t0
    c.send([Finished(i) for i in range(conns)])  # frees the logger's memory
    await c.wait_batch()
    await c.close()
    lat_ms = sorted(x * 1e3 for x in lat) or [0.0]
    payload_bytes = records * MSS if kind == "segments" else 0
    return Result(
        sync="",
        conns=conns,
        kind=kind,
        seconds=round(elapsed, 3),
        records=records,
        payload_bytes=payload_bytes,
        records_per_s=round(records / elapsed),
        mb_per_s=round(payload_bytes / elapsed / 1e6, 1),
        ack_p50_ms=round(statistics.median(lat_ms), 3),
        ack_p99_ms=round(lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))], 3),
    )


def wire_micro() -> dict[str, float]:
    """Encode+decode speed of the hot path in this process (no I/O)."""
    payload = os.urandom(MSS)
    segs = [
        InSegment(i % 64, (i * MSS) & seq.MASK, 5, 65535, False, 1, 2, payload) for i in range(8000)
    ]
    rr = [ReadResult(i % 64, i, ReadKind.DATA, 100) for i in range(100000)]
    best_seg = best_rr = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        d = wire.Decoder()
        for i in range(0, len(segs), SEGS_PER_FRAME):
            d.feed(wire.encode_records(segs[i : i + SEGS_PER_FRAME]))
        t1 = time.perf_counter()
        d.feed(wire.encode_records(rr))
        t2 = time.perf_counter()
        best_seg = max(best_seg, len(segs) * MSS / (t1 - t0) / 1e6)
        best_rr = max(best_rr, len(rr) / (t2 - t1))
    return {
        "inseg_encode_decode_mb_s": round(best_seg, 1),
        "read_encode_decode_per_s": round(best_rr),
    }


def run_bench(
    out: Path,
    seconds: float = 3.0,
    policies: tuple[str, ...] = ("always", "batch", "none"),
    conn_counts: tuple[int, ...] = (1, 64),
    window: int = 4 << 20,
    profile_dir: Path | None = None,
) -> dict:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="ftcp-bench-logger-") as tmpd:
        tmp = Path(tmpd)
        for sync in policies:
            prof = profile_dir / f"logger-{sync}.prof" if profile_dir else None
            proc = LoggerProc(sync, tmp, prof)
            try:
                for conns in conn_counts:
                    for kind in ("segments", "reads"):
                        if kind == "reads" and conns != max(conn_counts):
                            continue
                        app = f"bench-{sync}-{conns}-{kind}"
                        r = asyncio.run(
                            _run_one(proc.host, proc.port, app, conns, kind, seconds, window)
                        )
                        r.sync = sync
                        results.append(r)
            finally:
                proc.stop()
    doc = {
        "bench": "logger",
        "host": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
        "params": {
            "seconds": seconds,
            "mss": MSS,
            "segs_per_frame": SEGS_PER_FRAME,
            "reads_per_frame": READS_PER_FRAME,
            "window_bytes": window,
        },
        "targets": {"batch_segments_mb_s": 100, "batch_reads_per_s": 100_000},
        "wire": wire_micro(),
        "results": [asdict(r) for r in results],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def render(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="ftcp logger (real process, 127.0.0.1)")
    for col in ("sync", "conns", "records", "records/s", "MB/s", "ack p50 ms", "ack p99 ms"):
        t.add_column(col, justify="right" if col != "sync" else "left")
    for r in doc["results"]:
        t.add_row(
            r["sync"],
            str(r["conns"]),
            r["kind"],
            f"{r['records_per_s']:,}",
            f"{r['mb_per_s']:.1f}" if r["kind"] == "segments" else "-",
            f"{r['ack_p50_ms']:.2f}",
            f"{r['ack_p99_ms']:.2f}",
        )
    con = Console()
    con.print(t)
    w = doc["wire"]
    con.print(
        f"wire (in-process): InSegment encode+decode {w['inseg_encode_decode_mb_s']} MB/s, "
        f"ReadResult encode+decode {w['read_encode_decode_per_s']:,}/s"
    )


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        render(run_bench(Path("bench-out/logger.json")))
