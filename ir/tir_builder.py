"""The te-style tensor-program builder: describe tensors by index functions, get a `PrimFunc` in block form.

One language, one `Tensor`, two ways to collect its stages:

* **declarative** (TVM's te): `compute("C", (n, m), lambda i, j: rsum(A[i, k] * B[k, j], k))`
  records a stage; `build` turns the stages the outputs depend on into one loop nest per stage under
  a root block (spatial iterators for the output dims, reduce iterators for reduction axes, an
  `init` for reductions). Every stage is *materialised* unless `compute(..., inline=True)`, whose
  body is substituted into each reader. Tests, tensor-intrinsic descriptions and ANN programs use it.
* **imperative** (`Builder`, used by the per-op lowerings in ir/ops and by fusion): elementwise and
  layout tensors stay *virtual* (`Builder.compute`: consumers inline the index function, which is how
  fusion inlines producers across ops); reductions are *pending* until something reads them or they
  are written to an output, then they become one perfect loop nest with one block. An *in-place*
  tensor (`Builder.in_place`) stores a base tensor once and rewrites it in the same buffer, so an
  expensive value (softmax's exp) read by a reduction and by the result is computed once.

Reading a tensor is the same in both: a stored tensor loads its buffer, a virtual one inlines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from inspect import Parameter, signature

from . import arith
from .diagnostics import MlcError
from .dtype import is_float
from .expr import (
    Bin,
    Call,
    Cast,
    Const,
    Expr,
    ExprLike,
    Load,
    Select,
    Var,
    const,
    free_vars,
    reduction_identity,
    substitute,
)
from .names import fresh_name
from .sparse import Axis, SparseBuffer
from .tir import BlockStmt, Buffer, For, IterVar, PrimFunc, Seq, Stmt, Store

Index = tuple[Expr, ...]
Shape = tuple[Expr, ...]
_ACCESSED: list[list[Tensor]] = []


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


@dataclass(frozen=True)
class ReduceAxis(Var):
    """A reduction axis `k in [0, extent)`: a Var usable directly in index expressions."""

    extent: Expr = field(default=Const(0), compare=True)

    @property
    def var(self) -> Var:
        return self


@dataclass(frozen=True)
class Reduce:
    """`op` over `axes` of `value`, starting from `init` (the op's identity when None)."""

    op: str  # add | mul | max | min
    value: Expr
    axes: tuple[ReduceAxis, ...]
    init: Expr | None = None


@dataclass(frozen=True)
class Stage:
    axes: tuple[Var, ...]
    body: Expr | Reduce
    deps: tuple[Tensor, ...]


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
    """A tensor of a program being built: a buffer (an input, or a stored stage), a virtual index
    function (inlined by readers), a pending reduction or in-place update (stored when first read),
    or a declarative stage (`compute`, stored by `build`)."""

    shape: Shape
    dtype: str
    name: str
    fn: Callable[[Index], Expr] | None = None
    reduction: Reduction | None = None
    buffer: Buffer | None = None
    builder: Builder | None = field(default=None, repr=False)
    update: InPlace | None = None
    stage: Stage | None = field(default=None, repr=False)
    writer: Callable[[Buffer], Stmt] | None = field(default=None, repr=False)  # Builder.written

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __call__(self, *idx: Expr) -> Expr:
        return self.at(tuple(idx))

    def __getitem__(self, idx: ExprLike | ReduceAxis | tuple[ExprLike | ReduceAxis, ...]) -> Expr:
        items = idx if isinstance(idx, tuple) else (idx,)
        if len(items) != len(self.shape):
            raise MlcError(f"tensor {self.name} has {len(self.shape)} dims, indexed with {len(items)}")
        index = tuple(_ex(i) for i in items)
        if self.builder is not None:
            return self.at(index)
        if _ACCESSED:
            _ACCESSED[-1].extend(self.stage.deps if self.fn is not None and self.stage is not None else (self,))
        if self.fn is not None:
            return as_dtype(self.fn(index), self.dtype)
        assert self.buffer is not None
        return Load(self.buffer, index)

    def at(self, idx: Index) -> Expr:
        if len(idx) != len(self.shape):
            raise CannotLower(f"tensor {self.name} of rank {len(self.shape)} indexed with {len(idx)} indices")
        if self.buffer is None and (self.reduction is not None or self.update is not None or self.writer is not None):
            assert self.builder is not None
            self.builder.materialize(self)
        if self.buffer is not None:
            return Load(self.buffer, tuple(arith.simplify(i) for i in idx))
        assert self.fn is not None
        return as_dtype(self.fn(idx), self.dtype)

    @property
    def is_virtual(self) -> bool:
        return self.buffer is None and self.reduction is None and self.update is None and self.writer is None


def _ex(x: ExprLike | ReduceAxis) -> Expr:
    return x.var if isinstance(x, ReduceAxis) else const(x)


def placeholder(name: str, shape: Sequence[ExprLike], dtype: str = "f32") -> Tensor:
    dims = tuple(const(d) for d in shape)
    return Tensor(dims, dtype, name, buffer=Buffer(name, dims, dtype))


def reduce_axis(extent: ExprLike, name: str) -> ReduceAxis:
    return ReduceAxis(name, "i64", extent=const(extent))


def _axes(axis: ReduceAxis | Sequence[ReduceAxis]) -> tuple[ReduceAxis, ...]:
    return (axis,) if isinstance(axis, ReduceAxis) else tuple(axis)


def rsum(value: Expr, axis: ReduceAxis | Sequence[ReduceAxis], init: ExprLike | None = None) -> Reduce:
    return Reduce("add", value, _axes(axis), None if init is None else const(init))


def rmax(value: Expr, axis: ReduceAxis | Sequence[ReduceAxis], init: ExprLike | None = None) -> Reduce:
    return Reduce("max", value, _axes(axis), None if init is None else const(init))


def rmin(value: Expr, axis: ReduceAxis | Sequence[ReduceAxis], init: ExprLike | None = None) -> Reduce:
    return Reduce("min", value, _axes(axis), None if init is None else const(init))


def rprod(value: Expr, axis: ReduceAxis | Sequence[ReduceAxis], init: ExprLike | None = None) -> Reduce:
    return Reduce("mul", value, _axes(axis), None if init is None else const(init))


# small expression helpers (Expr's operator sugar covers + - * // %)
def fconst(v: float, dtype: str = "f32") -> Const:
    return Const(float(v), dtype)


def call(name: str, *args: Expr) -> Call:
    return Call(name, tuple(args), args[0].dtype)


def exp(x: Expr) -> Call:
    return call("exp", x)


def maximum(a: ExprLike, b: ExprLike) -> Bin:
    return Bin("max", const(a), const(b))


def minimum(a: ExprLike, b: ExprLike) -> Bin:
    return Bin("min", const(a), const(b))


def div(a: ExprLike, b: ExprLike) -> Bin:
    return Bin("div", const(a), const(b))


def select(c: Expr, t: ExprLike, f: ExprLike) -> Select:
    return Select(c, const(t), const(f))


def cast(dtype: str, x: Expr) -> Cast:
    return Cast(dtype, x)


def cmp(op: str, a: ExprLike, b: ExprLike) -> Bin:
    return Bin(op, const(a), const(b))


def all_of(*conds: Expr) -> Expr:
    """The conjunction of `conds`; true when there are none."""
    if not conds:
        return Const(True, "bool")
    out = conds[0]
    for c in conds[1:]:
        out = Bin("and", out, c)
    return out


def compute(
    name: str, shape: Sequence[ExprLike], fcompute: Callable[..., Expr | Reduce], dtype: str | None = None,
    inline: bool = False,
) -> Tensor:
    """A tensor whose element at the spatial index is `fcompute(*index)` (an Expr or a Reduce).

    The policy: materialised by `build` as its own stage, or with `inline` substituted into every
    reader (no stage, no buffer traffic; a reduction cannot be inlined)."""
    sig = list(signature(fcompute).parameters.values())
    if len(sig) == 1 and sig[0].kind is Parameter.VAR_POSITIONAL:  # rank-generic `lambda *idx: ...`
        params = [f"i{d}" for d in range(len(shape))]
    else:
        params = [p.name for p in sig]
    if len(params) != len(shape):
        raise MlcError(f"compute {name}: {len(shape)} dims but fcompute takes {len(params)} arguments")
    axes = tuple(Var(p) for p in params)
    _ACCESSED.append([])
    try:
        body = fcompute(*axes)
    finally:
        deps = _ACCESSED.pop()
    if not isinstance(body, Expr | Reduce):
        body = const(body)  # type: ignore[arg-type]
    vdtype = body.value.dtype if isinstance(body, Reduce) else body.dtype
    uniq: dict[int, Tensor] = {id(t): t for t in deps}
    dims, dt = tuple(const(d) for d in shape), dtype or vdtype
    stage = Stage(axes, body, tuple(uniq.values()))
    fn: Callable[[Index], Expr] | None = None
    if inline:
        if isinstance(body, Reduce):
            raise MlcError(f"compute {name}: a reduction cannot be inlined")
        expr = body
        fn = lambda idx: substitute(expr, dict(zip(axes, idx)))  # noqa: E731
    return Tensor(dims, dt, name, fn=fn, buffer=None if inline else Buffer(name, dims, dt), stage=stage)


def _stage_nest(t: Tensor, used: set[str]) -> Stmt:
    st = t.stage
    assert st is not None and t.buffer is not None
    raxes = st.body.axes if isinstance(st.body, Reduce) else ()
    loops_s = [Var(fresh_name(a.name, used, sep="")) for a in st.axes]
    loops_r = [Var(fresh_name(r.var.name, used, sep="")) for r in raxes]
    it_s = [IterVar(Var(f"v_{a.name}"), d, "S", lv) for a, d, lv in zip(st.axes, t.shape, loops_s)]
    it_r = [IterVar(Var(f"v_{r.var.name}"), r.extent, "R", lv) for r, lv in zip(raxes, loops_r)]
    sub: dict[Var, Expr] = {a: iv.var for a, iv in zip(st.axes, it_s)}
    sub.update({r.var: iv.var for r, iv in zip(raxes, it_r)})
    out_idx = tuple(iv.var for iv in it_s)
    init = None
    if isinstance(st.body, Reduce):
        val = substitute(st.body.value, sub)
        if val.dtype != t.dtype:
            val = Cast(t.dtype, val)
        body: Stmt = Store(t.buffer, out_idx, Bin(st.body.op, Load(t.buffer, out_idx), val))
        init = Store(t.buffer, out_idx, st.body.init if st.body.init is not None else reduction_identity(st.body.op, t.dtype))
    else:
        val = substitute(st.body, sub)
        if val.dtype != t.dtype:
            val = Cast(t.dtype, val)
        body = Store(t.buffer, out_idx, val)
    stmt: Stmt = BlockStmt(t.name, tuple(it_s + it_r), body, init)
    for lv, ext in reversed(list(zip(loops_s + loops_r, [iv.extent for iv in it_s + it_r]))):
        stmt = For(lv, Const(0), ext, stmt)
    return stmt


def build(
    name: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], scalars: Sequence[Var] = ()
) -> PrimFunc:
    """The PrimFunc computing `outputs` from `inputs`; intermediate stages are allocated in the root block."""
    order: list[Tensor] = []
    seen: set[int] = {id(t) for t in inputs}
    in_names = {t.name for t in inputs}

    def visit(t: Tensor) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        if t.stage is None or t.buffer is None:
            raise MlcError(f"build {name}: tensor {t.name} is neither an input nor a materialised stage")
        for d in t.stage.deps:
            visit(d)
        order.append(t)

    for o in outputs:
        if o.name in in_names:
            raise MlcError(f"build {name}: {o.name} is both an input and an output")
        visit(o)
    all_names = [t.name for t in inputs] + [t.name for t in order]
    if len(set(all_names)) != len(all_names):
        raise MlcError(f"build {name}: tensor names must be unique, got {all_names}")
    out_ids = {id(o) for o in outputs}
    used: set[str] = set()
    for t in list(inputs) + order:
        for d in t.shape:
            used.update(v.name for v in free_vars(d))
    used.update(v.name for v in scalars)
    nests = [_stage_nest(t, used) for t in order]
    allocs = tuple(t.buffer for t in order if id(t) not in out_ids and t.buffer is not None)
    body = BlockStmt("root", (), nests[0] if len(nests) == 1 else Seq(tuple(nests)), None, allocs)
    params = tuple(t.buffer for t in list(inputs) + list(outputs) if t.buffer is not None)
    return PrimFunc(name, params, len(outputs), body, tuple(scalars))


# ---- the imperative builder (per-op lowerings, fusion) --------------------------------------------
class Builder:
    """Collects the stages of one PrimFunc; names are fresh against every symbol the program mentions."""

    def __init__(self, taken: set[str]):
        self.taken = set(taken)
        self.stages: list[Stmt] = []
        self.allocs: list[Buffer] = []
        self.params: list[Buffer] = []
        self.outputs: list[Buffer] = []
        self.block_names: set[str] = set()
        self.axes: list[Axis] = []  # a sparse stage's axes and views (Builder.written)
        self.sparse_buffers: list[SparseBuffer] = []

    def fresh(self, base: str) -> str:
        """A name for a buffer, loop or iterator var, distinct from every symbol in the program."""
        return fresh_name(base, self.taken)

    def block_name(self, base: str) -> str:
        """Blocks have their own namespace (a block may share its buffer's name, as in TVM)."""
        return fresh_name(base, self.block_names)

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

    def written(self, shape: Shape, dtype: str, writer: Callable[[Buffer], Stmt], name: str,
                axes: Sequence[Axis] = (), views: Sequence[SparseBuffer] = ()) -> Tensor:
        """A tensor stored by a statement the lowering writes itself, `writer(buf)` (a sparse iteration
        over `axes` and `views`, which the program declares: ir/ops/sparse_ops.py)."""
        self.axes += [a for a in axes if a not in self.axes]
        self.sparse_buffers += [v for v in views if v not in self.sparse_buffers]
        return Tensor(tuple(shape), dtype, name, writer=writer, builder=self)

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
        elif t.writer is not None and t.buffer is None:
            self.stages.append(t.writer(buf))
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
        return PrimFunc(name, params, len(self.outputs), body, scalars, axes=tuple(self.axes),
                        sparse_buffers=tuple(self.sparse_buffers))


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
