"""ir/tir_builder.py: the one te language; its materialise/inline policy and the shared fresh names."""

import numpy as np
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, Seq
from mlc.ir.tir_builder import build, compute, fconst, placeholder, reduce_axis, rsum
from mlc.ir.tir_interp import run_prim


def _blocks(f):
    body = f.body.body if isinstance(f.body, BlockStmt) and f.body.name == "root" else f.body
    return len(body.stmts) if isinstance(body, Seq) else 1


def _program(a, k, inline):
    sq = compute("SQ", (4, 3), lambda i, j: a[i, j] * a[i, j] + fconst(1.0), inline=inline)
    return build("f", [a], [compute("S", (4,), lambda i: rsum(sq[i, k], k))])


def test_inline_policy_drops_the_stage_same_values():
    a = placeholder("A", (4, 3))
    k = reduce_axis(3, "k")
    for inline in (False, True):
        f = _program(a, k, inline)
        assert _blocks(f) == (1 if inline else 2)
        x = np.arange(12, dtype=np.float32).reshape(4, 3)
        y = np.zeros(4, np.float32)
        run_prim(f, [x, y])
        np.testing.assert_allclose(y, (x * x + 1).sum(1))


def test_fresh_name():
    used = {"a", "a_1"}
    assert fresh_name("a", used) == "a_2" and "a_2" in used
    assert fresh_name("b", used, avoid={"b"}) == "b_1"
    assert fresh_name("i", {"i"}, sep="") == "i1"
