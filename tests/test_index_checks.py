"""Data-dependent indices are checked where they are used, in compiled code too.

A Gather/embedding with token id 10**9 once segfaulted the compiled model, and ids -41 or 40 (for a
40-row table) returned other memory; the interpreter raised a numpy traceback. ONNX says such an
index is an error: now one located error on every path, and the model still works after it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import BlockStmt, Buffer, Const, For, IterVar, Load, MlcError, PrimFunc, Store, Var
from mlc.ir.expr import Call
from mlc.ir.interp import run_function
from mlc.ir.tir_interp import run_prim
from onnx import TensorProto, helper, numpy_helper

from mlc.compiler import compile as mlc_compile

TABLE = np.arange(40 * 24, dtype=np.float32).reshape(40, 24)


def _gather(axis: int = 0) -> onnx.ModelProto:
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])
    out_shape = ["b", "t", 24] if axis == 0 else [40, "b", "t"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    node = helper.make_node("Gather", ["W", "ids"], ["y"], axis=axis)
    g = helper.make_graph([node], "g", [ids], [y], [numpy_helper.from_array(TABLE, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def compiled():  # type: ignore[no-untyped-def]
    return mlc_compile(_gather(0)), mlc_compile(_gather(1))


@pytest.mark.parametrize("bad", [10**9, -41, 40, 2**62, -(2**63)])
def test_compiled_gather_rejects_out_of_range_ids(compiled, bad: int) -> None:  # type: ignore[no-untyped-def]
    rows, cols = compiled
    good = np.array([[0, 39, -1, -40, 5]], np.int64)
    np.testing.assert_array_equal(rows(ids=good)["y"], TABLE[good])
    ids = np.array([[1, 2, 3], [4, bad, 6]], np.int64)
    with pytest.raises(MlcError, match=rf"index {bad} out of range \[-40, 40\)"):
        rows(ids=ids)
    with pytest.raises(MlcError, match=rf"index {bad} out of range \[-24, 24\)"):
        cols(ids=np.where(ids == bad, bad, ids % 24))
    for _ in range(2):  # the error is cleared: later calls (a replayed tape, then a fresh shape) work
        np.testing.assert_array_equal(rows(ids=good)["y"], TABLE[good])
        np.testing.assert_array_equal(rows(ids=good[:, :3])["y"], TABLE[good[:, :3]])


def test_interpreter_gives_the_same_located_error() -> None:
    module, consts = import_onnx(_gather(0))
    with pytest.raises(MlcError, match=r"index 40 out of range \[-40, 40\)"):
        run_function(module, {"ids": np.array([[40]], np.int64)}, consts)


def test_check_range_in_the_tir_interpreter_respects_masks() -> None:
    """Masked-off lanes (a select's untaken arm) are not checked; taken ones are."""
    from mlc.ir.expr import Bin, Select

    n = Var("n")
    X, Y = Buffer("X", (n,), "i64"), Buffer("Y", (n,), "i64")
    i, vi = Var("i"), Var("vi")
    x = Load(X, (vi,))
    checked = Call("check_range", (x, Const(0), Const(10)), "i64")
    body = Store(Y, (vi,), Select(Bin("ge", x, Const(0)), checked, Const(-1)))
    f = PrimFunc("k", (X, Y), 1, For(i, Const(0), n, BlockStmt("b", (IterVar(vi, n, "S", i),), body)))
    y = np.zeros(4, np.int64)
    run_prim(f, [np.array([3, -5, 9, -100], np.int64), y])
    np.testing.assert_array_equal(y, [3, -1, 9, -1])
    with pytest.raises(MlcError, match=r"index 10 out of range \[0, 10\)"):
        run_prim(f, [np.array([3, 10], np.int64), np.zeros(2, np.int64)])
