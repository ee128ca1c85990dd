"""ONNX node handlers for math and neural-network ops, and the table of every handler.

Handlers read inputs through the context (`ctx.input(i)` materialises a Value; `ctx.const` gives
a statically known value) and set outputs with `ctx.out`. Shape/layout ops live in
onnx_layout.py, compositions in onnx_compose.py, LSTM/GRU in onnx_rnn.py; `HANDLERS` joins them.
docs/ops.md lists the limits each handler enforces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..ir.ops.registry import onnx_handler, onnx_op_types
from .onnx_compose import COMPOSED
from .onnx_ctx import Ctx, Handler, registrar
from .onnx_layout import LAYOUT
from .onnx_rnn import gru, lstm

HANDLERS: dict[str, Handler] = {}
handles = registrar(HANDLERS)


@handles("TopK")
def _topk(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Indices by a rank computation (sorted, ties by lower index), values gathered with them."""
    k = ctx.const(node.input[1]) if len(node.input) > 1 else None
    if k is None and "k" in attrs:  # opset < 10: an attribute
        k = np.array(attrs["k"])
    if k is None or k.size != 1:
        raise ctx.error("TopK: K must be a constant")
    x = ctx.input(0)
    flags = {"k": int(k.reshape(-1)[0]), "axis": int(attrs.get("axis", -1)), "largest": bool(attrs.get("largest", 1))}
    idx = ctx.emit("topk_indices", [x], flags, node.output[1] if len(node.output) > 1 and node.output[1] else "topk_idx")
    if len(node.output) > 1 and node.output[1]:
        ctx.out(1, idx)
    ctx.out(0, ctx.emit("gather_elements", [x, idx], {"axis": flags["axis"]}, node.output[0]))


def _versioned(op_type: str) -> Handler:
    """The handler the ir/ops family modules registered for `op_type` at the model's opset."""

    def run(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        fn = onnx_handler(op_type, ctx.opset)
        if fn is None:
            raise ctx.error(f"{op_type} is supported from opset {onnx_op_types()[op_type]}, "
                            f"the model has opset {ctx.opset}")
        fn(ctx, node, attrs)

    return run


for _t in onnx_op_types():
    HANDLERS[_t] = _versioned(_t)
HANDLERS["LSTM"] = lstm
HANDLERS["GRU"] = gru
HANDLERS.update(COMPOSED)
HANDLERS.update(LAYOUT)
