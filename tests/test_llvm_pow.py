"""pow in the LLVM code generator (codegen/llvm_expr.py `pow`): the exponents 2, 0.5 and 0.75 take
multiplications and square roots when every lane's exponent is one of them, other exponents call pow.
Against numpy's float32 power: special values (+-0, +-inf, NaN, negatives) exactly, the rest within
2 ulp; run-time 0-d exponents, literal exponents, and a per-element exponent mixing both paths, in
vector loops and scalar ones."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ir.expr import Bin
from mlc.ir.tir_builder import build, compute, fconst, placeholder
from mlc.ir.tir_lower import lower_tir_func
from mlc.passes.schedule.rules import TargetInfo, default_schedule
from mlc.runtime.cpu import compile_module

CPU = TargetInfo(lanes=8, cores=2)
SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.5, 1e-30, 3e38, 1.0, 2.0], np.float32)


def inputs(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    x = (rng.random(n) * 10.0 ** rng.integers(-6, 6, n)).astype(np.float32)
    x[: len(SPECIAL)] = SPECIAL
    return x


def agree(got: np.ndarray, want: np.ndarray) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want) & (want != 0)
    np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
    assert np.array_equal(np.signbit(got[want == 0]), np.signbit(want[want == 0]))
    ulp = np.abs(got[fin].astype(np.float64) - want[fin]) / np.spacing(np.abs(want[fin]))
    assert ulp.max(initial=0) <= 2, ulp.max()


def kernel(fn, n: int, scalar_loop: bool = False):  # type: ignore[no-untyped-def]
    f = fn()
    low = lower_tir_func(f if scalar_loop else default_schedule(f, CPU).func)
    lib = compile_module([low])
    return lib.kernel(f.name), lib


@pytest.mark.parametrize("scalar_loop", [False, True])
@pytest.mark.parametrize("ex", [2.0, 0.5, 0.75, 1.3, -0.5])
def test_run_time_scalar_exponent(ex: float, scalar_loop: bool) -> None:
    n = 67
    x, e = placeholder("x", (n,)), placeholder("e", ())
    k, _ = kernel(lambda: build("p", [x, e], [compute("y", (n,), lambda i: Bin("pow", x[i], e[()]))]), n, scalar_loop)
    xs = inputs(n)
    got = np.zeros(n, np.float32)
    k([xs, np.array(ex, np.float32), got])
    with np.errstate(all="ignore"):
        agree(got, np.power(xs, np.float32(ex)))


@pytest.mark.parametrize("ex", [2.0, 0.5, 0.75, 3.0])
def test_literal_exponent(ex: float) -> None:
    n = 40
    x = placeholder("x", (n,))
    k, lib = kernel(lambda: build("p", [x], [compute("y", (n,), lambda i: Bin("pow", x[i], fconst(ex)))]), n)
    if ex != 3.0:  # a literal exponent of the three needs no run-time test and no pow
        assert "pow" not in lib.llvm_ir()
    xs = inputs(n)
    got = np.zeros(n, np.float32)
    k([xs, got])
    with np.errstate(all="ignore"):
        agree(got, np.power(xs, np.float32(ex)))


def test_per_element_exponents_mixing_fast_and_pow_lanes() -> None:
    n = 64
    x, e = placeholder("x", (n,)), placeholder("e", (n,))
    k, _ = kernel(lambda: build("p", [x, e], [compute("y", (n,), lambda i: Bin("pow", x[i], e[i]))]), n)
    xs = np.abs(inputs(n))
    es = np.full(n, 0.75, np.float32)
    es[8:16] = np.array([2.0, 0.5, 0.75, 1.3, 0.75, 2.0, 0.5, 0.25], np.float32)  # one vector takes pow
    got = np.zeros(n, np.float32)
    k([xs, es, got])
    with np.errstate(all="ignore"):
        agree(got, np.power(xs, es))
