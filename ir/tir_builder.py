"""A te-style builder: describe tensors by index functions, get a `PrimFunc` in block form.

`compute("C", (n, m), lambda i, j: rsum(A[i, k] * B[k, j], k))` records a stage; `build` turns the
stages an output depends on into one loop nest per stage under a root block (one block per nest,
spatial iterators for the output dims, reduce iterators for reduction axes, an `init` for
reductions). Lowering and tests use it so that tensor programs are written once, concisely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from inspect import Parameter, signature

from .diagnostics import MlcError
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
from .tir import BlockStmt, Buffer, For, IterVar, PrimFunc, Seq, Stmt, Store

_ACCESSED: list[list[Tensor]] = []


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


@dataclass(frozen=True, eq=False)
class Tensor:
    """A buffer plus, for computed tensors, the stage that produces it."""

    buffer: Buffer
    stage: Stage | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.buffer.name

    @property
    def shape(self) -> tuple[Expr, ...]:
        return self.buffer.shape

    @property
    def dtype(self) -> str:
        return self.buffer.dtype

    def __getitem__(self, idx: ExprLike | ReduceAxis | tuple[ExprLike | ReduceAxis, ...]) -> Load:
        items = idx if isinstance(idx, tuple) else (idx,)
        if len(items) != len(self.shape):
            raise MlcError(f"tensor {self.name} has {len(self.shape)} dims, indexed with {len(items)}")
        if _ACCESSED:
            _ACCESSED[-1].append(self)
        return Load(self.buffer, tuple(_ex(i) for i in items))


def _ex(x: ExprLike | ReduceAxis) -> Expr:
    return x.var if isinstance(x, ReduceAxis) else const(x)


def placeholder(name: str, shape: Sequence[ExprLike], dtype: str = "f32") -> Tensor:
    return Tensor(Buffer(name, tuple(const(d) for d in shape), dtype))


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
    out = conds[0]
    for c in conds[1:]:
        out = Bin("and", out, c)
    return out


def compute(
    name: str, shape: Sequence[ExprLike], fcompute: Callable[..., Expr | Reduce], dtype: str | None = None
) -> Tensor:
    """A tensor whose element at the spatial index is `fcompute(*index)` (an Expr or a Reduce)."""
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
    return Tensor(Buffer(name, tuple(const(d) for d in shape), dtype or vdtype), Stage(axes, body, tuple(uniq.values())))


class _Names:
    def __init__(self) -> None:
        self.used: set[str] = set()

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}{i}"
        self.used.add(name)
        return name


def _stage_nest(t: Tensor, names: _Names) -> Stmt:
    st = t.stage
    assert st is not None
    raxes = st.body.axes if isinstance(st.body, Reduce) else ()
    loops_s = [Var(names.fresh(a.name)) for a in st.axes]
    loops_r = [Var(names.fresh(r.var.name)) for r in raxes]
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
        if t.stage is None:
            raise MlcError(f"build {name}: tensor {t.name} is neither an input nor computed")
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
    names = _Names()
    for t in list(inputs) + order:
        for d in t.shape:
            names.used.update(v.name for v in free_vars(d))
    names.used.update(v.name for v in scalars)
    nests = [_stage_nest(t, names) for t in order]
    allocs = tuple(t.buffer for t in order if id(t) not in out_ids)
    body = BlockStmt("root", (), nests[0] if len(nests) == 1 else Seq(tuple(nests)), None, allocs)
    params = tuple(t.buffer for t in inputs) + tuple(o.buffer for o in outputs)
    return PrimFunc(name, params, len(outputs), body, tuple(scalars))
