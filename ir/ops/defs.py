"""Declarations of the graph ops: name, fusion kind, arity and attribute schema.

Semantics follow ONNX (broadcasting, negative axes, rounding) so the importer maps nodes almost
one to one; attributes use readable names and may hold symbolic `Expr`s where a size can be
dynamic (reshape's `shape`, slice bounds, `full`'s shape). Shape inference lives in shapes.py,
numpy reference semantics in reference.py.
"""

from __future__ import annotations

from .registry import REQUIRED, define

define("concat", "injective", (1, -1), {"axis": REQUIRED}, "join along axis")
define("split", "injective", 1, {"axis": 0, "sections": REQUIRED}, "split into pieces of the given sizes (a tuple)")
define("reshape", "injective", 1, {"shape": REQUIRED}, "new shape (explicit dims; -1 allowed once)")
define("transpose", "injective", 1, {"perm": None}, "permute axes (None reverses them)")
define("squeeze", "injective", 1, {"axes": REQUIRED}, "drop the given size-1 axes")
define("expand_dims", "injective", 1, {"axes": REQUIRED}, "insert size-1 axes at the given output positions")
define("take", "injective", 2, {"axis": 0}, "gather: data[..., indices, ...] along axis (negative indices wrap)")
define("gather_elements", "injective", 2, {"axis": 0},
       "out[i] = data[i with axis replaced by indices[i]] (ONNX GatherElements; negative indices wrap)")
define("gather_nd", "injective", 2, {"batch_dims": 0},
       "ONNX GatherND: the last axis of indices addresses leading axes of data after batch_dims")
define("topk_indices", "opaque", 1, {"k": REQUIRED, "axis": -1, "largest": True},
       "indices (i64) of the k largest (smallest) values along axis, in order; equal values by lower index first")
define("scatter_elements", "opaque", 3, {"axis": 0, "reduction": "none"},
       "data with updates[u] written (or combined: add/mul/max/min) at u with axis replaced by indices[u]; "
       "ONNX ScatterElements (duplicates under 'none': the last one wins)")
define("scatter_nd", "opaque", 3, {"reduction": "none"},
       "ONNX ScatterND: updates[u] written (or combined) at the data position indices[u] (a prefix of "
       "the data's axes); duplicates under 'none': the last one wins")
define("strided_slice", "injective", 1, {"axes": REQUIRED, "begin": REQUIRED, "end": REQUIRED, "strides": None},
       "ONNX Slice: per axis begin/end/stride, clamped, negative indices wrap")
define("broadcast_to", "broadcast", 1, {"shape": REQUIRED}, "numpy broadcast_to")
define("pad", "injective", 1, {"pads": REQUIRED, "value": 0.0},
       "constant padding; pads = (begin_0.., end_0..) as ONNX")
define("full", "injective", 0, {"shape": REQUIRED, "value": 0.0, "dtype": "f32"}, "tensor filled with value")
define("arange", "injective", 0, {"start": 0, "stop": REQUIRED, "step": 1, "dtype": "i64"}, "ONNX Range")
define("shape_tensor", "injective", 0, {"values": REQUIRED},
       "1-D i64 tensor of symbolic values (a shape used as data)")
define("dynamic_slice", "injective", 2, {"axis": 0, "size": 1},
       "data[index:index+size] along axis; index is a ScalarType run-time value (a loop counter)")
define("dynamic_update_slice", "injective", 3, {"axis": 0},
       "copy of data with update written at index along axis; index is a ScalarType value")

define("check", "opaque", 0, {"cond": REQUIRED, "message": ""},
       "run-time check of a condition on symbolic dims (inserted by shape-infer); fails with `message`",
       pure=False)
