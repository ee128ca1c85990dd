"""Trained weights back into the ONNX model they were imported from.

The importer keys every initializer's constant by the initializer's own name (frontend/onnx_ctx.py),
and `mlc train` / autodiff update those keys (a folded copy such as a Gemm's transposed weight is
trained as its initializer), so writing a module's weights back is a replacement of initializers by
name: the graph, its opset and everything else in the file stay as they were.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from mlc.ir.diagnostics import MlcError
from onnx import numpy_helper


def with_weights(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], src: str) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` whose initializers named in `arrays` hold those arrays; how many changed.

    An array whose shape or dtype differs from its initializer's is an error (the module is not a
    training of this model); a model none of whose initializers the module names is too."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    matched = changed = 0
    for i, init in enumerate(out.graph.initializer):
        if init.name not in arrays:
            continue
        old = numpy_helper.to_array(init)
        new = np.asarray(arrays[init.name])
        if new.shape != old.shape or new.dtype != old.dtype:
            raise MlcError(f"{src}: initializer '{init.name}' is {old.dtype}{list(old.shape)} but the module's "
                           f"constant is {new.dtype}{list(new.shape)}: the module was not imported from this model")
        matched += 1
        if not np.array_equal(new, old, equal_nan=new.dtype.kind == "f"):
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), init.name))
            changed += 1
    if matched == 0:
        raise MlcError(f"{src}: none of its {len(model.graph.initializer)} initializers is a constant of the module "
                       "(export writes a module's weights back into the ONNX model it was imported from)")
    return out, changed
