"""32-bit wrap-aware TCP sequence arithmetic (RFC 9293 section 3.4).

Sequence numbers are plain ints in [0, 2**32) on the hot path; every
comparison, addition and distance goes through these functions, never through
`<` or `-` on raw values. Comparison is the RFC 1982 serial-number order: `a`
is before `b` when the forward distance from `a` to `b` is in (0, 2**31).
"""

from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def add(a: int, n: int) -> int:
    """`a + n` modulo 2**32 (`n` may be negative)."""
    return (a + n) & MASK


def sub(a: int, b: int) -> int:
    """Signed distance `a - b` in [-2**31, 2**31): positive when `a` is after `b`."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def usub(a: int, b: int) -> int:
    """Unsigned distance `a - b` modulo 2**32, in [0, 2**32): how far `a` is ahead of `b`
    (a byte count, or a mapping offset such as `delta_seq`)."""
    return (a - b) & MASK


def lt(a: int, b: int) -> bool:
    """`a` strictly before `b`."""
    return 0 < ((b - a) & MASK) < HALF


def le(a: int, b: int) -> bool:
    """`a` before or equal to `b`."""
    return ((b - a) & MASK) < HALF


def gt(a: int, b: int) -> bool:
    """`a` strictly after `b`."""
    return lt(b, a)


def ge(a: int, b: int) -> bool:
    """`a` after or equal to `b`."""
    return le(b, a)


def max_(a: int, b: int) -> int:
    """The later of `a` and `b`."""
    return b if lt(a, b) else a


def min_(a: int, b: int) -> int:
    """The earlier of `a` and `b`."""
    return a if lt(a, b) else b


def in_window(x: int, start: int, length: int) -> bool:
    """`start <= x < start + length` in sequence space (`0 <= length < 2**31`)."""
    return ((x - start) & MASK) < length


def check(a: int) -> int:
    """Return `a` if it is a valid 32-bit sequence number, else raise ValueError."""
    if not 0 <= a <= MASK:
        raise ValueError(f"sequence number out of range: {a!r}")
    return a
