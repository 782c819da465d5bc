"""Run a little code inside a named network namespace (iproute2 convention).

A socket belongs to the network namespace of the thread that created it, for
its whole life. So to own a netlink or raw socket inside namespace `name`
without moving the calling process, we create it in a short-lived helper
thread that has `setns()`-ed into `name`; the socket then keeps working from
any thread. Subprocesses (iptables) are run through `ip netns exec`.

`name=None` everywhere means "the current namespace": no thread, no prefix.
This is deliberately tiny; the lab (`ftcp.lab`) builds and tears down
namespaces, this module only enters them.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from ftcp.errors import UserError

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` mounts named namespaces
CLONE_NEWNET = 0x40000000

_libc: ctypes.CDLL | None = None


def netns_path(name: str) -> str:
    """The bind-mount path of the named namespace `name`."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"bad network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def exec_argv(name: str | None, argv: list[str]) -> list[str]:
    """`argv` prefixed so that it runs inside namespace `name` (unchanged for None)."""
    return list(argv) if name is None else ["ip", "netns", "exec", name, *argv]


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """Call `fn()` in a helper thread that has entered namespace `name`; return its result.

    Exceptions raised by `fn` are re-raised in the caller. The helper thread
    exits afterwards, so the caller's own namespace never changes."""
    if name is None:
        return fn()
    path = netns_path(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"network namespace {name!r} does not exist") from None
    except PermissionError:
        raise UserError(f"cannot open network namespace {name!r}: needs root") from None
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _setns(target)
        except OSError as e:
            box["error"] = UserError(
                f"cannot enter network namespace {name!r} ({e.strerror}): needs root"
            )
            return
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    try:
        t = threading.Thread(target=body, name=f"netns:{name}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(target)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
