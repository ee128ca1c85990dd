"""activation-layout: store the activations between tensor programs channels-last (N, H, W, C).

The CPU convolution schedule keeps output channels in vector lanes (passes/schedule/conv_tiling.py),
so in NCHW the lanes of a channel vector are `H x W` elements apart: the write-back stores each
accumulator lane by itself (one `vextractps` per element), a residual operand is loaded the same way,
and a 1x1 convolution's tile touches 32 output planes and 64 input planes at once, more streams than
the prefetchers follow. Channels-last, a channel vector is contiguous: one vector store, one vector
load, and a convolution's input broadcasts sit at constant offsets (column j at `j * C`).

The pass runs after `schedule` and works on the tensors the graph passes between tensor programs,
not on graph ops: it needs no layout rule per op, and a convolution keeps the schedule it was given
(only its addresses change, as TVM's `transform_layout` applied across a call). A tensor `t` (4-D,
constant channels, bound at the top level, read only by tensor programs) is stored channels-last when
every access of its producer and consumers is friendly, a vector over the channels alone or one
element (`accesses`), at least one is a channel vector, and no windowed convolution (3x3, 7x7) reads
it (`channels_last`). A one-block program vectorized over the width by its default schedule (a max
pool, a concatenation, a batch-norm-ReLU chain) would gather a channels-last operand: it is scheduled
again over channel vectors (`rescheduled`: ResNet's and SqueezeNet's stems feed a max pool, DenseNet
concatenates), but only where all its 4-D inputs are channels-last, since the new schedule gathers
an NCHW input (programs that would are banned and the choice is made again); an NCHW result is
written lane by lane, as a convolution's write-back is.
Windowed readers are left out because they measured slower on a channels-last input: VGG-19's 3x3s
at 224, 112 and 56 (64-256 channels) 0.85-0.89x as kernels, though its stem, whose NCHW write-back
was most of its time, went 6x faster; on ResNet-50, Inception v1/v2 and SqueezeNet the models were
as fast or faster without them, on DenseNet-121 3% slower (docs/performance.md, tenth pass).
Every access `t[n, c, h, w]` becomes `t[n, h, w, c]`; a program called with different layouts at
different sites is cloned per layout (`_nhwc`).

Why channels-last and not NCHW[16]c (TVM's conv2d_NCHWc, onnxruntime's NchwcTransformer): blocked,
an input read inside the reduction is `x[n, c // 16, h, w, c % 16]`, and the row-major flat index of
that (ir/flatten.py, Horner form) made LLVM recompute each column's address per reduction step (three
integer ops per broadcast, the loop front-end bound); channels-last, the reduction variable is the
last index and each column a constant displacement. Positions of `PAD_FROM`+ channels (a power of two
of 512+ bytes) are padded by `PAD_CHANNELS` so that a row of columns does not map to a few L1 sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const, Expr, Load, Var, free_vars, substitute
from mlc.ir.graph import Binding, Block, CallTensor, Function, Value
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.rewrite import remap_args, used_names, walk_bindings
from mlc.ir.tir import BlockStmt, Buffer, For, GemmCall, PrimFunc, Stmt, Store
from mlc.ir.tir_visit import StmtMutator, StmtVisitor, loads_in, nodes, rewrite, stores_in, subst
from mlc.ir.types import TensorType

from .registry import ModulePass, PassContext, option, register_pass
from .schedule.rules import target_info
from .schedule.schedule import Schedule

# channels per position from which a position is padded by `PAD_CHANNELS` (64 bytes): with 128+ f32
# channels (512 B, a power of two) a row of output columns maps to a few L1 sets only
PAD_FROM, PAD_CHANNELS = 128, 16
# whether a windowed convolution (3x3, 7x7) may read a channels-last input (see the module doc)
WINDOWED_READS = False


@dataclass(frozen=True)
class Access:
    """One load or store of a parameter: the vector width over the channels (None: one element, or
    the same element in every lane), and whether the spatial indices use a reduction iterator of
    extent > 1 (a windowed convolution reading its input)."""

    width: int | None
    windowed: bool


class _Accesses(StmtVisitor):
    """Every load and store of one buffer, with the innermost enclosing vectorized loop and the block
    iterators resolved to loop expressions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loops: list[For] = []
        self.env: dict[Var, Expr] = {}
        self.taps: set[Var] = set()
        self.found: list[tuple[tuple[Expr, ...], For | None, bool]] = []

    def visit_For(self, s: For) -> None:
        self.loops.append(s)
        self.generic_visit(s)
        self.loops.pop()

    def visit_BlockStmt(self, s: BlockStmt) -> None:
        saved, taps = dict(self.env), self.taps
        for iv in s.iters:
            self.env[iv.var] = substitute(iv.binding, saved)
        self.taps = {iv.var for iv in s.iters if iv.kind == "R" and (arith.as_int(iv.extent) or 2) > 1}
        self.generic_visit(s)
        self.env, self.taps = saved, taps

    def visit_Store(self, s: Store) -> None:
        if s.buffer.name == self.name:
            self.note(s.indices)
        self.generic_visit(s)

    def visit_expr(self, e: Expr) -> None:
        for ld in loads_in(e):
            if ld.buffer.name == self.name:
                self.note(ld.indices)

    def note(self, indices: tuple[Expr, ...]) -> None:
        vec = next((lp for lp in reversed(self.loops) if lp.kind == "vectorized"), None)
        windowed = any(self.taps & free_vars(i) for i in indices[2:])
        self.found.append((tuple(substitute(i, self.env) for i in indices), vec, windowed))


def accesses(func: PrimFunc, param: int) -> list[Access] | None:
    """The accesses of parameter `param` (an NCHW buffer), or None when one is unfriendly: a vector
    whose lanes run over another axis than the channels (a pool or an elementwise program vectorized
    over the width), or a GEMM intrinsic's operand; also None when nothing accesses it."""
    buf = func.params[param]
    if any(isinstance(s, GemmCall) and buf.name in (s.a.name, s.b.name, s.c.name) for s in nodes(func.body)):
        return None
    v = _Accesses(buf.name)
    v.visit(func.body)
    out: list[Access] = []
    for idx, vec, windowed in v.found:
        if len(idx) != 4:
            return None
        uses = [vec is not None and vec.var in free_vars(i) for i in idx]
        if not any(uses):
            out.append(Access(None, windowed))
            continue
        ext = arith.as_int(vec.extent) if vec is not None else None
        if ext is None or uses != [False, True, False, False]:
            return None
        out.append(Access(ext, windowed))
    return out or None


def channels_last(shape: tuple[Expr, ...], uses: list[list[Access] | None]) -> bool:
    """Whether a tensor of `shape` whose producer and consumers access it as `uses` is stored
    channels-last: every access friendly, at least one a channel vector (else nothing gains), and no
    windowed convolution broadcasting its elements (unless `WINDOWED_READS`; a pool's window reads
    channel vectors)."""
    if len(shape) != 4 or any(u is None for u in uses) or arith.as_int(shape[1]) is None:
        return False
    flat = [a for u in uses for a in u]  # type: ignore[union-attr]
    return any(a.width for a in flat) and (WINDOWED_READS or not any(a.windowed and not a.width for a in flat))


def nhwc(buf: Buffer) -> Buffer:
    """`buf` (N, C, H, W) as (N, H, W, C'), C' = C padded by `PAD_CHANNELS` from `PAD_FROM` channels."""
    n, c, h, w = buf.shape
    cc = arith.as_int(c)
    if cc is not None and cc % PAD_FROM == 0:
        c = Const(cc + PAD_CHANNELS)
    return dataclasses.replace(buf, shape=(n, h, w, c))


def with_nhwc_params(func: PrimFunc, params: set[int], name: str) -> PrimFunc:
    """`func` renamed `name`, the parameters at `params` stored channels-last (`nhwc`)."""
    new = {func.params[i].name: nhwc(func.params[i]) for i in params}

    def load(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer.name in new:
            n, c, h, w = (rewrite(i, load) for i in e.indices)
            return Load(new[e.buffer.name], (n, h, w, c), e.loc)
        return None

    class _M(StmtMutator):
        def visit_expr(self, e: Expr) -> Expr:
            return rewrite(e, load)

        def visit_Store(self, s: Store) -> Stmt:
            s = self.generic_visit(s)  # type: ignore[assignment]
            if s.buffer.name in new:
                n, c, h, w = s.indices
                return dataclasses.replace(s, buffer=new[s.buffer.name], indices=(n, h, w, c))
            return s

    params_ = tuple(new.get(p.name, p) for p in func.params)
    return dataclasses.replace(func, name=name, params=params_, body=_M().visit(func.body))


def rescheduled(func: PrimFunc, lanes: int) -> PrimFunc | None:
    """A one-block program (an elementwise chain, a concatenation, a pool) scheduled afresh for
    channels-last operands: loops (n, h) fused and parallel, w, the channel blocks, its reduction (a
    pool's window), then a channel vector: the widest of 64, 32, 16 or `lanes` that divides them.
    None when the program is not one block writing one (n, c, h, w) output at its iterators, or its
    channels are not a constant multiple of `lanes`. Its default schedule vectorized the width, which
    channels-last makes a gather; rebuilt, every access of a 4-D operand is a channel vector."""
    body = func.body
    if not isinstance(body, BlockStmt) or body.alloc_buffers or func.num_outputs != 1:
        return None
    inner = [s for s in nodes(body) if isinstance(s, BlockStmt) and s is not body]
    if len(inner) == 2:  # a decomposed reduction (`decompose_reduction`): made whole again
        b, ini = sorted(inner, key=lambda x: all(iv.kind == "S" for iv in x.iters))
        sp = [iv for iv in b.iters if iv.kind == "S"]
        if b.init is not None or any(iv.kind != "S" for iv in ini.iters) or len(sp) == len(b.iters) \
                or {st.buffer.name for st in stores_in(ini.body)} != {func.params[-1].name} \
                or [arith.as_int(iv.extent) for iv in ini.iters] != [arith.as_int(iv.extent) for iv in sp]:
            return None
        inner = [dataclasses.replace(b, init=subst(ini.body, {iv.var: sv.var for iv, sv in zip(ini.iters, sp)}))]
    if len(inner) != 1 or inner[0].alloc_buffers:
        return None
    b = inner[0]
    out = func.params[-1]
    st = [x for x in nodes(b.body) if isinstance(x, Store) and x.buffer.name == out.name]
    names = [iv.var for iv in b.iters]
    if len(out.shape) != 4 or len(st) != 1 or not all(isinstance(i, Var) and i in names for i in st[0].indices):
        return None
    axis = [names.index(i) for i in st[0].indices]  # type: ignore[arg-type]
    c_ext = arith.as_int(b.iters[axis[1]].extent)
    if c_ext is None or c_ext % lanes or any(b.iters[k].kind != "S" for k in axis):
        return None
    loops = [Var(f"ax{k}", "i64") for k in range(len(b.iters))]
    blk = dataclasses.replace(b, iters=tuple(dataclasses.replace(iv, binding=v) for iv, v in zip(b.iters, loops)))
    stmt: Stmt = blk
    for iv, v in reversed(list(zip(b.iters, loops))):
        stmt = For(v, Const(0), iv.extent, stmt)
    sch = Schedule(dataclasses.replace(func, body=dataclasses.replace(body, body=stmt)))
    rv = sch.get_block(b.name)
    lp = sch.get_loops(rv)
    red = [lp[k] for k, iv in enumerate(b.iters) if iv.kind == "R"]
    rest = [lp[k] for k in range(len(b.iters)) if k not in axis and b.iters[k].kind == "S"]
    vec = next(v for v in (64, 32, 16, lanes) if c_ext % v == 0)
    try:
        c0, c1 = sch.split(lp[axis[1]], [c_ext // vec, vec])
        sch.reorder(*rest, lp[axis[0]], lp[axis[2]], lp[axis[3]], c0, *red, c1)
        sch.parallel(sch.fuse(*rest, lp[axis[0]], lp[axis[2]]))
        sch.vectorize(c1)
    except MlcError:
        return None
    return sch.func


@register_pass
@dataclass(frozen=True)
class ActivationLayout(ModulePass):
    """Store 4-D activations between tensor programs channels-last where their producer and
    consumers access them by channel vectors (after `schedule`; see the module doc)."""

    name: ClassVar[str] = "activation-layout"
    enable: bool = option(True, "Off: every activation stays NCHW (an A/B switch).")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        if not self.enable:
            return module
        prims = {f.name: f for f in module.prim_functions()}
        lanes = target_info(ctx.target).lanes
        alts: dict[str, PrimFunc | None] = {}  # `rescheduled` programs, for consumers vectorized over the width
        banned: set[str] = set()  # programs whose rescheduled form would meet an NCHW operand
        cache: dict[tuple[str, int], list[Access] | None] = {}

        def alt(fn: str) -> PrimFunc | None:
            if fn not in alts:
                alts[fn] = rescheduled(prims[fn], lanes)
            return None if fn in banned else alts[fn]

        def own(fn: str, i: int) -> list[Access] | None:
            if (fn, i) not in cache:
                cache[(fn, i)] = accesses(prims[fn], i)
            return cache[(fn, i)]

        def uses(fn: str, i: int) -> list[Access] | None:
            a = own(fn, i)
            if a is not None:
                return a
            r = alt(fn)  # rescheduled only for a program whose own schedule is unfriendly
            return None if r is None else accesses(r, i)

        # a rescheduled program gathers an input that stays NCHW: used only where all its 4-D inputs
        # are channels-last, else banned and the choice made again (an NCHW result it writes lane by
        # lane, as a convolution's write-back does)
        while True:
            chosen = {g.name: self.choose(g, prims, uses) for g in module.graph_functions()}
            bad = {fn for g in module.graph_functions() for fn, four in self.operands(g, prims)
                   if any(v in chosen[g.name] and own(fn, i) is None for i, v in four) and alt(fn) is not None
                   and not all(v in chosen[g.name] for i, v in four if i < len(prims[fn].params) - 1)}
            if not bad:
                break
            banned |= bad
        variants: dict[tuple[str, frozenset[int]], str] = {}  # (program, nhwc params) -> clone
        taken = {f.name for f in module.functions}
        graphs = {g.name: self.rewrite(g, chosen[g.name], prims, variants, taken) for g in module.graph_functions()}
        called = {b.node.func for g in graphs.values() for b in walk_bindings(g.body) if isinstance(b.node, CallTensor)}
        out: list[Function | PrimFunc] = []
        for f in module.functions:
            if isinstance(f, Function):
                out.append(graphs[f.name])
            elif f.name in called or all(fn != f.name for fn, _ in variants):
                out.append(f)
        for (fn, ps), name in variants.items():
            f = alt(fn) if any(own(fn, i) is None for i in ps) else prims[fn]
            assert f is not None
            out.append(with_nhwc_params(f, set(ps), name))
        return Module(tuple(out), module.meta, module.constants, module.loc)

    @staticmethod
    def operands(g: Function, prims: dict[str, PrimFunc]) -> list[tuple[str, list[tuple[int, str]]]]:
        """Per top-level tensor program call of `g`: the program and its 4-D operands (parameter
        index, value name), the result included."""
        out = []
        for b in g.body.bindings:
            if isinstance(b.node, CallTensor) and b.node.func in prims:
                vals = [*enumerate(b.node.args), (len(prims[b.node.func].params) - 1, b.var)]
                out.append((b.node.func, [(i, v.name) for i, v in vals if isinstance(v.type, TensorType)
                                          and v.type.shape is not None and len(v.type.shape) == 4]))
        return out

    @staticmethod
    def choose(g: Function, prims: dict[str, PrimFunc],
               uses: Callable[[str, int], list[Access] | None]) -> set[str]:
        """The top-level values of `g` to store channels-last (`channels_last`); values returned or
        read by anything but a top-level tensor program call (graph ops, If/Loop bodies) stay NCHW."""
        other = {r.name for r in g.body.results}
        readers: dict[str, list[tuple[str, int]]] = {}
        for b in g.body.bindings:
            if isinstance(b.node, CallTensor) and b.node.func in prims:
                for i, a in enumerate(b.node.args):
                    readers.setdefault(a.name, []).append((b.node.func, i))
            else:
                other |= used_names(Block((b,), ()))
        out: set[str] = set()
        for b in g.body.bindings:
            node, t = b.node, b.var.type
            if not isinstance(node, CallTensor) or node.func not in prims or b.var.name in other \
                    or b.var.name not in readers or not isinstance(t, TensorType) or t.shape is None:
                continue
            f = prims[node.func]
            if f.num_outputs == 1 and channels_last(
                    t.shape, [uses(node.func, len(f.params) - 1)] + [uses(fn, i) for fn, i in readers[b.var.name]]):
                out.add(b.var.name)
        return out

    @staticmethod
    def rewrite(g: Function, chosen: set[str], prims: dict[str, PrimFunc],
                variants: dict[tuple[str, frozenset[int]], str], taken: set[str]) -> Function:
        """`g` with the `chosen` values' types channels-last and their producers and consumers
        calling clones that take them so."""
        if not chosen:
            return g
        vals: dict[str, Value] = {}
        out: list[Binding] = []
        for b in g.body.bindings:
            node, var = remap_args(b.node, lambda v: vals.get(v.name, v)), b.var
            if isinstance(node, CallTensor) and node.func in prims:
                ps = {i for i, a in enumerate(node.args) if a.name in chosen}
                if var.name in chosen:
                    ps.add(len(prims[node.func].params) - 1)
                    t = var.type
                    assert isinstance(t, TensorType) and t.shape is not None
                    var = vals[var.name] = Value(var.name, TensorType(nhwc(Buffer(var.name, t.shape, t.dtype)).shape,
                                                                      t.dtype), var.loc)
                if ps:
                    key = (node.func, frozenset(ps))
                    if key not in variants:
                        variants[key] = fresh_name(f"{node.func}_nhwc", taken)
                    node = dataclasses.replace(node, func=variants[key])
            out.append(Binding(var, node, b.loc))
        return dataclasses.replace(g, body=Block(tuple(out), g.body.results, g.body.loc))


__all__ = ["Access", "ActivationLayout", "accesses", "channels_last", "nhwc", "rescheduled", "with_nhwc_params"]
