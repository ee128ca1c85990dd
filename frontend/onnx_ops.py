"""The table of every ONNX node handler the importer dispatches on (`HANDLERS`: op type -> handler).

Handlers that map an ONNX op onto graph ops sit beside those ops in the ir/ops family modules,
registered per opset (`ir.ops.registry.register_onnx`; the newest registration not above the
model's opset runs). ONNX-level rewrites stay here in frontend: shape/layout ops folded on
symbolic values (onnx_layout.py), compositions (onnx_compose.py), LSTM/GRU (onnx_rnn.py).
docs/ops.md lists the limits each handler enforces.
"""

from __future__ import annotations

from typing import Any

import onnx

from ..ir.ops.registry import onnx_handler, onnx_op_types
from .onnx_compose import COMPOSED
from .onnx_ctx import Ctx, Handler
from .onnx_layout import LAYOUT
from .onnx_rnn import gru, lstm

HANDLERS: dict[str, Handler] = {}


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
