"""sparsify: prune the dense constant weights of matmuls and run the sparse ones as sparse kernels.

The pruned-transformer path of issue 15: `matmul(x, W)` with W a constant (K x M) is pruned, by
magnitude (`--threshold T`: entries with |w| <= T become 0; 0 drops exact zeros only, for weights
pruned elsewhere) or by blocks (`--block B --density D`: the B x B blocks of largest Frobenius norm
are kept, ceil(D * blocks) of them, the rest zeroed). Where the pruned weight's density is below
`--max-density` the matmul becomes `sparse_matmul(x, indptr, indices, data)` over the CSR of W^T
(ir/ops/sparse_ops.py), which lowers to a sparse kernel; otherwise the matmul keeps the pruned
weight, dense. Either way the model computes x @ pruned(W). x of rank > 2 is reshaped to rows and back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const, Expr
from mlc.ir.graph import Binding, Block, Constant, Function, OpCall, Value, attrs_of
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.rewrite import walk_bindings
from mlc.ir.types import TensorType

from .canonicalize import DCE
from .lower import map_blocks
from .registry import ModulePass, PassContext, option, register_pass


def prune_threshold(w: np.ndarray, threshold: float) -> np.ndarray:
    """`w` with the entries of magnitude <= threshold set to 0."""
    return np.where(np.abs(w) > threshold, w, np.zeros_like(w))


def prune_blocks(w: np.ndarray, block: int, density: float) -> np.ndarray:
    """`w` keeping only the ceil(density * blocks) B x B blocks of largest norm (ties: first in row order)."""
    k, m = w.shape
    blocks = w.reshape(k // block, block, m // block, block).astype(np.float64)
    norms = np.sqrt((blocks ** 2).sum(axis=(1, 3))).reshape(-1)
    keep = np.zeros(norms.size, bool)
    keep[np.argsort(-norms, kind="stable")[:math.ceil(density * norms.size - 1e-9)]] = True
    mask = np.repeat(np.repeat(keep.reshape(k // block, m // block), block, axis=0), block, axis=1)
    return np.where(mask, w, np.zeros_like(w))


def csr_of_transpose(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of w^T's nonzeros in CSR (rows = w's columns, sorted columns)."""
    rows, cols = np.nonzero(w.T)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w.shape[1]))]).astype(np.int32)
    return indptr, cols.astype(np.int32), np.ascontiguousarray(w.T[rows, cols])


@register_pass
@dataclass(frozen=True)
class Sparsify(ModulePass):
    """Prune the constant weights of matmuls (--threshold T, or --block B --density D) and turn those
    sparse enough (density < --max-density) into sparse_matmul, a sparse kernel (docs/sparse.md)."""

    name: ClassVar[str] = "sparsify"
    needs_constants: ClassVar[bool] = True
    threshold: float = option(0.0, "prune entries with |w| <= T (0: only exact zeros); not with --block")
    block: int = option(0, "prune by B x B blocks (B divides both dims of the weight), keeping --density of them")
    density: float = option(0.0, "with --block: the fraction of blocks kept, in (0, 1]")
    max_density: float = option(0.3, "use the sparse kernel only where the pruned weight's density is below this")
    only: str = option("", "only these constants (comma-separated keys; also those folded from them, as the "
                           "module's `derived` meta says); default all")

    def check(self) -> None:
        if not self.threshold >= 0 or math.isinf(self.threshold):
            raise MlcError(f"sparsify: --threshold must be a finite number >= 0, got {self.threshold}")
        if self.block < 0:
            raise MlcError(f"sparsify: --block must be positive, got {self.block}")
        if self.block and self.threshold:
            raise MlcError("sparsify: give --threshold or --block with --density, not both")
        if self.block and not 0 < self.density <= 1:
            raise MlcError(f"sparsify: --density must be in (0, 1], got {self.density}")
        if not self.block and self.density:
            raise MlcError("sparsify: --density needs --block")
        if not 0 < self.max_density <= 1:
            raise MlcError(f"sparsify: --max-density must be in (0, 1], got {self.max_density}")

    def prune(self, w: np.ndarray, loc: object) -> np.ndarray:
        if not self.block:
            return prune_threshold(w, self.threshold)
        if w.shape[0] % self.block or w.shape[1] % self.block:
            raise MlcError(f"sparsify: --block {self.block} does not divide the weight's shape "
                           f"{w.shape[0]} x {w.shape[1]}", loc)  # type: ignore[arg-type]
        return prune_blocks(w, self.block, self.density)

    def apply(self, module: Module, ctx: PassContext) -> Module:
        self.check()
        consts = dict(ctx.constants or {})
        chosen = _with_derived(module, {k.strip() for k in self.only.split(",") if k.strip()})
        done: dict[str, tuple[str, ...]] = {}  # dense key -> keys of its replacement (CSR, or pruned dense)
        stats = {"sparse": 0, "dense": 0}

        def rewrite(g: Function) -> Function:
            const_of = {b.var.name: b.node.key for b in walk_bindings(g.body)
                        if isinstance(b.node, Constant) and b.node.key in consts}
            used = {b.var.name for b in walk_bindings(g.body)} | {p.name for p in g.params}

            def val(hint: str, t: TensorType) -> Value:
                return Value(fresh_name(hint, used), t)

            def block(blk: Block) -> Block:
                out: list[Binding] = []
                for b in blk.bindings:
                    n = b.node
                    if not (isinstance(n, OpCall) and n.op == "matmul" and len(n.args) == 2
                            and n.args[1].name in const_of and _fits(n.args[0], n.args[1])
                            and (not chosen or const_of[n.args[1].name] in chosen)):
                        out.append(b)
                        continue
                    key = const_of[n.args[1].name]
                    if key not in done:
                        done[key] = self._sparsify(key, consts, b, ctx, stats)
                    new = done[key]
                    if len(new) == 1:  # pruned, kept dense
                        w = val(n.args[1].name + "_pruned", n.args[1].type)  # type: ignore[arg-type]
                        out += [Binding(w, Constant(new[0], n.loc), b.loc),
                                Binding(b.var, dataclasses.replace(n, args=(n.args[0], w)), b.loc)]
                        continue
                    if not new:
                        out.append(b)
                        continue
                    arrs = []
                    for k in new:
                        arrs.append(val(n.args[1].name + "_" + k.rsplit(".", 1)[-1], TensorType(tuple(Const(int(d)) for d in consts[k].shape),
                                                                         "i32" if consts[k].dtype == np.int32 else "f32")))
                        out.append(Binding(arrs[-1], Constant(k, n.loc), b.loc))
                    x = n.args[0]
                    xt, yt = x.type, b.var.type
                    assert isinstance(xt, TensorType) and isinstance(yt, TensorType) and xt.shape and yt.shape
                    if len(xt.shape) > 2:  # rows of x, then the batch dims back
                        rows: Expr = xt.shape[0]
                        for d in xt.shape[1:-1]:
                            rows = rows * d
                        x2 = val(x.name + "_rows", TensorType((rows, xt.shape[-1]), "f32"))
                        out.append(Binding(x2, OpCall("reshape", (x,), attrs_of({"shape": (rows, xt.shape[-1])}), n.loc), b.loc))
                        y2 = val(b.var.name + "_rows", TensorType((rows, yt.shape[-1]), "f32"))
                        out.append(Binding(y2, OpCall("sparse_matmul", (x2, *arrs), (), n.loc), b.loc))
                        out.append(Binding(b.var, OpCall("reshape", (y2,), attrs_of({"shape": yt.shape}), n.loc), b.loc))
                    else:
                        out.append(Binding(b.var, OpCall("sparse_matmul", (x, *arrs), (), n.loc), b.loc))
                return Block(tuple(out), blk.results, blk.loc)

            return map_blocks(g, block)

        module = dataclasses.replace(module, functions=tuple(
            rewrite(f) if isinstance(f, Function) else f for f in module.functions))
        if not done:
            ctx.info("sparsify: no matmul by a constant 2-d f32 weight")
            return module
        module = DCE().apply(module, ctx)
        live = {b.node.key for f in module.graph_functions() for b in walk_bindings(f.body) if isinstance(b.node, Constant)}
        ctx.set_constants({k: v for k, v in consts.items() if k in live or k not in done})
        ctx.info(f"sparsify: {stats['sparse']} weight(s) as sparse kernels, {stats['dense']} pruned but kept dense")
        return module

    def _sparsify(self, key: str, consts: dict[str, np.ndarray], b: Binding, ctx: PassContext,
                  stats: dict[str, int]) -> tuple[str, ...]:
        w = consts[key]
        pruned = self.prune(w, b.loc)
        dens = np.count_nonzero(pruned) / max(pruned.size, 1)
        what = f"sparsify: {key} ({w.shape[0]} x {w.shape[1]}) density {np.count_nonzero(w) / max(w.size, 1):.3f} -> {dens:.3f}"
        if dens < self.max_density:
            ind_ptr, indices, data = csr_of_transpose(pruned)
            keys = tuple(f"{key}.sparse.{p}" for p in ("indptr", "indices", "data"))
            consts.update(zip(keys, (ind_ptr, indices, data)))
            stats["sparse"] += 1
            ctx.info(f"{what}: sparse kernel ({len(data)} nonzeros)", b.loc)
            return keys
        if np.array_equal(pruned, w):
            ctx.info(f"{what}: kept dense (not below --max-density {self.max_density})", b.loc)
            return ()
        consts[f"{key}.pruned"] = pruned
        stats["dense"] += 1
        ctx.info(f"{what}: pruned, kept dense (not below --max-density {self.max_density})", b.loc)
        return (f"{key}.pruned",)


def _with_derived(module: Module, keys: set[str]) -> set[str]:
    """`keys` and the constants folded from them (module meta `derived`: (key, op, operand keys, attrs))."""
    out = set(keys)
    for entry in dict(module.meta).get("derived", ()) if keys else ():
        if set(entry[2]) & out:
            out.add(entry[0])
    return out


def _fits(x: Value, w: Value) -> bool:
    """matmul(x, W) that sparse_matmul computes: x f32 of rank >= 2, W a 2-d f32 constant."""
    xt, wt = x.type, w.type
    return (isinstance(xt, TensorType) and isinstance(wt, TensorType) and xt.dtype == "f32" and wt.dtype == "f32"
            and xt.shape is not None and len(xt.shape) >= 2 and wt.shape is not None and len(wt.shape) == 2)


__all__ = ["Sparsify", "csr_of_transpose", "prune_blocks", "prune_threshold"]
