"""The one simplifier/prover: canonical forms, proofs, evaluation, checked against brute force."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from mlc.ir import arith
from mlc.ir.expr import Bin, Const, Expr, Var

n, m, k = Var("n"), Var("m"), Var("k")


def test_canonical_forms() -> None:
    assert arith.prove_equal((n + 1) * (n + 1), n * n + 2 * n + 1)
    assert arith.prove_equal(n * 4 // 4, n)
    assert arith.prove_equal((n * 8 + 4) // 4, n * 2 + 1)
    assert arith.simplify(n * m - m * n) == Const(0)
    assert arith.as_int((n * 8) % 4) == 0
    assert not arith.prove_equal(n, m)


def test_inequalities_assume_sizes_nonnegative() -> None:
    assert arith.prove_le(n, n * 2)
    assert arith.prove_le(n, n + m)
    assert not arith.prove_le(n * 2, n)
    assert arith.prove_lt(n, n + 1)
    assert arith.provably_different(Const(64), Const(32))
    assert not arith.provably_different(n, Const(32))


def test_min_max_fold() -> None:
    assert arith.prove_equal(Bin("min", n, n + 3), n)
    assert arith.prove_equal(Bin("max", n, n + 3), n + 3)


def test_evaluate_names_missing_symbols() -> None:
    assert arith.evaluate(n * m // 4 + 3, {"n": 4, "m": 5}) == 8
    try:
        arith.evaluate(n + k, {"n": 1})
    except ValueError as e:
        assert "k" in str(e)
    else:
        raise AssertionError("expected an error naming k")


def _exprs() -> st.SearchStrategy[Expr]:
    leaves = st.one_of(st.sampled_from([n, m, k]), st.integers(-5, 9).map(Const))

    def grow(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        ops = st.sampled_from(["add", "sub", "mul", "floordiv", "floormod", "min", "max"])
        return st.builds(
            lambda op, a, b: Bin(op, a, Const(abs(b.value) + 1) if op in ("floordiv", "floormod") and isinstance(b, Const) else b),
            ops, children, children,
        ).filter(lambda e: not (e.op in ("floordiv", "floormod") and not isinstance(e.b, Const)))

    return st.recursive(leaves, grow, max_leaves=8)


def _brute(e: Expr, env: dict[str, int]) -> int:
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Var):
        return env[e.name]
    assert isinstance(e, Bin)
    a, b = _brute(e.a, env), _brute(e.b, env)
    return {"add": a + b, "sub": a - b, "mul": a * b, "floordiv": a // b if b else 0, "floormod": a % b if b else 0,
            "min": min(a, b), "max": max(a, b)}[e.op]


@settings(max_examples=300, deadline=None)
@given(_exprs())
def test_simplify_preserves_value(e: Expr) -> None:
    s = arith.simplify(e)
    for vals in itertools.product([0, 1, 3, 7], repeat=3):
        env = dict(zip("nmk", vals))
        assert _brute(s, env) == _brute(e, env), (e, s, env)


@settings(max_examples=200, deadline=None)
@given(_exprs(), _exprs())
def test_prove_le_is_sound(a: Expr, b: Expr) -> None:
    if arith.prove_le(a, b):
        for vals in itertools.product([0, 1, 2, 5, 11], repeat=3):
            env = dict(zip("nmk", vals))
            assert _brute(a, env) <= _brute(b, env)


def test_interval_bounds_index_expressions_conservatively() -> None:
    from mlc.ir.arith import interval

    i, j, n = Var("i"), Var("j"), Var("n")
    ranges = {i: (0, 27), j: (0, 2)}
    look = ranges.get
    assert interval(Bin("sub", Bin("add", Bin("mul", Const(2), i), j), Const(1)), look) == (-1, 55)
    assert interval(Bin("floordiv", i, Const(7)), look) == (0, 3)
    assert interval(Bin("floormod", i, Const(7)), look) == (0, 6)
    assert interval(Bin("floormod", j, Const(7)), look) == (0, 2)  # one period: exact
    assert interval(Bin("add", i, n), look) is None  # unknown variable: no bound
    assert interval(Bin("div", i, Const(2)), look) is None  # truncating division: not claimed
    e = Bin("floormod", Bin("sub", Bin("mul", i, Const(3)), j), Const(5))
    lo, hi = interval(e, look)
    vals = [(3 * a - b) % 5 for a in range(28) for b in range(3)]
    assert lo <= min(vals) and max(vals) <= hi


def test_simplify_leaves_narrow_integer_data_and_casts_alone() -> None:
    """The polynomial form is for i64 index arithmetic. It once dropped int casts (Cast i64->i32->i64
    did not wrap: a silent miscompile) and retyped i32 constants as i64 (builds failed after split)."""
    from mlc.ir.expr import Cast

    x64, x32 = Var("x", "i64"), Var("y", "i32")
    round_trip = Cast("i64", Cast("i32", x64))
    assert arith.simplify(round_trip) == round_trip
    assert arith.simplify(Bin("add", round_trip, Const(0))) == round_trip
    neg = Bin("sub", Const(0, "i32"), x32)
    s = arith.simplify(neg)
    assert s.dtype == "i32" and all(c.dtype == "i32" for c in (s.a, s.b))  # type: ignore[attr-defined]
    assert arith.simplify(Bin("add", Bin("mul", Const(2), x64), x64)) == Bin("mul", Const(3), x64)
