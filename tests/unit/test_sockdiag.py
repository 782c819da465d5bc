"""`ftcp.sockdiag`: the sock_diag dump recovery polls for the restarted listener."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from ftcp import sockdiag


def test_listening_sees_a_listener_and_not_a_closed_one() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.create_server((host, 0), family=family)
        port = s.getsockname()[1]
        assert sockdiag.listening(port)
        s.close()
        assert not sockdiag.listening(port)


def test_a_dump_larger_than_one_recv_comes_whole() -> None:
    # 300 listeners with their tcp_info: ~100 KB of answer, more than one recv (and
    # one kernel message) holds: every one of them is seen
    INET_DIAG_INFO = 2
    lst = [socket.create_server(("127.0.0.1", 0)) for _ in range(300)]
    try:
        ports = {s.getsockname()[1] for s in lst}
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, sockdiag.NETLINK_SOCK_DIAG) as nl:
            msgs = list(
                sockdiag.dump(
                    nl, socket.AF_INET, 1 << sockdiag.TCP_LISTEN, 1 << (INET_DIAG_INFO - 1)
                )
            )
        assert sum(len(m) for m in msgs) > sockdiag.RECV_SIZE
        assert ports <= {struct.unpack_from("!H", m, 4)[0] for m in msgs}
    finally:
        for s in lst:
            s.close()


def test_dump_filters_by_state() -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    srv, _ = lst.accept()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, sockdiag.NETLINK_SOCK_DIAG) as nl:
            every = [
                (m[1], struct.unpack_from("!HH", m, 4))
                for m in sockdiag.dump(nl, socket.AF_INET, seq=7)
            ]
            listeners = [
                struct.unpack_from("!H", m, 4)[0]
                for m in sockdiag.dump(nl, socket.AF_INET, 1 << sockdiag.TCP_LISTEN, seq=8)
            ]
        established = 1
        assert (established, (cli.getsockname()[1], port)) in every
        assert (established, (port, cli.getsockname()[1])) in every
        assert port in listeners
        assert cli.getsockname()[1] not in listeners
    finally:
        for s in (cli, srv, lst):
            s.close()


@pytest.mark.root
def test_evict_closed_frees_a_4_tuple_only_from_a_closed_socket() -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    srv, _ = lst.accept()
    lo = socket.inet_aton("127.0.0.1")
    here, there = (lo, port), (lo, cli.getsockname()[1])
    try:
        assert sockdiag.evict_closed(here, there) is None  # open: left alone
        srv.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        srv.close()  # closed by its owner: FIN_WAIT1/2 with nobody to hold it
        time.sleep(0.05)
        assert sockdiag.evict_closed(here, there) in ("FIN_WAIT1", "FIN_WAIT2")
        assert sockdiag.evict_closed(here, there) is None  # gone
        assert sockdiag.evict_closed(here, (lo, 1)) is None  # never existed
    finally:
        cli.close()
        lst.close()
