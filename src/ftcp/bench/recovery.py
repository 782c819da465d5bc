"""`ftcp bench recovery`: what a kill -9 costs (the paper's Table V, and beyond).

Per run, in a fresh lab: a logger (in the logger host, or in the server host
for "local"), a small server under `ftcp run`, one client. The client uploads
N bytes; the server reads them all (they are logged: N bytes to refill and N
bytes of read results to replay) and says `K` after each MiB. Once every `K`
is in, the server is killed with SIGKILL and the client at once sends a
one-byte ping the server answers: the client-visible stall is the time from
the kill to the answer. `ftcp run` reports its own split (environment
`FTCP_BENCH_RECOVERY_TIMING`):

* restart: death → rebuilt kernel connection, without the application's own
  start-up, the log transfer and TCP_REPAIR's queue fill (as the paper's
  "restart");
* replay: log transfer from the logger + refill of the instream (the queue fill
  included) + replay of the reads, until the application is live again; the
  instream streams into the rebuild, so a large log's transfer and refill
  overlap (counted once).

    python -m ftcp.bench.recovery serve PORT NBYTES       (the server)
    python -m ftcp.bench.recovery client HOST PORT NBYTES (the client)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcp.appproc import children
from ftcp.lab.services import start_logger

if TYPE_CHECKING:
    from ftcp.lab.net import Lab

MB = 1 << 20
PORT = 9300
LOGGER_PORT = 7017
READS_ENV = "FTCP_BENCH_READS_FILE"  # where `serve` reports its read count


# --- the workload ---------------------------------------------------------------


def serve(port: int, nbytes: int) -> None:
    """Read the upload, answer `K` per MiB and `P` once `nbytes` are in. With
    `READS_ENV` set, append to that file how many reads the first `nbytes` took: after a
    crash, the restarted application's count is the number of replayed reads."""
    lst = socket.create_server(("0.0.0.0", port), reuse_port=False)
    c, _ = lst.accept()
    lst.close()
    reads_file = os.environ.get(READS_ENV)
    total = reads = 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        before = total
        total += len(d)
        reads += 1
        out = b"K" * (min(total, nbytes) // MB - min(before, nbytes) // MB)
        if before <= nbytes < total:
            out += b"P"
        if out:
            c.sendall(out)
        if reads_file and before < nbytes <= total:
            # after the answer: the replay (it ends with that write) does not time this
            with open(reads_file, "a") as f:
                f.write(f"{os.getpid()} {reads}\n")
    c.close()


def client(host: str, port: int, nbytes: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            s = socket.create_connection((host, port), timeout=120)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    block = os.urandom(MB)
    want = nbytes // MB
    got = b""

    def drain(n: int) -> None:
        nonlocal got
        while len(got) < n:
            d = s.recv(4096)
            if not d:
                raise EOFError("server closed")
            got += d

    sent = 0
    while sent < nbytes:
        n = min(len(block), nbytes - sent)
        s.sendall(block[:n])
        sent += n
    drain(want)
    print(json.dumps({"kind": "loaded"}), flush=True)
    sys.stdin.readline()  # the driver killed the server
    t0 = time.monotonic()
    s.sendall(b"p")
    drain(want + 1)
    stall = time.monotonic() - t0
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    print(json.dumps({"kind": "done", "stall_s": stall, "ok": got.endswith(b"P")}), flush=True)


# --- the driver -----------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def one_run(topology: str, nbytes: int, local_logger: bool, restore: str) -> dict[str, Any]:
    """One crash in a fresh lab of `topology` (see `run_in_lab`)."""
    from ftcp.lab import net

    lab = net.up(topology, net.unique_name())
    tmp = Path(tempfile.mkdtemp(prefix="ftcp-bench-rec-"))
    try:
        r = run_in_lab(lab, nbytes, local_logger, restore, PORT, LOGGER_PORT, tmp)
        r["topology"] = topology
        return r
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)


def run_in_lab(
    lab: Lab,
    nbytes: int,
    local_logger: bool,
    restore: str,
    port: int,
    logger_port: int,
    work: Path,
    *,
    logger_nice: int = 0,
) -> dict[str, Any]:
    """One crash in an existing lab: a logger (in the logger host, or in the server host
    when `local_logger`; at nice `logger_nice`), the workload server under `ftcp run
    --restore <restore>` on `port`, one client uploading `nbytes`; kill -9 of the
    application once all is logged; the recovery's timings. Every process started
    here is stopped on return; `work` (scratch) is left to the caller."""
    procs: list[subprocess.Popen] = []
    try:
        lhost = "server" if local_logger else "logger"
        lip = "127.0.0.1" if local_logger else lab.ip("logger")
        procs.append(start_logger(lab, lhost, lip, logger_port, work / "log", nice=logger_nice))
        timing = work / "timing.jsonl"
        reads_file = work / "reads.txt"
        iface = ["--iface", lab.ifname("server")] if local_logger else []
        err = open(work / "ftcp.err", "w")  # noqa: SIM115
        srv = lab.popen(
            "server",
            [sys.executable, "-c", "from ftcp.cli import main; main()", "run",
             "--logger", f"{lip}:{logger_port}", "--insecure", "--port", str(port),
             "--restore", restore, "--state-dir", str(work / "state"), *iface, "--",
             sys.executable, "-m", "ftcp.bench.recovery", "serve", str(port), str(nbytes)],
            stdout=err, stderr=subprocess.STDOUT, text=True,
            env=_env({"FTCP_BENCH_RECOVERY_TIMING": str(timing), READS_ENV: str(reads_file)}),
        )  # fmt: skip
        err.close()
        procs.append(srv)
        cl = lab.popen(
            "client",
            [sys.executable, "-m", "ftcp.bench.recovery", "client", lab.ip("server"),
             str(port), str(nbytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env({}),
        )  # fmt: skip
        procs.append(cl)
        assert cl.stdout is not None and cl.stdin is not None
        line = cl.stdout.readline()
        if "loaded" not in line:
            raise RuntimeError(f"client: {line!r}; {(work / 'ftcp.err').read_text()[-2000:]}")
        time.sleep(0.3)  # the last read results reach the logger
        app = children(srv.pid)
        os.kill(app[0], signal.SIGKILL)
        cl.stdin.write("go\n")
        cl.stdin.flush()
        line = cl.stdout.readline()
        if "done" not in line:
            raise RuntimeError(
                f"client after the crash: {line!r}; {(work / 'ftcp.err').read_text()[-2000:]}"
            )
        res = json.loads(line)
        deadline = time.monotonic() + 10
        while not timing.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        t = json.loads(timing.read_text().splitlines()[-1])
        counts = [ln.split() for ln in reads_file.read_text().splitlines() if ln.strip()]
        # [original app, restarted app]: the restarted one's first `nbytes` were replayed
        reads = int(counts[-1][1]) if len(counts) >= 2 else 0
        return {
            "topology": lab.topology.name,
            "logger": "local" if local_logger else "remote",
            "restore": restore,
            "logged_mb": nbytes / MB,
            "restart_ms": 1000 * t["restart_s"],
            "replay_ms": 1000 * t["replay_s"],
            "fetch_ms": 1000 * t["fetch_s"],
            # the part of the log transfer the rebuild waited for (the rest overlapped the
            # application's start-up)
            "fetch_wait_ms": 1000 * (t.get("fetch_wait_s") or 0),
            "startup_ms": 1000 * (t["startup_s"] or 0),
            "stall_ms": 1000 * res["stall_s"],
            "replay_mb_s": (nbytes / MB) / t["replay_s"] if t["replay_s"] else None,
            "total_ms": 1000 * t["total_s"] if t.get("total_s") is not None else None,
            # repair: logged instream put straight into the receive queue (rest: refilled)
            "queued_mb": t.get("queued_bytes", 0) / MB,
            "repaired": t.get("repaired", 0),
            # read calls of the restarted application served from the log
            "reads": reads,
            "original_reads": int(counts[0][1]) if counts else 0,
            "ok": bool(res["ok"]) and (restore != "repair" or t.get("repaired", 0) >= 1),
        }
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def run(runs: int, sizes: Sequence[int], restores: Sequence[str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    configs = [("10-10", 1, False), ("10-100", 1, False), ("unshaped", 1, True)]
    configs += [("unshaped", mb, True) for mb in sizes if mb != 1]
    configs += [("unshaped", mb, False) for mb in sizes]
    for restore in restores:
        for topo, mb, local in configs:
            samples = [one_run(topo, mb * MB, local, restore) for _ in range(runs)]
            row = {k: samples[0][k] for k in ("topology", "logger", "restore", "logged_mb")}
            for k in (
                "restart_ms",
                "replay_ms",
                "fetch_ms",
                "fetch_wait_ms",
                "startup_ms",
                "stall_ms",
            ):
                row[k] = statistics.median(s[k] for s in samples)
            row["replay_mb_s"] = mb / (row["replay_ms"] / 1000) if row["replay_ms"] else None
            row["queued_mb"] = statistics.median(s["queued_mb"] for s in samples)
            row["ok"] = all(s["ok"] for s in samples)
            row["runs"] = runs
            rows.append(row)
            print(_line(row), file=sys.stderr, flush=True)
    return {"rows": rows}


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['topology']:>8} {r['logger']:>6} {r['restore']:>9} {r['logged_mb']:6.0f} MB  "
        f"restart {r['restart_ms']:7.1f} ms  replay {r['replay_ms']:8.1f} ms "
        f"(fetch {r['fetch_ms']:7.1f}, waited for {r.get('fetch_wait_ms', 0):6.1f})  "
        f"{r['replay_mb_s'] or 0:7.1f} MB/s  "
        f"stall {r['stall_ms']:8.1f} ms  app start-up {r['startup_ms']:6.1f} ms"
        + (f"  queued {r.get('queued_mb', 0):5.1f} MB" if r["restore"] == "repair" else "")
        + ("" if r["ok"] else "  FAILED")
    )


def render(doc: dict[str, Any]) -> str:
    head = (
        "recovery after kill -9 (medians): restart = death -> rebuilt kernel connection "
        "without app start-up and log transfer; replay = log transfer + refill + replay "
        "(the log transfer runs during the app's start-up; 'waited for' = the part of it "
        "the rebuild still waited for once the app listened); "
        "stall = client-visible; repair: queued = logged MiB put straight into the "
        "receive queue by TCP_REPAIR (the rest is refilled by SSW)\n"
    )
    return head + "\n".join(_line(r) for r in doc["rows"])


def main(argv: Sequence[str]) -> int:
    cmd, *a = argv
    if cmd == "serve":
        serve(int(a[0]), int(a[1]))
    elif cmd == "client":
        client(a[0], int(a[1]), int(a[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
