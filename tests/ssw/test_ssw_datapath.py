"""SSW I/O on the real kernel: NFQUEUE pass-through, rewrite, drop, injection, fail-closed.

Each test builds its own pair of namespaces (client `a`, server `b`, one
veth link) and removes it afterwards. Queues and rules live in `b`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ssw_pkt as pk
from ssw_harness import NsPair, QueueWorker, bulk_gbps, exchange

from ftcp.core.packet import TcpPacket
from ftcp.errors import UserError
from ftcp.ssw.inject import Injector
from ftcp.ssw.netns import run_in_netns
from ftcp.ssw.nfqueue import HOOK_LOCAL_IN, HOOK_LOCAL_OUT, Queue, QueuedPacket
from ftcp.ssw.rules import PortRules, RuleSpec, queue_rules

pytestmark = pytest.mark.root

MARK = 0x4654
Q_IN, Q_OUT = 1, 2
MB = 1 << 20


@contextlib.contextmanager
def protected(pair: NsPair, tmp: Path, port: int) -> Iterator[tuple[Queue, Queue]]:
    """Queues bound in the server namespace and the port's rules installed."""
    rules = queue_rules(
        port, in_queue=Q_IN, out_queue=Q_OUT, ext_iface=pair.b_if, mark=MARK, owner=pair.tag
    )
    with (
        Queue.open(Q_IN, netns=pair.b) as qin,
        Queue.open(Q_OUT, netns=pair.b) as qout,
        PortRules(rules, state_file=str(tmp / "rules.json"), owner=pair.tag, netns=pair.b),
    ):
        yield qin, qout


def rewrite_window(q: Queue, p: QueuedPacket) -> bytes:
    """Lower the TCP window by one unit, with a complete checksum (the project's packet
    module: full sum for a partial input checksum, RFC 1624 update for a complete one)."""
    tp = TcpPacket.parse(p.payload, csum_partial=p.csum_partial)
    tp.set_window(max(tp.window - 1, 1))
    return tp.finalize()


def test_pass_through_50mb_both_directions(nspair: NsPair, tmp_path: Path) -> None:
    with protected(nspair, tmp_path, 5000) as (qin, qout):
        w = QueueWorker([qin, qout])
        w.start()
        try:
            exchange(nspair, 5000, 50 * MB)
        finally:
            w.stop()
        ks = [qin.kernel_stats(nspair.b), qout.kernel_stats(nspair.b)]
    st = w.stats
    print(f"\npass-through: {st}, enobufs={qin.stats.enobufs + qout.stats.enobufs}, kernel={ks}")
    assert st.per_queue.get(Q_IN, 0) > 0 and st.per_queue.get(Q_OUT, 0) > 0
    assert st.gso > 0, "no GSO super-packet (> 1500 B) reached the queue: F_GSO not in effect?"
    assert st.gso_flag > 0
    assert st.csum_partial > 0, "no packet reported a partial checksum"
    assert qin.stats.batch_msgs > 0 or qout.stats.batch_msgs > 0
    assert not qin.stats.errors and not qout.stats.errors


def test_rewrite_every_outbound_segment(nspair: NsPair, tmp_path: Path) -> None:
    """Replace every server→client packet (window − 1, full checksum); the client checks
    the checksum of every complete segment it receives and sees the lowered windows."""
    seen = {"rewritten": 0, "small": 0, "checked": 0, "bad": 0, "as_rewritten": 0}
    sent: set[tuple[int, int, int]] = set()  # (seq, ack, window) of small rewritten segments

    def server_side(q: Queue, p: QueuedPacket) -> None:
        if p.hook == HOOK_LOCAL_OUT:
            buf = rewrite_window(q, p)
            seen["rewritten"] += 1
            if len(buf) <= 1500:
                seen["small"] += 1
                t = pk.parse(buf)
                sent.add((t.seq, t.ack, t.window))
            q.accept(p.id, payload=buf)
        else:
            q.accept(p.id)

    def client_side(q: Queue, p: QueuedPacket) -> None:
        if not p.csum_partial:
            seen["checked"] += 1
            seen["bad"] += not pk.tcp_checksum_ok(p.payload)
            t = pk.parse(p.payload)
            seen["as_rewritten"] += (t.seq, t.ack, t.window) in sent
        q.accept(p.id)

    # observer on the client: every segment from the server port, as the client receives it
    obs_rule = RuleSpec(
        "filter",
        "INPUT",
        ("-p", "tcp", "-m", "tcp", "--sport", "5000", "-m", "comment", "--comment",
         f"ftcp:{nspair.tag}-obs", "-j", "NFQUEUE", "--queue-num", "3"),
    )  # fmt: skip
    with (
        protected(nspair, tmp_path, 5000) as (qin, qout),
        Queue.open(3, netns=nspair.a) as qobs,
        PortRules(
            [obs_rule], state_file=str(tmp_path / "obs.json"), owner=f"{nspair.tag}-obs",
            netns=nspair.a,
        ),
    ):  # fmt: skip
        w = QueueWorker([qin, qout], server_side)
        wo = QueueWorker([qobs], client_side)
        w.start()
        wo.start()
        try:
            exchange(nspair, 5000, 50 * MB)
        finally:
            w.stop()
            wo.stop()
    print(f"\nrewrite: {seen}, server worker {w.stats}")
    assert seen["rewritten"] > 0 and seen["small"] > 0
    assert seen["checked"] > 0
    assert seen["bad"] == 0
    assert seen["as_rewritten"] > 0  # the replaced payloads are what went on the wire
    assert qout.stats.payload_msgs == seen["rewritten"]


def test_drop_fraction_still_byte_exact(nspair: NsPair, tmp_path: Path) -> None:
    rng = random.Random(1234)
    dropped = {Q_IN: 0, Q_OUT: 0}

    def lossy(q: Queue, p: QueuedPacket) -> None:
        if pk.parse(p.payload).payload_len > 0 and rng.random() < 0.02:
            dropped[q.num] += 1
            q.drop(p.id)
        else:
            q.accept(p.id)

    with protected(nspair, tmp_path, 5000) as (qin, qout):
        w = QueueWorker([qin, qout], lossy)
        w.start()
        try:
            exchange(nspair, 5000, 20 * MB)
        finally:
            w.stop()
    print(f"\ndrop: dropped={dropped} of {w.stats.per_queue}")
    assert dropped[Q_IN] > 0 and dropped[Q_OUT] > 0


def test_overflow_is_reported_and_survived(nspair: NsPair, tmp_path: Path) -> None:
    """A tiny socket buffer and a stalling consumer: the kernel drops what does not fit
    (fail-closed), recv reports ENOBUFS, we count it and go on; TCP retransmits."""
    rules = queue_rules(
        5000, in_queue=Q_IN, out_queue=Q_OUT, ext_iface=nspair.b_if, mark=MARK, owner=nspair.tag
    )

    count = [0]

    def slow(q: Queue, p: QueuedPacket) -> None:
        count[0] += 1
        if count[0] % 100 == 0:
            time.sleep(0.05)  # stall while the sender's window is wide open
        q.accept(p.id)

    with (
        Queue.open(Q_IN, netns=nspair.b, rcvbuf=128 * 1024) as qin,
        Queue.open(Q_OUT, netns=nspair.b, rcvbuf=128 * 1024) as qout,
        PortRules(rules, state_file=str(tmp_path / "r.json"), owner=nspair.tag, netns=nspair.b),
    ):
        w = QueueWorker([qin, qout], slow)
        w.start()
        try:
            exchange(nspair, 5000, 10 * MB)
        finally:
            w.stop()
    print(f"\noverflow: enobufs in={qin.stats.enobufs} out={qout.stats.enobufs}")
    assert qin.stats.enobufs + qout.stats.enobufs > 0


def test_injected_handshake_reaches_accept(nspair: NsPair, tmp_path: Path) -> None:
    """Fabricate a client SYN, capture and drop the SYN-ACK, fabricate the third ack,
    then a data segment: accept() returns and the data is readable (DESIGN.md step 4/5)."""
    port, cport, c_isn = 5000, 40123, 0x12345678
    b, a = nspair.b_addr, nspair.a_addr
    synacks: list[QueuedPacket] = []
    inbound: list[QueuedPacket] = []
    got_synack = threading.Event()

    def handler(q: Queue, p: QueuedPacket) -> None:
        if p.hook == HOOK_LOCAL_IN:
            inbound.append(p)
            q.accept(p.id)
            return
        t = pk.parse(p.payload)
        if t.flags & (pk.SYN | pk.ACK) == pk.SYN | pk.ACK:
            synacks.append(p)
            got_synack.set()
        q.drop(p.id)  # nothing from this fabricated connection may reach the real client

    def listen() -> socket.socket:
        s = socket.socket()
        s.bind((b, port))
        s.listen(4)
        return s

    ls = run_in_netns(nspair.b, listen)
    try:
        with (
            protected(nspair, tmp_path, port) as (qin, qout),
            Injector(MARK, netns=nspair.b) as inj,
        ):
            w = QueueWorker([qin, qout], handler)
            w.start()
            try:
                inj.send(pk.build(a, b, cport, port, c_isn, 0, pk.SYN, window=64240,
                                  options=pk.mss_option(1460)))  # fmt: skip
                assert got_synack.wait(5), "no SYN-ACK reached the queue"
                sa = pk.parse(synacks[0].payload)
                assert (sa.src, sa.dst, sa.sport, sa.dport) == (b, a, port, cport)
                assert sa.ack == c_isn + 1
                n_isn = sa.seq
                inj.send(pk.build(a, b, cport, port, c_isn + 1, n_isn + 1, pk.ACK, window=502))
                ls.settimeout(5)
                conn, peer = ls.accept()
                with conn:
                    assert peer == (a, cport)
                    inj.send(pk.build(a, b, cport, port, c_isn + 1, n_isn + 1, pk.ACK | pk.PSH,
                                      window=502, payload=b"hello ftcp"))  # fmt: skip
                    conn.settimeout(5)
                    assert conn.recv(100) == b"hello ftcp"
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                w.stop()
    finally:
        ls.close()
    # the injected segments carried the mark: none of them came back through the queue
    assert inbound == []
    assert inj.sent == 3


def test_fail_closed_without_listener(nspair: NsPair, tmp_path: Path) -> None:
    """Rules in place but no queue bound: SYNs are dropped (no --queue-bypass), so a
    connect times out instead of passing unexamined."""
    srv = nspair.peer(nspair.b, "server", 5000, 0, 1)
    rules = queue_rules(
        5000, in_queue=Q_IN, out_queue=Q_OUT, ext_iface=nspair.b_if, mark=MARK, owner=nspair.tag
    )
    with PortRules(rules, state_file=str(tmp_path / "r.json"), owner=nspair.tag, netns=nspair.b):
        code = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(('{nspair.b_addr}', 5000), timeout=1.5)\n"
            "except TimeoutError:\n"
            "    sys.exit(0)\n"
            "sys.exit(3)\n"
        )
        cli = nspair.popen(nspair.a, ["python3", "-c", code])
        cli.communicate(timeout=20)
        assert cli.returncode == 0, "connection was not blocked while no queue was bound"
    srv.kill()


@pytest.mark.slow
def test_throughput_report(nspair: NsPair, tmp_path: Path) -> None:
    """Bulk server→client throughput: clean, queued pass-through, queued with every outbound
    segment rewritten in pure Python. Reported, not asserted."""
    nbytes = 1 << 30
    clean = bulk_gbps(nspair, 5001, nbytes)
    with protected(nspair, tmp_path, 5000) as (qin, qout):
        w = QueueWorker([qin, qout])
        w.start()
        try:
            passthru = bulk_gbps(nspair, 5000, nbytes)
        finally:
            w.stop()
    pt_stats = w.stats

    def rewrite_out(q: Queue, p: QueuedPacket) -> None:
        if p.hook == HOOK_LOCAL_OUT:
            q.accept(p.id, payload=rewrite_window(q, p))
        else:
            q.accept(p.id)

    with protected(nspair, tmp_path, 5002) as (qin, qout):
        w = QueueWorker([qin, qout], rewrite_out)
        w.start()
        try:
            rewrite = bulk_gbps(nspair, 5002, nbytes // 2)
        finally:
            w.stop()
    print(
        f"\nTHROUGHPUT clean {clean:.2f} Gbit/s | pass-through {passthru:.2f} Gbit/s "
        f"({passthru / clean:.2f}x, {pt_stats.packets} pkts, {pt_stats.gso} GSO, "
        f"avg {pt_stats.bytes // max(pt_stats.packets, 1)} B) | rewrite {rewrite:.2f} Gbit/s "
        f"({rewrite / clean:.2f}x)"
    )
    assert clean > 0 and passthru > 0 and rewrite > 0


def test_queue_bind_is_exclusive_and_close_unbinds(nspair: NsPair) -> None:
    with Queue.open(7, netns=nspair.b) as q:
        with pytest.raises(UserError, match="bound by another"):
            Queue.open(7, netns=nspair.b)
        assert q.kernel_stats(nspair.b) is not None
    assert q.kernel_stats(nspair.b) is None  # unbound: gone from the kernel's list
    with Queue.open(7, netns=nspair.b) as q2:  # and free to bind again
        assert q2.kernel_stats(nspair.b)["copy_range"] == 0xFFFF - 4  # type: ignore[index]
