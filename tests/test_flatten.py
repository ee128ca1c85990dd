"""Flattened buffers (ir/flatten.py, the last step of lower-tir): golden before/after text, exact round
trip of `view` declarations, the interpreter and compiled code against numpy, the inverse that
per-dimension analyses read, the verifier's checks of views and the interpreter's errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from mlc.codegen.cuda import lower_to_cuda
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Cast, Const, Var
from mlc.ir.flatten import flat_index, flatten_func, unflatten, unflatten_func
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.verify import verify_module
from mlc.runtime.cpu import compile_module

# a 3-D parameter, a parameter with a dim of 1, a 2-D global allocation (a device temporary: viewed)
# and a 2-D local one (flattened itself)
BEFORE = """mlc.module v1

prim @f(%x: buffer<n x 3 x 4 x f32>, %w: buffer<4 x 1 x f32>, %y: buffer<n x f32>) outputs 1 {
  allocate %t: buffer<n x 3 x f32> {
    for i in 0..n {
      for j in 0..3 {
        allocate %l: buffer<2 x 4 x f32, local> {
          for k in 0..4 {
            %l[1, k] = %x[i, j, k] * %w[k, 0]
          }
          %t[i, j] = %l[1, 0] + %l[1, 1] + %l[1, 2] + %l[1, 3]
        }
      }
      %y[i] = %t[i, 0] + %t[i, 1] + %t[i, 2]
    }
  }
}
"""

AFTER = """mlc.module v1

prim @f(%x: buffer<n x 3 x 4 x f32>, %w: buffer<4 x 1 x f32>, %y: buffer<n x f32>) outputs 1 {
  view %x_flat: buffer<12 * n x f32> = %x
  view %w_flat: buffer<4 x f32> = %w
  view %t_flat: buffer<3 * n x f32> = %t
  allocate %t: buffer<n x 3 x f32> {
    for i in 0..n {
      for j in 0..3 {
        allocate %l: buffer<8 x f32, local> {
          for k in 0..4 {
            %l[1 * 4 + k] = %x_flat[(i * 3 + j) * 4 + k] * %w_flat[k + 0]
          }
          %t_flat[i * 3 + j] = %l[1 * 4 + 0] + %l[1 * 4 + 1] + %l[1 * 4 + 2] + %l[1 * 4 + 3]
        }
      }
      %y[i] = %t_flat[i * 3 + 0] + %t_flat[i * 3 + 1] + %t_flat[i * 3 + 2]
    }
  }
}
"""


def _func(text: str) -> PrimFunc:
    return parse_module(text).prim_functions()[0]


def test_golden_text_round_trip_and_fixed_point() -> None:
    m = parse_module(BEFORE)
    out = m.with_function(lower_tir_func(m.prim_functions()[0]))
    assert print_module(out) == AFTER
    back = parse_module(AFTER)
    verify_module(back)
    assert back == out and print_module(back) == AFTER
    f = back.prim_functions()[0]
    assert flatten_func(f) is f and lower_tir_func(f) is f  # flat already: the identity


def _reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.einsum("ijk,k->i", x.astype(np.float64), w[:, 0].astype(np.float64))


@pytest.mark.parametrize("n", [1, 5])
def test_interpreter_and_compiled_code_agree_with_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    x, w = rng.standard_normal((n, 3, 4)).astype("f4"), rng.standard_normal((4, 1)).astype("f4")
    want = _reference(x, w)
    for text, vec in ((BEFORE, True), (AFTER, True), (AFTER, False)):
        y = np.full(n, np.nan, "f4")
        run_prim(_func(text), [x, w, y], vectorize=vec)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    lib = compile_module([_func(AFTER)])
    y = np.full(n, np.nan, "f4")
    lib.kernel("f")([x, w, y])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_interpreter_writes_a_non_contiguous_output_through_its_view() -> None:
    x = np.arange(24, dtype="f4").reshape(2, 3, 4)
    w = np.ones((4, 1), "f4")
    y = np.full((2, 2), np.nan, "f4")[:, 0]  # strided
    run_prim(_func(AFTER), [x, w, y])
    np.testing.assert_allclose(y, _reference(x, w))


def test_cuda_writes_a_view_as_its_parameters_pointer() -> None:
    src = lower_to_cuda([_func(AFTER)]).source
    assert "b_x[" in src and "_flat" not in src


def test_unflatten_inverts_flat_index() -> None:
    n, i, j, k = Var("n"), Var("i"), Var("j"), Var("k")
    for shape in itertools.product([Const(1), Const(3), n], repeat=3):
        idx = flat_index((i, j, k), shape)
        assert unflatten(idx, shape) == (i, j, k)
    assert flat_index((i, j), (n, Const(1))) == Bin("add", i, j)  # a factor of 1 is left out
    assert flat_index((), ()) == Const(0)
    i32 = Var("q", "i32")
    assert flat_index((i, i32), (n, Const(5))) == Bin("add", Bin("mul", i, Const(5)), Cast("i64", i32))
    assert unflatten(Bin("add", i, j), (n, Const(5))) is None  # not of the form flat_index builds


@pytest.mark.parametrize("decl, message", [
    ("view %x_flat: buffer<11 * n x f32> = %x", "view %x_flat has 11 \\* n elements, %x has 12 \\* n"),
    ("view %x_flat: buffer<12 * n x i32> = %x", "1-D buffer of %x's dtype and scope"),
    ("view %x_flat: buffer<n x 12 x f32> = %x", "1-D buffer of %x's dtype and scope"),
    ("view %x_flat: buffer<12 * n x f32> = %q", "undefined buffer %q"),
    ("view %y: buffer<12 * n x f32> = %x", "redefinition of buffer %y"),
])
def test_bad_views_are_located_errors(decl: str, message: str) -> None:
    text = AFTER.replace("  view %x_flat: buffer<12 * n x f32> = %x", "  " + decl)
    with pytest.raises(MlcError, match=message):
        verify_module(parse_module(text))


def test_view_of_a_local_allocation_is_refused() -> None:
    text = AFTER.replace("  view %t_flat: buffer<3 * n x f32> = %t\n  allocate %t: buffer<n x 3 x f32> {",
                         "  view %t_flat: buffer<3 * n x f32> = %t\n  allocate %t: buffer<n x 3 x f32, local> {")
    with pytest.raises(MlcError, match="neither a buffer parameter nor a global allocation"):
        verify_module(parse_module(text))


def test_out_of_range_access_names_the_parameter() -> None:
    text = AFTER.replace("%x_flat[(i * 3 + j) * 4 + k]", "%x_flat[(i * 3 + j) * 4 + k + 1]")
    x, w, y = np.zeros((2, 3, 4), "f4"), np.zeros((4, 1), "f4"), np.zeros(2, "f4")
    for vec in (True, False):
        with pytest.raises(MlcError, match=r"buffer x \(flat view x_flat\) dim 0 index 24 not in \[0, 24\)"):
            run_prim(_func(text), [x, w, y], vectorize=vec)


def test_unflatten_func_reads_views_back_per_dimension() -> None:
    nd = unflatten_func(_func(AFTER))
    assert nd is not None and not nd.views
    text = print_module(parse_module(AFTER).with_function(nd))
    assert "%x[i, j, k] * %w[k, 0]" in text and "%t[i, j] = " in text and "_flat" not in text
    odd = _func(AFTER.replace("%x_flat[(i * 3 + j) * 4 + k]", "%x_flat[k]"))
    assert unflatten_func(odd) is None
