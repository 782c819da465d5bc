from hypothesis import given
from hypothesis import strategies as st

from ftcp.core import seq

u32 = st.integers(0, seq.MASK)
dist = st.integers(-(seq.HALF - 1), seq.HALF - 1)


@given(u32, dist)
def test_add_sub_roundtrip(a: int, n: int) -> None:
    assert seq.sub(seq.add(a, n), a) == n


@given(u32, st.integers(1, seq.HALF - 1))
def test_order_across_wrap(a: int, n: int) -> None:
    b = seq.add(a, n)
    assert seq.lt(a, b) and seq.le(a, b) and seq.gt(b, a) and seq.ge(b, a)
    assert not seq.lt(b, a) and not seq.le(b, a)
    assert seq.max_(a, b) == b and seq.min_(a, b) == a


@given(u32)
def test_equal(a: int) -> None:
    assert seq.le(a, a) and seq.ge(a, a) and not seq.lt(a, a) and not seq.gt(a, a)


def test_boundaries() -> None:
    assert seq.lt(seq.MASK, 0)
    assert seq.add(seq.MASK, 1) == 0
    assert seq.sub(0, seq.MASK) == 1
    assert seq.sub(seq.MASK, 0) == -1
    assert seq.gt(seq.HALF - 2, seq.MASK)
    assert seq.in_window(1, seq.MASK - 1, 4)
    assert not seq.in_window(2, seq.MASK - 1, 4)


@given(u32, u32, st.integers(0, seq.HALF - 1))
def test_in_window_matches_distance(x: int, start: int, length: int) -> None:
    assert seq.in_window(x, start, length) == (0 <= ((x - start) & seq.MASK) < length)


def test_sequence_arithmetic_goes_through_seq_py() -> None:
    """No hand-rolled modular arithmetic (`(a - b) & MASK`, `(a + n) & 0xFFFFFFFF`) outside
    `seq.py`: a sequence number compared or moved by hand is where wrap-around bugs live.
    (`logger/state.py` inlines one `seq.gt` on its per-record path, and says so.)"""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "src" / "ftcp"
    allowed = {root / "core" / "seq.py", root / "logger" / "state.py"}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd)):
                continue
            if not isinstance(node.left, ast.BinOp) or not isinstance(
                node.left.op, (ast.Add, ast.Sub)
            ):
                continue
            mask = ast.unparse(node.right)
            if mask in ("seq.MASK", "MASK", "0xFFFFFFFF", "4294967295"):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
