"""conv-to-gemm: 2-D convolutions of one group as im2col + matmul, for the GPU's GEMM templates.

The CUDA schedule tensorizes GEMM blocks (f32 register tiles, f16/bf16 tensor cores) but gives a
convolution's reduction over (C, kh, kw) a cross-thread reduction per output element. Rewritten as

    cols = im2col(x)                       (N, OH*OW, kh*kw*C [+ zero columns]), channels minor
    y    = matmul(cols, Wt)                Wt = W as (kh, kw, C, CO) reshaped to (K, CO)
    y    = reshape(transpose(y), NCHW)     (N, CO, OH, OW), the conv's own value and type

the matmul is a GEMM whose A folds its leading dim N into M (ir/tir_gemm.py GemmInfo, batched=False)
and whose B is a constant computed here once when W is a constant (also through a cast: `mlc amp`'s
f16 weights). A weight computed at run time (a training graph's parameter) would need graph ops to
transpose it, which fusion inlines into the matmul's operand load: no GEMM template takes that yet, so
those convolutions stay conv2d unless `computed_weights`, as do those whose GEMM is smaller than the
templates take (`min_size`) or whose CO the GEMM rules cannot tile (`co_multiple`). im2col is stored
(its lowering materializes it), so the GEMM block loads its operands plainly; the transpose back joins
the conv's epilogue (batch norm, add, relu) in one elementwise program, which also fuses into the next
convolution's im2col stage where that is its only reader. K is padded with zero columns and rows to a
multiple of `k_multiple`: the f16 tensor-core templates need K % 8 == 0 (ResNet's 7x7 stem has
K = 3 * 49 = 147), and the f32 tile splits K by 8 or 16. Grouped and depthwise convolutions stay conv2d
(no one GEMM computes them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from mlc.ir.arith import as_int
from mlc.ir.expr import Const, Expr
from mlc.ir.graph import Binding, Block, Constant, If, Loop, OpCall, Value, attrs_of
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.ops.registry import get as get_op
from mlc.ir.rewrite import used_names, walk_bindings
from mlc.ir.types import TensorType, Type, UnknownType

from .canonicalize import DCE
from .registry import ModulePass, PassContext, option, register_pass
from .shape_infer import ShapeInfer

Known = np.ndarray | tuple[OpCall, Value]  # a constant's value, or a cast of one (evaluated on demand)


@register_pass
@dataclass(frozen=True)
class ConvToGemm(ModulePass):
    """2-D convolutions of one group as im2col + matmul with the weight transposed once, for the
    GPU's GEMM templates (grouped convolutions stay)."""

    name: ClassVar[str] = "conv-to-gemm"
    needs_constants: ClassVar[bool] = True
    k_multiple: int = option(8, "Pad the GEMM's K (C*kh*kw) with zeros to a multiple of this (1: never).")
    min_size: int = option(64, "Only where CO and K (padded) are at least this: the GPU's f32 GEMM tile wants 64, "
                           "and a GEMM on no template would only add a transpose.")
    co_multiple: int = option(8, "Only where CO is a multiple of this: the GEMM rules split the output "
                              "columns by 8 or 16.")
    computed_weights: bool = option(False, "Also convolutions whose weight is computed at run time (training graphs); "
                                    "its transpose is then read by the matmul, which the GEMM rules cannot take yet.")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        module = ShapeInfer().apply(module, ctx)
        consts = dict(ctx.constants or {})
        n_before = len(consts)
        count = 0
        for fn in module.graph_functions():
            rw = _Rewriter(self, fn.name, consts, {p.name for p in fn.params} | used_names(fn.body))
            body = rw.block(fn.body, {})
            count += rw.count
            if rw.count:
                module = module.with_function(replace(fn, body=body))
        if not count:
            return module
        ctx.info(f"conv-to-gemm: {count} convolution(s) as im2col + matmul")
        module = DCE().apply(ShapeInfer().apply(module, ctx), ctx)
        if len(consts) != n_before:
            used = {b.node.key for f in module.graph_functions() for b in walk_bindings(f.body)
                    if isinstance(b.node, Constant)}
            ctx.set_constants({k: v for k, v in consts.items() if k in used})
        return module


@dataclass
class _Rewriter:
    """One graph function's rewrite: fresh names, the constants' values, transposed weights made."""

    opts: ConvToGemm
    fn: str
    consts: dict[str, np.ndarray]
    used: set[str]
    count: int = 0

    def block(self, blk: Block, known: dict[str, Known]) -> Block:
        """`blk` with its convolutions rewritten; `known`: values of the constants in scope (a copy
        per nested block, so a value bound inside one is not seen outside it)."""
        known = dict(known)
        weights: dict[tuple[str, int], Value] = {}  # (weight, pad) -> its transposed GEMM operand
        out: list[Binding] = []
        for b in blk.bindings:
            node = b.node
            if isinstance(node, Constant) and node.key in self.consts:
                known[b.var.name] = self.consts[node.key]
            elif isinstance(node, OpCall) and node.op == "cast" and node.args[0].name in known:
                known[b.var.name] = (node, b.var)  # evaluated if a convolution's weight
            elif isinstance(node, If):
                node = replace(node, then_block=self.block(node.then_block, known),
                               else_block=self.block(node.else_block, known))
            elif isinstance(node, Loop):
                node = replace(node, body=self.block(node.body, known))
            if isinstance(node, OpCall) and node.op == "conv2d" and self.applies(node, b.var, known):
                out += self.conv(b, node, known, weights)
                continue
            out.append(Binding(b.var, node, b.loc))
        return Block(tuple(out), blk.results, blk.loc)

    def applies(self, node: OpCall, y: Value, known: dict[str, Known]) -> bool:
        shape = _gemm_shape(node, y)
        o = self.opts
        if shape is None or not (o.computed_weights or node.args[1].name in known):
            return False
        co, k = shape[:2]
        return min(co, k + _pad(k, o)) >= o.min_size and co % max(1, o.co_multiple) == 0

    def conv(self, b: Binding, node: OpCall, known: dict[str, Known],
             weights: dict[tuple[str, int], Value]) -> list[Binding]:
        shape = _gemm_shape(node, b.var)
        assert shape is not None
        co, k, kh, kw = shape
        pad = _pad(k, self.opts)
        x, w = node.args
        loc, y = b.loc, b.var.name
        new: list[Binding] = []

        def bind(hint: str, n: OpCall | Constant, t: Type | None = None) -> Value:
            v = Value(fresh_name(f"{y}_{hint}", self.used), t or UnknownType(), loc)
            new.append(Binding(v, n, loc))
            return v

        window = {a: node.attr(a) for a in ("strides", "pads", "dilations") if node.attr(a) is not None}
        cols = bind("cols", OpCall("im2col", (x,), attrs_of({**window, "kernel_shape": (kh, kw), "pad_k": pad}), loc))
        wt = weights.get((w.name, pad))
        if wt is None:
            if w.name in known:  # the weight's GEMM layout, computed once here
                hwio = _value(w.name, known).transpose(2, 3, 1, 0).reshape(k, co)  # im2col's column order
                arr = np.ascontiguousarray(np.pad(hwio, ((0, pad), (0, 0))))
                t = TensorType((Const(k + pad), Const(co)), w.type.dtype)  # type: ignore[union-attr]
                wt = bind("wt", Constant(fresh_name(f"{self.fn}.{y}.gemm_weight", set(self.consts)), loc), t)
                assert isinstance(new[-1].node, Constant)
                self.consts[new[-1].node.key] = arr
                known[wt.name] = arr
            else:
                wt4 = bind("w_hwio", OpCall("transpose", (w,), attrs_of({"perm": (2, 3, 1, 0)}), loc))
                wt = bind("w_kxco" if pad else "wt", OpCall("reshape", (wt4,), attrs_of({"shape": (k, co)}), loc))
                if pad:
                    wt = bind("wt", OpCall("pad", (wt,), attrs_of({"pads": (0, 0, pad, 0)}), loc))
            weights[(w.name, pad)] = wt
        mm = bind("gemm", OpCall("matmul", (cols, wt), (), loc))
        t = bind("nchw", OpCall("transpose", (mm,), attrs_of({"perm": (0, 2, 1)}), loc))
        assert isinstance(b.var.type, TensorType) and b.var.type.shape is not None
        nchw = attrs_of({"shape": tuple(_dim(d) for d in b.var.type.shape)})
        new.append(Binding(b.var, OpCall("reshape", (t,), nchw, loc), loc))
        self.count += 1
        return new


def _gemm_shape(node: OpCall, y: Value) -> tuple[int, int, int, int] | None:
    """(CO, K = C*kh*kw, kh, kw) of a conv2d the rewrite applies to (one group, a constant-shaped
    weight, typed operands and result), else None."""
    if int(node.attr("groups", 1) or 1) != 1 or len(node.args) != 2:  # type: ignore[arg-type]
        return None
    x, w = node.args
    ts = (x.type, w.type, y.type)
    if not all(isinstance(t, TensorType) and t.shape is not None and len(t.shape) == 4 for t in ts):
        return None
    assert isinstance(w.type, TensorType) and w.type.shape is not None
    dims = [as_int(d) for d in w.type.shape]
    if any(d is None for d in dims):
        return None
    co, c, kh, kw = dims  # type: ignore[misc]
    return co, c * kh * kw, kh, kw  # type: ignore[operator]


def _pad(k: int, o: ConvToGemm) -> int:
    """Zero columns that bring K to a multiple of k_multiple."""
    return -k % max(1, o.k_multiple)


def _dim(d: Expr) -> int | Expr:
    return d if as_int(d) is None else as_int(d)  # type: ignore[return-value]


def _value(name: str, known: dict[str, Known]) -> np.ndarray:
    """The value of a constant, or of a cast of one through the op's reference (`mlc amp`'s f16
    weights that fold-constants left, being over its size cap), computed when first asked for."""
    v = known[name]
    if isinstance(v, tuple):
        node, var = v
        op = get_op(node.op)
        assert op is not None and op.ref is not None
        v = known[name] = np.asarray(op.ref([_value(node.args[0].name, known)], dict(node.attrs), var.type, {}))
    return v
