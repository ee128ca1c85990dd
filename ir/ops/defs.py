"""Declarations of the graph ops: name, fusion kind, arity and attribute schema.

Semantics follow ONNX (broadcasting, negative axes, rounding) so the importer maps nodes almost
one to one; attributes use readable names and may hold symbolic `Expr`s where a size can be
dynamic (reshape's `shape`, slice bounds, `full`'s shape). Shape inference lives in shapes.py,
numpy reference semantics in reference.py.
"""

from __future__ import annotations

from .registry import REQUIRED, define

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
define("dynamic_slice", "injective", 2, {"axis": 0, "size": 1},
       "data[index:index+size] along axis; index is a ScalarType run-time value (a loop counter)")
define("dynamic_update_slice", "injective", 3, {"axis": 0},
       "copy of data with update written at index along axis; index is a ScalarType value")

define("check", "opaque", 0, {"cond": REQUIRED, "message": ""},
       "run-time check of a condition on symbolic dims (inserted by shape-infer); fails with `message`",
       pure=False)
