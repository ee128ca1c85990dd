"""Declarations of the graph ops: name, fusion kind, arity and attribute schema.

Semantics follow ONNX (broadcasting, negative axes, rounding) so the importer maps nodes almost
one to one; attributes use readable names and may hold symbolic `Expr`s where a size can be
dynamic (reshape's `shape`, slice bounds, `full`'s shape). Shape inference lives in shapes.py,
numpy reference semantics in reference.py.
"""

from __future__ import annotations

from .registry import REQUIRED, define

define("dynamic_slice", "injective", 2, {"axis": 0, "size": 1},
       "data[index:index+size] along axis; index is a ScalarType run-time value (a loop counter)")
define("dynamic_update_slice", "injective", 3, {"axis": 0},
       "copy of data with update written at index along axis; index is a ScalarType value")

define("check", "opaque", 0, {"cond": REQUIRED, "message": ""},
       "run-time check of a condition on symbolic dims (inserted by shape-infer); fails with `message`",
       pure=False)
