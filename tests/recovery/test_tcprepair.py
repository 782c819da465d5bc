"""`ftcp.tcprepair.repair_in_place` on a real kernel (a private network namespace).

A loopback connection is accepted, then rebuilt in place as if it were the
original connection of a crashed server: the receive queue holds bytes the
application re-reads from the start, the send sequence continues where the
peer expects it; the peer sees no RST and both directions keep flowing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    """
    import os, socket, struct, sys, time
    from ftcp.core.repair import RepairSpec
    from ftcp.tcprepair import TCP_QUEUE_SEQ, TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_TIMESTAMP
    from ftcp.tcprepair import repair_in_place

    os.system("ip link set lo up")
    lst = socket.create_server(("127.0.0.1", 8080))
    cl = socket.create_connection(("127.0.0.1", 8080))
    srv, _ = lst.accept()
    cl.sendall(b"logged-instream")
    time.sleep(0.05)
    assert srv.recv(100) == b"logged-instream"
    srv.sendall(b"acked-output")
    time.sleep(0.05)
    assert cl.recv(100) == b"acked-output"

    def q(which):
        srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, which)
        return struct.unpack("I", srv.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]

    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    snd, rcv = q(2), q(1)
    # the peer's PAWS check wants TSvals past the last one it saw
    ts = struct.unpack("I", srv.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, 4))[0] + 1000
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 0)
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, -1)
    spec = RepairSpec(
        conn_id=1, rcv_seq=(rcv - 15) & 0xFFFFFFFF, instream=b"logged-instream",
        snd_seq=snd, mss=65483, snd_wscale=7, rcv_wscale=7, sack_ok=True, ts_ok=True,
        ts_val=ts & 0xFFFFFFFF, snd_wnd=65535, rcv_edge=None,
    )
    res = repair_in_place(srv.fileno(), spec)
    assert res.queued == 15 and res.rcv_nxt == rcv, res
    assert srv.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    srv.settimeout(2)
    cl.settimeout(2)
    assert srv.recv(100) == b"logged-instream"  # replayed from the receive queue
    cl.sendall(b"new-in")
    assert srv.recv(100) == b"new-in"
    srv.sendall(b"new-out")
    assert cl.recv(100) == b"new-out"
    print("OK")
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_repair_in_place_on_loopback() -> None:
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


OVERFULL = textwrap.dedent(
    """
    import os, socket, struct, time
    from ftcp.core.repair import RepairSpec
    from ftcp.tcprepair import TCP_QUEUE_SEQ, TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_TIMESTAMP
    from ftcp.tcprepair import repair_in_place

    os.system("ip link set lo up")
    os.system("sysctl -qw net.ipv4.tcp_rmem='4096 131072 4194304'")  # a small cap: fast
    lst = socket.create_server(("127.0.0.1", 8080))
    cl = socket.create_connection(("127.0.0.1", 8080))
    srv, _ = lst.accept()
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 2)
    snd = struct.unpack("I", srv.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 1)
    rcv = struct.unpack("I", srv.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    ts = struct.unpack("I", srv.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, 4))[0] + 1000
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 0)
    srv.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, -1)
    log = os.urandom(16 << 20)  # far more than the receive queue takes
    spec = RepairSpec(
        conn_id=1, rcv_seq=rcv, instream=log, snd_seq=snd, mss=65483, snd_wscale=7,
        rcv_wscale=7, sack_ok=True, ts_ok=True, ts_val=ts & 0xFFFFFFFF, snd_wnd=65535,
        rcv_edge=(rcv + len(log) + 65536) & 0xFFFFFFFF,  # an old edge far beyond the queue
    )
    res = repair_in_place(srv.fileno(), spec)
    assert 0 < res.queued < len(log), res
    assert res.rcv_nxt == (rcv + res.queued) & 0xFFFFFFFF, res
    # the window is what the full queue can still take, not the old far edge
    assert res.rcv_wnd < 4 << 20, res
    srv.settimeout(5)
    got = bytearray()
    while len(got) < res.queued:
        got += srv.recv(1 << 20)
    assert bytes(got) == log[: res.queued]
    print("OK", res.queued, res.rcv_wnd)
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_repair_fill_beyond_the_queue_cap_leaves_a_window_it_can_take() -> None:
    """A log larger than the receive queue: what fits is queued, byte-exact; the window
    left for SSW's refill of the rest is the free space, not the pre-crash right edge
    (which would make SSW inject megabytes the kernel can only collapse and drop)."""
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", OVERFULL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
