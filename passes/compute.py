"""The compute-definition layer that lowering and fusion share: lazy tensors over index functions.

A `Tensor` is an accessor `index -> Expr`. Elementwise and layout computations stay *virtual*
(their expression is substituted into each consumer, which is how fusion inlines producers);
reductions are *pending* until something reads them or they are written to an output, then they
become one loop nest with one block (spatial + reduce iterators, init + update) storing into a
buffer allocated in the PrimFunc's root block. Every materialised stage is a perfect loop nest
with a single block, the shape the TIR interpreter vectorises and schedule rules expect. An
*in-place* tensor (`Builder.in_place`) stores a base tensor once and rewrites it in the same buffer,
so an expensive value (softmax's exp) read by a reduction and by the result is computed once; when
it is a result, that buffer is the output parameter, which the schedule's auto-inline leaves alone.

ir/tir_builder.py materialises every stage; lowering needs inlining across ops, hence this layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlc.ir import arith
from mlc.ir.dtype import is_float
from mlc.ir.expr import Bin, Cast, Const, Expr, Load, Select, Var, free_vars, reduction_identity, substitute
from mlc.ir.tir import BlockStmt, Buffer, For, IterVar, PrimFunc, Seq, Stmt, Store

Index = tuple[Expr, ...]
Shape = tuple[Expr, ...]


class CannotLower(Exception):
    """An op (or an op with these attributes/types) has no tensor-program lowering."""


def cst(v: float | int | bool, dtype: str) -> Const:
    """A constant of the given element type (Python value coerced like numpy would)."""
    if dtype == "bool":
        return Const(bool(v), "bool")
    if is_float(dtype):
        return Const(float(v), dtype)
    return Const(int(v), dtype)


def as_dtype(e: Expr, dtype: str) -> Expr:
    return e if e.dtype == dtype else Cast(dtype, e)


def all_of(conds: Sequence[Expr]) -> Expr | None:
    out: Expr | None = None
    for c in conds:
        out = c if out is None else Bin("and", out, c)
    return out


@dataclass
class Reduction:
    """A pending reduction: out[idx] = op over `extents` of value(idx, ridx)."""

    op: str
    extents: tuple[Expr, ...]
    value: Callable[[Index, Index], Expr]


@dataclass
class InPlace:
    """A tensor computed as `base` stored into its own buffer, then rewritten there by `fn(idx, old)`.

    Stages emitted between the two (reductions over `base`, materialised lazily by `fn`) read the
    stored values instead of recomputing them: softmax stores exp(x - max) once, sums it and
    normalises in place. `base` must have no other reader once the tensor is materialised.
    """

    base: Tensor
    fn: Callable[[Index, Expr], Expr]


@dataclass(eq=False)
class Tensor:
    """A tensor of the program being built: a buffer, a virtual index function, a pending reduction or
    a pending in-place update."""

    shape: Shape
    dtype: str
    name: str
    fn: Callable[[Index], Expr] | None = None
    reduction: Reduction | None = None
    buffer: Buffer | None = None
    builder: Builder | None = field(default=None, repr=False)
    update: InPlace | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __call__(self, *idx: Expr) -> Expr:
        return self.at(tuple(idx))

    def at(self, idx: Index) -> Expr:
        if len(idx) != len(self.shape):
            raise CannotLower(f"tensor {self.name} of rank {len(self.shape)} indexed with {len(idx)} indices")
        if self.buffer is None and (self.reduction is not None or self.update is not None):
            assert self.builder is not None
            self.builder.materialize(self)
        if self.buffer is not None:
            return Load(self.buffer, tuple(arith.simplify(i) for i in idx))
        assert self.fn is not None
        return as_dtype(self.fn(idx), self.dtype)

    @property
    def is_virtual(self) -> bool:
        return self.buffer is None and self.reduction is None and self.update is None


class Builder:
    """Collects the stages of one PrimFunc; names are fresh against every symbol the program mentions."""

    def __init__(self, taken: set[str]):
        self.taken = set(taken)
        self.stages: list[Stmt] = []
        self.allocs: list[Buffer] = []
        self.params: list[Buffer] = []
        self.outputs: list[Buffer] = []
        self.block_names: set[str] = set()

    def fresh(self, base: str) -> str:
        """A name for a buffer, loop or iterator var, distinct from every symbol in the program."""
        return _fresh(base, self.taken)

    def block_name(self, base: str) -> str:
        """Blocks have their own namespace (a block may share its buffer's name, as in TVM)."""
        return _fresh(base, self.block_names)

    # ---- tensors -------------------------------------------------------------------------------
    def placeholder(self, shape: Shape, dtype: str, name: str = "in") -> Tensor:
        buf = Buffer(self.fresh(name), shape, dtype)
        self.params.append(buf)
        return Tensor(shape, dtype, buf.name, buffer=buf, builder=self)

    def compute(self, shape: Sequence[Expr], dtype: str, fn: Callable[[Index], Expr], name: str = "T") -> Tensor:
        """A virtual tensor: consumers inline `fn`."""
        return Tensor(tuple(shape), dtype, name, fn=fn, builder=self)

    def reduce(self, shape: Sequence[Expr], dtype: str, op: str, extents: Sequence[Expr],
               value: Callable[[Index, Index], Expr], name: str = "red") -> Tensor:
        """A pending reduction over a domain of `extents` (materialised when first read or stored).

        Sums and products of f16/bf16 accumulate in f32 and round once at the end, as numpy, ONNX's
        reference and every GPU GEMM do; rounding each partial sum to f16 drifted by an ulp or more."""
        if op not in ("add", "mul", "max", "min"):
            raise CannotLower(f"unsupported reduction combiner {op}")
        if op in ("add", "mul") and dtype in ("f16", "bf16"):
            wide = Tensor(tuple(shape), "f32", name + "_f32", builder=self,
                          reduction=Reduction(op, tuple(extents), lambda i, r: as_dtype(value(i, r), "f32")))
            return self.compute(shape, dtype, lambda i: Cast(dtype, wide.at(i)), name)
        return Tensor(tuple(shape), dtype, name, reduction=Reduction(op, tuple(extents), value), builder=self)

    def in_place(self, base: Tensor, fn: Callable[[Index, Expr], Expr], name: str) -> Tensor:
        """`fn(idx, base[idx])` computed in `base`'s storage (see `InPlace`); `base` is lowering-private."""
        if base.buffer is not None or base.update is not None:
            raise CannotLower(f"{name}: in-place base must not be stored yet")
        return Tensor(base.shape, base.dtype, name, update=InPlace(base, fn), builder=self)

    def materialize(self, t: Tensor, out: Buffer | None = None) -> Tensor:
        """Store `t` into `out` (an output buffer) or a fresh allocated buffer; `t` then reads from it."""
        if out is None and t.buffer is not None:
            return t
        buf = out if out is not None else Buffer(self.fresh(t.name), t.shape, t.dtype)
        if out is None:
            self.allocs.append(buf)
        self._store(t, buf)
        return t

    def _store(self, t: Tensor, buf: Buffer) -> None:
        if t.reduction is not None and t.buffer is None:
            self.stages.append(self._reduce_nest(t, buf))
        elif t.update is not None and t.buffer is None:
            upd = t.update
            self._store(upd.base, buf)
            fn = upd.fn
            self.stages.append(self._compute_nest(Tensor(t.shape, t.dtype, t.name, fn=lambda i: fn(i, Load(buf, i))), buf))
        else:
            self.stages.append(self._compute_nest(t, buf))
        t.buffer = buf

    def output(self, t: Tensor, name: str = "out") -> Buffer:
        buf = Buffer(self.fresh(name), t.shape, t.dtype)
        self.outputs.append(buf)
        self.materialize(t, buf)
        return buf

    # ---- loop nests ----------------------------------------------------------------------------
    def _iters(self, extents: Sequence[Expr], kind: str) -> tuple[list[Var], list[IterVar]]:
        loops, iters = [], []
        for ext in extents:
            lv = Var(self.fresh("i" if kind == "S" else "k"))
            iv = Var(self.fresh("v_" + lv.name))
            loops.append(lv)
            iters.append(IterVar(iv, ext, kind, lv))
        return loops, iters

    def _nest(self, loops: list[Var], iters: list[IterVar], block: BlockStmt) -> Stmt:
        stmt: Stmt = block
        for lv, iv in reversed(list(zip(loops, iters))):
            stmt = For(lv, Const(0), iv.extent, stmt)
        return stmt

    def _value(self, fn: Callable[..., Expr], ranks: Sequence[int]) -> tuple[Expr, list[tuple[Var, ...]]]:
        """Evaluate `fn` on placeholder indices first, so that the stages it reads are emitted (and
        named) before this one; the caller substitutes its iterators for the placeholders."""
        holes = [tuple(Var(f"\0{k}_{j}") for j in range(r)) for k, r in enumerate(ranks)]
        return fn(*holes), holes

    def _compute_nest(self, t: Tensor, buf: Buffer) -> Stmt:
        if t.buffer is not None:
            src = t.buffer
            val, holes = self._value(lambda i: Load(src, i), [t.ndim])
        else:
            assert t.fn is not None
            val, holes = self._value(t.fn, [t.ndim])
        loops, iters = self._iters(t.shape, "S")
        idx = tuple(iv.var for iv in iters)
        val = substitute(val, dict(zip(holes[0], idx)))
        block = BlockStmt(self.block_name(t.name), tuple(iters), Store(buf, idx, as_dtype(val, buf.dtype)))
        return self._nest(loops, iters, block)

    def _reduce_nest(self, t: Tensor, buf: Buffer) -> Stmt:
        red = t.reduction
        assert red is not None
        val, holes = self._value(red.value, [t.ndim, len(red.extents)])
        sl, si = self._iters(t.shape, "S")
        rl, ri = self._iters(red.extents, "R")
        idx = tuple(iv.var for iv in si)
        sub = dict(zip(holes[0] + holes[1], idx + tuple(iv.var for iv in ri)))
        val = as_dtype(substitute(val, sub), buf.dtype)
        upd = Store(buf, idx, Bin(red.op, Load(buf, idx), val))
        block = BlockStmt(self.block_name(t.name), tuple(si + ri), upd, Store(buf, idx, reduction_identity(red.op, buf.dtype)))
        return self._nest(sl + rl, si + ri, block)

    # ---- the function --------------------------------------------------------------------------
    def build(self, name: str) -> PrimFunc:
        """The PrimFunc; symbols no buffer shape binds become scalar params (sorted by name)."""
        if not self.stages:
            raise CannotLower("nothing to compute")
        body: Stmt = self.stages[0] if len(self.stages) == 1 else Seq(tuple(self.stages))
        if self.allocs:
            body = BlockStmt("root", (), body, None, tuple(self.allocs))
        params = tuple(self.params + self.outputs)
        bound = {d for b in params for d in b.shape if isinstance(d, Var)}
        local = _local_vars(body)
        free: set[Var] = set()
        for b in params + tuple(self.allocs):
            for d in b.shape:
                free |= free_vars(d)
        free |= _stmt_vars(body)
        scalars = tuple(sorted((v for v in free - bound - local), key=lambda v: v.name))
        return PrimFunc(name, params, len(self.outputs), body, scalars)


def _fresh(base: str, used: set[str]) -> str:
    name, i = base, 0
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def _local_vars(s: Stmt) -> set[Var]:
    out: set[Var] = set()
    stack: list[Stmt] = [s]
    while stack:
        x = stack.pop()
        if isinstance(x, For):
            out.add(x.var)
            stack.append(x.body)
        elif isinstance(x, BlockStmt):
            out.update(iv.var for iv in x.iters)
            stack.append(x.body)
            if x.init is not None:
                stack.append(x.init)
        elif isinstance(x, Seq):
            stack.extend(x.stmts)
    return out


def _stmt_vars(s: Stmt) -> set[Var]:
    out: set[Var] = set()
    stack: list[Stmt] = [s]
    while stack:
        x = stack.pop()
        if isinstance(x, For):
            out |= free_vars(x.start) | free_vars(x.extent)
            stack.append(x.body)
        elif isinstance(x, BlockStmt):
            for iv in x.iters:
                out |= free_vars(iv.extent) | free_vars(iv.binding)
            stack.append(x.body)
            if x.init is not None:
                stack.append(x.init)
        elif isinstance(x, Seq):
            stack.extend(x.stmts)
        elif isinstance(x, Store):
            out |= free_vars(x.value)
            for i in x.indices:
                out |= free_vars(i)
            out |= {v for d in x.buffer.shape for v in free_vars(d)}
    return out


def bcast_index(idx: Index, in_shape: Shape, out_shape: Shape) -> Index:
    """numpy broadcasting of an output index onto an input of `in_shape` (right-aligned).

    A dim provably equal to the output's is indexed directly, a constant 1 at 0, and a symbolic
    dim that may be 1 at run time through `select(d == 1, 0, i)`.
    """
    off = len(out_shape) - len(in_shape)
    out: list[Expr] = []
    for k, d in enumerate(in_shape):
        i, od = idx[off + k], out_shape[off + k]
        if arith.prove_equal(d, od):
            out.append(i)
        elif arith.as_int(d) == 1:
            out.append(Const(0))
        else:
            out.append(Select(Bin("eq", d, Const(1)), Const(0), i))
    return tuple(out)


def broadcast(t: Tensor, out_shape: Shape) -> Callable[[Index], Expr]:
    return lambda idx: t.at(bcast_index(idx, t.shape, out_shape))
