"""ir/ops: the registry loads the family modules itself; each op's aspects agree (one_hot, the
worked example of docs/adding-an-op.md, lowered against its reference with a symbolic dim)."""

from __future__ import annotations

import mlc.ir.ops as ops
import numpy as np
from mlc.ir.expr import Var
from mlc.ir.ops.registry import FAMILIES, onnx_handler
from test_lower import check, one_op


def test_registry_loads_every_family_and_grad_slots_hold_rules() -> None:
    import sys

    assert all(f"mlc.ir.ops.{m}" in sys.modules for m in FAMILIES)
    assert all(op.grad is None or callable(op.grad) for op in ops.all_ops().values())  # see tests/test_autodiff.py


def test_one_hot_handler_by_opset() -> None:
    assert onnx_handler("OneHot", 8) is None
    assert onnx_handler("OneHot", 9) is onnx_handler("OneHot", 11) is not None


def test_one_hot_lowering_matches_reference() -> None:
    n = Var("n")
    for axis, dt in ((-1, "i64"), (0, "f32"), (1, "i32")):
        m = one_op("one_hot", [(n, 3), (2,)], [dt, "f32"], {"depth": 5, "axis": axis})
        ind = np.array([[0, -1, 4], [7, -6, 2]]).astype(np.float32 if dt == "f32" else dt.replace("i", "int"))
        check(m, {"a0": ind, "a1": np.array([0.5, -2.0], np.float32)})
