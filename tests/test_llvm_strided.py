"""Vector loads and stores with a constant lane stride (codegen/llvm.py, codegen/llvm_expr.py).

A channel-vector tile written back to NCHW stores its lanes a plane apart: with a compile-time stride
S each lane is a scalar access at base + k * S, no vector index arithmetic and no gather/scatter
intrinsic. Strided loads and stores, forward and reversed, constant (2, 3, 7, -5) and symbolic, in
unmasked, strip-mined and guarded (lane-masked) vector loops, compiled against the TIR interpreter;
the guarded ones also with every buffer flush against an inaccessible page (runtime/guard.py) in a
child process, so a masked-off lane that touched memory is a fault, not a lucky read.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mlc.codegen.cpu import host_target
from mlc.codegen.llvm import lower_to_llvm
from mlc.ir import Bin, Buffer, Const, Expr, For, IfStmt, Load, PrimFunc, Store, Var
from mlc.ir.tir_interp import run_prim
from mlc.runtime.cpu import compile_module

RNG = np.random.default_rng(17)
n, m = Var("n"), Var("m")
LANES = 8



def strided(name: str, stride: int | None, loop: str, reverse: bool = False) -> PrimFunc:
    """Y[r(i), 1] = X[r(i), stride - 1] * 2 + X[i, 0] over rows i < n of (n, stride) buffers (stride
    None: X's rows are m long, a symbolic stride, Y's 2), r reversing the rows when asked. `loop`: "guarded" (8-lane
    vectors with a lane mask for the tail), "stripmined" (a symbolic vectorized extent: vector chunks
    and a scalar tail) or "whole" (n = 13 rows, one unmasked 13-lane vector)."""
    rows = Const(13) if loop == "whole" else n
    width = m if stride is None else Const(stride)
    X, Y = Buffer("X", (rows, width), "f32"), Buffer("Y", (rows, Const(stride or 2)), "f32")
    last = m - 1 if stride is None else Const(stride - 1)

    def body(i: Expr) -> Store:
        r = n - 1 - i if reverse else i
        if loop == "whole":
            r = Const(12) - i if reverse else i
        val = Load(X, (r, last)) * Const(2.0, "f32") + Load(X, (i, Const(0)))
        return Store(Y, (r, Const(1) if stride != 1 else Const(0)), val)

    if loop == "guarded":
        jo, ji = Var("jo"), Var("ji")
        i = jo * LANES + ji
        inner = For(ji, Const(0), Const(LANES), IfStmt(Bin("lt", i, n), body(i)), kind="vectorized")
        stmt: For = For(jo, Const(0), Bin("floordiv", n + (LANES - 1), Const(LANES)), inner)
    else:
        i = Var("i")
        stmt = For(i, Const(0), rows, body(i), kind="vectorized")
    return PrimFunc(name, (X, Y), 1, stmt)


CASES = [(s, loop, rev) for s in (2, 3, 7, None) for loop in ("guarded", "stripmined", "whole")
         for rev in (False, True)]


def _name(stride: int | None, loop: str, rev: bool) -> str:
    return f"k_{'m' if stride is None else stride}_{loop}_{'rev' if rev else 'fwd'}"


def _inputs(stride: int | None, loop: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    w = stride if stride is not None else 5
    rows = 13 if loop == "whole" else rows
    x = RNG.standard_normal((rows, w)).astype("f4")
    y = np.full((rows, stride or 2), -7.0, "f4")  # untouched elements must keep the sentinel
    return x, y


@pytest.fixture(scope="module")
def lib():
    return compile_module([strided(_name(*c), *c) for c in CASES])


@pytest.mark.parametrize("stride,loop,rev", CASES)
def test_strided_access_matches_interpreter(lib, stride, loop, rev):
    f = strided(_name(stride, loop, rev), stride, loop, rev)
    for rows in ((1, 8, 21) if loop != "whole" else (13,)):
        x, y = _inputs(stride, loop, rows)
        want = y.copy()
        run_prim(f, [x, want])
        lib.kernel(f.name)([x, y])
        np.testing.assert_array_equal(y, want)
        assert (y == -7.0).any()  # the oracle leaves elements unwritten: the check above sees stray stores


@pytest.mark.parametrize("loop", ["guarded", "stripmined", "whole"])
def test_constant_strides_emit_no_gather_or_scatter(loop):
    """Constant strides (2 and 3 load through a contiguous span and a shuffle, 7 and the reversed
    -7 lane by lane; stores lane by lane) address each lane as base + constant: no gather or scatter
    intrinsic and no lane index extracted from a vector. A symbolic stride still gathers."""
    for stride in (2, 3, 7):
        for rev in (False, True):
            text = lower_to_llvm([strided("k", stride, loop, rev)], host_target())
            assert "masked.gather" not in text and "masked.scatter" not in text, (stride, rev)
            assert not re.search(r"extractelement <\d+ x i64>", text), (stride, rev)
    assert "masked.gather" in lower_to_llvm([strided("k", None, loop)], host_target())


_CHILD = textwrap.dedent("""
    import sys, numpy as np
    from mlc.runtime.cpu import link_object
    from mlc.runtime.guard import guarded_copy
    lib = link_object(open(sys.argv[1], 'rb').read())
    data = np.load(sys.argv[2])
    out = {}
    for key in data.files:
        if not key.endswith('.x'):
            continue
        name, side = key[:-2].rsplit('@', 1)
        x, y = guarded_copy(data[key], side), guarded_copy(data[key[:-2] + '.y'], side)
        lib.kernel(name.split('#')[0])([x, y])
        out[key[:-2]] = np.array(y)
    np.savez(sys.argv[3], **out)
""")


def test_guarded_tails_touch_no_memory_past_the_mask(tmp_path):
    """Every buffer flush against a PROT_NONE page, after it and before it: the masked-off lanes of
    the guarded vector loops (strides 2, 3, 7, reversed, symbolic) must not load or store."""
    cases = [c for c in CASES if c[1] == "guarded"]
    lib = compile_module([strided(_name(*c), *c) for c in cases])
    (tmp_path / "k.o").write_bytes(lib.object_code)
    arrays, want = {}, {}
    for c in cases:
        f = strided(_name(*c), *c)
        for rows in (1, 5, 11):
            x, y = _inputs(c[0], c[1], rows)
            ref = y.copy()
            run_prim(f, [x, ref])
            for side in ("after", "before"):
                key = f"{f.name}#{rows}@{side}"
                arrays[key + ".x"], arrays[key + ".y"], want[key] = x, y, ref
    np.savez(tmp_path / "in.npz", **arrays)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "k.o"), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died (a fault is an out-of-bounds lane): {proc.returncode} {proc.stderr}"
    got = np.load(tmp_path / "out.npz")
    assert sorted(got.files) == sorted(want)
    for key, ref in want.items():
        np.testing.assert_array_equal(got[key], ref, err_msg=key)
