"""The kernel ABI shared by codegen and every loader: dim order and self-describing metadata.

A kernel takes `(void **buffers, int64_t *dims)`; `kernel_signature` fixes the order of `dims`
(shape dims by first appearance in the buffers, then the remaining scalar params). The module also
carries `__mlc_kernels`, a NUL-terminated JSON description of its kernels, so an object file can be
loaded and called without the IR it came from (JSON, never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from ..ir.diagnostics import MlcError
from ..ir.expr import Bin, Cast, Const, Expr, Var, children
from ..ir.tir import PrimFunc

META_SYMBOL = "__mlc_kernels"
# [failed, value, lo, hi] of the first failed `check_range` (i64 x 4), read and cleared by the runtime
INDEX_ERROR_SYMBOL = "__mlc_index_error"


def _ordered_vars(e: Expr, out: dict[str, Var]) -> None:
    if isinstance(e, Var):
        out.setdefault(e.name, e)
    for c in children(e):
        _ordered_vars(c, out)


def signature_vars(func: PrimFunc) -> list[Var]:
    """The i64 `dims` a kernel takes, in ABI order: shape dims by first appearance, then scalars."""
    found: dict[str, Var] = {}
    for buf in func.params:
        for d in buf.shape:
            _ordered_vars(d, found)
    for v in func.scalar_params:
        found.setdefault(v.name, v)
    return list(found.values())


def kernel_signature(func: PrimFunc) -> list[str]:
    """The names of `signature_vars`."""
    return [v.name for v in signature_vars(func)]


def expr_to_json(e: Expr) -> object:
    """A shape expression as JSON (ints, var names, [op, a, b]); read back by `expr_from_json`."""
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Bin):
        return [e.op, expr_to_json(e.a), expr_to_json(e.b)]
    if isinstance(e, Cast):
        return expr_to_json(e.a)
    raise MlcError(f"codegen: shape expression {e!r} cannot be described in kernel metadata")


def expr_from_json(j: object) -> Expr:
    if isinstance(j, bool) or not isinstance(j, int | str | list):
        raise MlcError(f"corrupt kernel metadata: bad shape expression {j!r}")
    if isinstance(j, int):
        return Const(j)
    if isinstance(j, str):
        return Var(j)
    if len(j) != 3 or j[0] not in ("add", "sub", "mul", "floordiv", "floormod", "min", "max"):
        raise MlcError(f"corrupt kernel metadata: bad shape expression {j!r}")
    return Bin(j[0], expr_from_json(j[1]), expr_from_json(j[2]))


def kernel_metadata(funcs: Sequence[PrimFunc], checking: Collection[str] = ()) -> str:
    """JSON describing each kernel's buffers and dims, embedded in the module as `__mlc_kernels`."""
    out = []
    for f in funcs:
        out.append({
            "name": f.name, "num_outputs": f.num_outputs, "dims": kernel_signature(f), "checks": f.name in checking,
            "params": [{"name": b.name, "dtype": b.dtype, "shape": [expr_to_json(d) for d in b.shape]}
                       for b in f.params],
        })
    return json.dumps({"version": 1, "kernels": out}, sort_keys=True)
