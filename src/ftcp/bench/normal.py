"""`ftcp bench normal`: clean vs protected throughput on lab topologies.

For each topology a lab is built with a logger in its logger host; then, for
each mode (clean: the server runs bare; protected: under `ftcp run` with the
chosen ack strategy), one bulk transfer each way:

* up (client→server): the client sends N bytes; the server reads to EOF and
  answers with the byte count; time = connect → answer, at the client;
* down (server→client): the server sends N bytes to the connecting client and
  closes; time = connect → EOF, at the client.

The server and client are this module run as a script in the lab hosts
(`python -m ftcp.bench.normal serve|up|down ...`). Results go to
`<out>/normal.json` and a table on screen.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHUNK = 1 << 18
PORT = 5600
LOGGER_PORT = 7007


# --- the two ends (run inside lab hosts) ------------------------------------------------


def serve(port: int, nbytes: int) -> None:
    """Accept forever: a connection that sends "U" is a sink, "D" gets `nbytes`."""
    with socket.create_server(("0.0.0.0", port), backlog=16) as srv:
        while True:
            conn, _ = srv.accept()
            with conn:
                mode = conn.recv(1)
                if mode == b"U":
                    n = 0
                    while True:
                        d = conn.recv(CHUNK)
                        if not d:
                            break
                        n += len(d)
                    conn.sendall(str(n).encode())
                elif mode == b"D":
                    buf = os.urandom(CHUNK)
                    left = nbytes
                    while left:
                        k = conn.send(buf[: min(left, CHUNK)])
                        left -= k
                conn.shutdown(socket.SHUT_WR)


def _connect(host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 20
    while True:
        try:
            return socket.create_connection((host, port), timeout=600)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def client(mode: str, host: str, port: int, nbytes: int) -> dict[str, Any]:
    t0 = time.monotonic()
    s = _connect(host, port)
    n = 0
    if mode == "up":
        s.sendall(b"U")
        buf = os.urandom(CHUNK)
        left = nbytes
        while left:
            k = s.send(buf[: min(left, CHUNK)])
            left -= k
        s.shutdown(socket.SHUT_WR)
        n = int(s.recv(64) or b"0")
    else:
        s.sendall(b"D")
        while True:
            d = s.recv(CHUNK)
            if not d:
                break
            n += len(d)
    secs = time.monotonic() - t0
    s.close()
    return {"bytes": n, "seconds": secs, "mbps": n * 8 / secs / 1e6}


# --- the driver -----------------------------------------------------------------------


def _ftcp_argv() -> list[str]:
    return [sys.executable, "-c", "from ftcp.cli import main; main()"]


def _listening(lab: Any, port: int) -> bool:
    r = lab.run("server", ["ss", "-Hltn", f"sport = :{port}"], check=False)
    return bool(r.stdout.strip())


def _measure(
    lab: Any, tmp: Path, protected: bool, strategy: str, nbytes: int, logger_addr: str
) -> dict[str, Any]:
    port = PORT + (1 if protected else 0)
    server = [sys.executable, "-m", "ftcp.bench.normal", "serve", str(port), str(nbytes)]
    if protected:
        argv = [
            *_ftcp_argv(), "run", "--logger", logger_addr, "--insecure", "--port", str(port),
            "--ack-strategy", strategy, "--state-dir", str(tmp / "state"), "--", *server,
        ]  # fmt: skip
    else:
        argv = server
    err = open(tmp / f"server-{port}.err", "wb")  # noqa: SIM115
    p = lab.popen("server", argv, stdout=err, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _listening(lab, port):
            if p.poll() is not None or time.monotonic() > deadline:
                text = (tmp / f"server-{port}.err").read_text()
                raise RuntimeError(f"server did not start: {text}")
            time.sleep(0.05)
        out: dict[str, Any] = {}
        for direction in ("up", "down"):
            r = lab.run(
                "client",
                [
                    sys.executable,
                    "-m",
                    "ftcp.bench.normal",
                    direction,
                    lab.ip("server"),
                    str(port),
                    str(nbytes),
                ],  # fmt: skip
                timeout=900,
            )
            res = json.loads(r.stdout.strip().splitlines()[-1])
            if res["bytes"] != nbytes:
                raise RuntimeError(f"{direction}: {res['bytes']} of {nbytes} bytes")
            out[direction] = res
        return out
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        err.close()


def run(
    topologies: Sequence[str],
    nbytes: int,
    out_dir: Path,
    strategy: str = "lazy",
    name: str = "bnorm",
) -> dict[str, Any]:
    """Measure and write `<out_dir>/normal.json`; returns the document."""
    import tempfile

    from ftcp.lab import net

    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"bytes": nbytes, "strategy": strategy, "results": {}}
    for topo in topologies:
        lab = net.up(topo, name)
        tmp = Path(tempfile.mkdtemp(prefix="ftcp-bench-"))
        try:
            ip = lab.ip("logger")
            lg = lab.popen(
                "logger",
                [
                    sys.executable,
                    "-m",
                    "ftcp.logger",
                    "--listen",
                    f"{ip}:{LOGGER_PORT}",
                    "--data-dir",
                    str(tmp / "logger-data"),
                    "--insecure",
                ],  # fmt: skip
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert lg.stdout is not None
            if "listening" not in lg.stdout.readline().decode():
                raise RuntimeError("logger did not start")
            clean = _measure(lab, tmp, False, strategy, nbytes, f"{ip}:{LOGGER_PORT}")
            prot = _measure(lab, tmp, True, strategy, nbytes, f"{ip}:{LOGGER_PORT}")
            res = {}
            for d in ("up", "down"):
                res[d] = {
                    "clean_mbps": clean[d]["mbps"],
                    "protected_mbps": prot[d]["mbps"],
                    "ratio": prot[d]["mbps"] / clean[d]["mbps"],
                }
            doc["results"][topo] = res
        finally:
            lab.down()
    (out_dir / "normal.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['bytes'] / 1e6:.0f} MB per transfer, ack strategy {doc['strategy']}",
        f"{'topology':<10} {'dir':<5} {'clean Mbit/s':>13} {'ftcp Mbit/s':>12} {'ratio':>6}",
    ]
    for topo, res in doc["results"].items():
        for d, r in res.items():
            lines.append(
                f"{topo:<10} {d:<5} {r['clean_mbps']:>13.1f} {r['protected_mbps']:>12.1f} "
                f"{r['ratio']:>6.2f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    mode, *args = argv
    if mode == "serve":
        serve(int(args[0]), int(args[1]))
        return 0
    if mode in ("up", "down"):
        print(json.dumps(client(mode, args[0], int(args[1]), int(args[2]))), flush=True)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
