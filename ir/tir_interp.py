"""Reference interpreter for tensor programs: THE numpy oracle every codegen and schedule is checked against.

Semantics are sequential (loops run in order, a block's `init` runs when all its reduce iterators
are 0, stores are cast to the buffer dtype). For speed, a perfect loop nest whose leaf is one block
(or one store) is evaluated over the whole iteration domain at once with broadcasting numpy arrays:
plain stores become one fancy assignment (last write wins on duplicates, as in a sequential run) and
updates of the form `X[i] = X[i] op f` (op in add/mul/max/min) become an axis reduction plus
`ufunc.at`. Everything else (loop-carried dependences, if/else, non-perfect nests around the
vectorised inner nests) runs on a scalar path of expressions compiled to closures. The vectorised
path assumes the init of an element precedes its updates in loop order, which every schedule
primitive preserves; `vectorize=False` forces the exact scalar path for cross-checking. Allocated
float buffers start as NaN so that reading never-written data shows up in the results.
Integer `floordiv`/`floormod` use floor semantics; `div` is true division on floats and truncation on
integers (as C and LLVM `sdiv`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import arith
from .diagnostics import MlcError
from .dtype import from_numpy, is_float, to_numpy
from .expr import (
    INTRINSICS,
    Bin,
    Call,
    Cast,
    Const,
    Expr,
    Load,
    Not,
    Select,
    Var,
    children,
    free_vars,
    reduction_identity,
)
from .sparse import Axis, SparseBuffer, SparseIteration, axis_table, folded_axes
from .tir import (
    Allocate,
    AttrStmt,
    BlockStmt,
    Buffer,
    For,
    GemmCall,
    IfStmt,
    Let,
    PrimFunc,
    Seq,
    Stmt,
    Store,
    ThreadAllReduce,
)
from .tir_visit import StmtVisitor, conjuncts

# largest iteration domain evaluated at once (elements); bigger nests are chunked along the outer loop
CHUNK = 1 << 22

_REDUCE_UFUNCS: dict[str, np.ufunc] = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}

_BIN_UFUNCS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "floordiv": np.floor_divide,
    "floormod": np.mod, "min": np.minimum, "max": np.maximum, "pow": np.power,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "or": np.logical_or,
}


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # scipy is optional at run time
        return np.vectorize(math.erf, otypes=[np.asarray(x).dtype])(x)
    return erf(x).astype(np.asarray(x).dtype)


def _round(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (C `round`, LLVM `llvm.round`), not numpy's half-to-even."""
    return np.sign(x) * np.floor(np.abs(x) + x.dtype.type(0.5))


_INTRINSICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: x.dtype.type(1) / np.sqrt(x),
    "tanh": np.tanh, "sigmoid": lambda x: x.dtype.type(1) / (x.dtype.type(1) + np.exp(-x)),
    "erf": _erf, "abs": np.abs, "neg": np.negative, "floor": np.floor, "ceil": np.ceil,
    "round": _round, "sin": np.sin, "cos": np.cos, "isnan": np.isnan,
    "check_range": lambda v, lo, hi: check_range(v, lo, hi),
}


def check_range(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The `check_range` intrinsic: `v` itself, after failing the run if an (active) value is outside [lo, hi)."""
    bad = (v < lo) | (v >= hi)
    if mask is not None:
        bad = bad & mask
    if np.any(bad):
        shape = np.broadcast_shapes(np.shape(bad), np.shape(v), np.shape(lo), np.shape(hi))
        at = np.argwhere(np.broadcast_to(bad, shape).reshape(-1)).flat[0]
        x, a, b = (int(np.broadcast_to(t, shape).reshape(-1)[at]) for t in (v, lo, hi))
        raise MlcError(f"index {x} out of range [{a}, {b})")
    return v
assert set(_INTRINSICS) == set(INTRINSICS), "interpreter and INTRINSICS disagree"


_PY_OPS: dict[str, Callable[[object, object], object]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
    "floormod": operator.mod, "min": np.minimum, "max": np.maximum, "pow": operator.pow, "eq": operator.eq,
    "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
}

Scalar = Callable[["_Interp"], object]


def _compile(e: Expr) -> Scalar:
    """A closure evaluating `e` on numpy scalars: the scalar path's fast evaluator (lazy select/and/or)."""
    if isinstance(e, Var):
        def var(it: _Interp) -> object:
            try:
                return it.env[e]
            except KeyError:
                raise MlcError(f"unbound variable {e.name} in tensor program") from None
        return var
    if isinstance(e, Const):
        c = np.asarray(e.value, dtype=to_numpy(e.dtype))[()]
        return lambda it: c
    if isinstance(e, Load):
        buf, idx = e.buffer, [_compile(i) for i in e.indices]

        def load(it: _Interp) -> object:
            if it.views and buf.name in it.views:  # a sparse buffer (ir/sparse.py): positions into its values
                return it.view_load(e, None)
            arr = it._buf(buf)
            ix = tuple(int(g(it)) for g in idx)  # type: ignore[call-overload]
            if len(ix) != arr.ndim:
                raise MlcError(f"buffer {it.label(buf.name)} has {arr.ndim} dims but is indexed with {len(ix)}")
            for d, (i, n) in enumerate(zip(ix, arr.shape)):
                if not 0 <= i < n:
                    raise MlcError(f"index out of bounds: buffer {it.label(buf.name)} dim {d} index {i} not in [0, {n})")
            return arr[ix]
        return load
    if isinstance(e, Bin):
        fa, fb = _compile(e.a), _compile(e.b)
        if e.op == "and":
            return lambda it: np.bool_(fa(it) and fb(it))
        if e.op == "or":
            return lambda it: np.bool_(fa(it) or fb(it))
        if e.op == "div":
            if is_float(e.dtype):
                return lambda it: operator.truediv(fa(it), fb(it))

            def tdiv(it: _Interp) -> object:
                a, b = fa(it), fb(it)
                q = a // b  # type: ignore[operator]
                return q + 1 if q < 0 and q * b != a else q  # type: ignore[operator]
            return tdiv
        op = _PY_OPS[e.op]
        return lambda it: op(fa(it), fb(it))
    if isinstance(e, Not):
        fa = _compile(e.a)
        return lambda it: np.bool_(not fa(it))
    if isinstance(e, Select):
        fc, ft, ff = _compile(e.cond), _compile(e.t), _compile(e.f)
        return lambda it: ft(it) if fc(it) else ff(it)
    if isinstance(e, Cast):
        fa, ty = _compile(e.a), to_numpy(e.dtype).type
        return lambda it: ty(fa(it))
    if isinstance(e, Call):
        if e.name not in _INTRINSICS:
            raise MlcError(f"unknown intrinsic {e.name}")
        fn, args = _INTRINSICS[e.name], [_compile(a) for a in e.args]
        return lambda it: fn(*[a(it) for a in args])  # type: ignore[arg-type]
    raise MlcError(f"cannot evaluate expression {type(e).__name__}")


@dataclass
class _Plan:
    """How a vectorisable leaf runs: wrappers peeled, the block (if any) and the store kind."""

    wrappers: tuple[Stmt, ...]  # IfStmt (no else) / Let, outside the block
    block: BlockStmt | None
    inner: tuple[Stmt, ...]  # wrappers inside the block body
    store: Store
    reduce_op: str | None  # set when the store is `X[i] = X[i] op g`
    rest: Expr | None  # g
    init: Store | None = None  # loop-level form: the guarded init of a lowered reduction block
    init_cond: Expr | None = None  # its guard (reduce iterators all 0)


def _mask_and(m: np.ndarray | None, c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=bool)
    return c if m is None else np.logical_and(m, c)


class _Interp(StmtVisitor):
    def __init__(self, bufs: dict[str, np.ndarray], env: dict[Var, object], vectorize: bool):
        self.bufs = bufs
        self.env = env
        self.vectorize = vectorize
        self._compiled: dict[int, tuple[Expr, Scalar]] = {}
        self._plans: dict[int, tuple[Stmt, _Plan | None]] = {}
        self._nests: dict[int, tuple[For, list[For], _Plan | None]] = {}
        self.views: dict[str, SparseBuffer] = {}
        self.flat_views: dict[str, str] = {}  # a parameter's flat view (BufferView) -> the parameter
        self.axes: dict[str, Axis] = {}
        self.sp_pos: dict[Var, int] = {}  # positions of the sparse iterators in scope

    def plan(self, s: Stmt) -> _Plan | None:
        """The (cached) vectorisation plan of a loop-nest leaf."""
        hit = self._plans.get(id(s))
        if hit is None or hit[0] is not s:
            p = _plan(s)
            if p is not None and p.store.buffer.name in self.views:
                p = None  # stores into a sparse buffer run on the scalar path
            hit = (s, p)
            self._plans[id(s)] = hit
        return hit[1]

    def sc(self, e: Expr) -> object:
        """Evaluate on scalars through the compiled closure (cached per expression object)."""
        hit = self._compiled.get(id(e))
        if hit is None or hit[0] is not e:
            hit = (e, _compile(e))
            self._compiled[id(e)] = hit
        return hit[1](self)

    # ---- expressions (scalars or broadcasting arrays) -------------------------------------------
    def ev(self, e: Expr, mask: np.ndarray | None = None) -> np.ndarray:
        if isinstance(e, Var):
            try:
                return self.env[e]  # type: ignore[return-value]
            except KeyError:
                raise MlcError(f"unbound variable {e.name} in tensor program") from None
        if isinstance(e, Const):
            return np.asarray(e.value, dtype=to_numpy(e.dtype))[()]
        if isinstance(e, Load):
            return self._load(e, mask)
        if isinstance(e, Bin):
            if e.op == "and":
                a = self.ev(e.a, mask)
                return np.logical_and(a, self.ev(e.b, _mask_and(mask, a)))
            a, b = self.ev(e.a, mask), self.ev(e.b, mask)
            if e.op == "div":
                if is_float(e.dtype):
                    return np.true_divide(a, b).astype(to_numpy(e.dtype), copy=False)
                q = np.floor_divide(a, b)
                return q + ((q < 0) & (q * b != a))  # truncate toward zero
            return _BIN_UFUNCS[e.op](a, b)
        if isinstance(e, Not):
            return np.logical_not(self.ev(e.a, mask))
        if isinstance(e, Select):
            c = np.asarray(self.ev(e.cond, mask), dtype=bool)
            t = self.ev(e.t, _mask_and(mask, c))
            f = self.ev(e.f, _mask_and(mask, np.logical_not(c)))
            return np.where(c, t, f)[()]
        if isinstance(e, Cast):
            return np.asarray(self.ev(e.a, mask)).astype(to_numpy(e.dtype))[()]
        if isinstance(e, Call):
            if e.name not in _INTRINSICS:
                raise MlcError(f"unknown intrinsic {e.name}")
            args = [np.asarray(self.ev(a, mask)) for a in e.args]
            if e.name == "check_range":
                return check_range(*args, mask=mask)
            with np.errstate(all="ignore"):
                return np.asarray(_INTRINSICS[e.name](*args))[()]
        raise MlcError(f"cannot evaluate expression {type(e).__name__}")

    def _index(self, buf: Buffer, idx_exprs: Sequence[Expr], mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Evaluate and bounds-check indices (only where `mask` holds); clip the rest."""
        arr = self._buf(buf)
        if len(idx_exprs) != arr.ndim:
            raise MlcError(f"buffer {self.label(buf.name)} has {arr.ndim} dims but is indexed with {len(idx_exprs)}")
        return tuple(_checked(np.asarray(self.ev(ie, mask)), arr.shape[d], mask, f"buffer {self.label(buf.name)} dim {d}")
                     for d, ie in enumerate(idx_exprs))

    def label(self, name: str) -> str:
        """How errors name a buffer: a flat view by its parameter too."""
        src = self.flat_views.get(name)
        return name if src is None else f"{src} (flat view {name})"

    def _buf(self, buf: Buffer) -> np.ndarray:
        try:
            return self.bufs[buf.name]
        except KeyError:
            raise MlcError(f"buffer {buf.name} is not allocated here") from None

    def _load(self, e: Load, mask: np.ndarray | None) -> np.ndarray:
        if e.buffer.name in self.views:
            return self.view_load(e, mask)
        return self._buf(e.buffer)[self._index(e.buffer, e.indices, mask)]

    # ---- sparse buffers (ir/sparse.py) ----------------------------------------------------------
    def _view_index(self, name: str, idx: Sequence[Expr], mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Where `name[idx]` lives in its value array: positions (an iterator of a sparse iteration
        stands for its position) folded through the axes, each checked against its level's extent."""
        sb = self.views[name]
        data = self._buf(sb.data)
        if len(idx) != len(sb.axes):
            raise MlcError(f"sparse buffer {name} has {len(sb.axes)} axes but is indexed with {len(idx)}")
        pos = [np.asarray(self.sp_pos[i] if isinstance(i, Var) and i in self.sp_pos else self.ev(i, mask), np.int64)
               for i in idx]
        off: np.ndarray | None = None
        fold = folded_axes(sb)
        for k, (ax, p) in enumerate(zip(sb.axes, pos)):
            a = self.axes[ax]
            if a.variable:
                assert a.indptr is not None and off is not None
                ptr = self._buf(a.indptr)
                at = _checked(off, len(ptr) - 1, mask, f"indptr of axis {ax}")
                lo, hi = ptr[at].astype(np.int64), ptr[at + 1].astype(np.int64)
            else:
                lo, hi = np.int64(0), np.int64(int(self.sc(a.fixed_extent())))  # type: ignore[arg-type, call-overload]
            bad = (p < 0) | (p >= hi - lo)
            if mask is not None:
                bad = bad & mask
            if np.any(bad):
                raise MlcError(f"sparse buffer {name}: position {int(np.broadcast_to(p, np.shape(bad))[bad].flat[0])} "
                               f"of axis {ax} (index {k}) is outside its row")
            if k < fold:
                off = p if off is None else (lo + p if a.variable else off * hi + p)
        assert off is not None
        where = (off, *pos[fold:])
        return tuple(_checked(p, n, mask, f"values of sparse buffer {name} dim {d}") for d, (p, n) in enumerate(zip(where, data.shape)))

    def view_load(self, e: Load, mask: np.ndarray | None) -> np.ndarray:
        name = e.buffer.name
        data = self._buf(self.views[name].data)
        return data[self._view_index(name, e.indices, mask)]  # type: ignore[no-any-return]

    def visit_SparseIteration(self, s: SparseIteration) -> None:
        """Coordinate space, run directly: init over the spatial iterators first (every point, rows
        without nonzeros too), then the body over all of them."""
        if s.init is not None:
            self._sp_nest([it for it in s.iters if it.kind == "S"], s.init, {})
        self._sp_nest(list(s.iters), s.body, {})

    def _sp_nest(self, iters: list, body: Stmt, fpos: dict[str, int]) -> None:  # type: ignore[type-arg]
        if not iters:
            self.run(body)
            return
        it, a = iters[0], self.axes[iters[0].axis]
        pf = fpos.get(a.parent, 0)
        if a.variable:
            assert a.indptr is not None
            ptr = self._buf(a.indptr)
            if not 0 <= pf < len(ptr) - 1:
                raise MlcError(f"axis {a.name}: parent position {pf} outside indptr %{a.indptr.name}")
            lo, ext = int(ptr[pf]), int(ptr[pf + 1]) - int(ptr[pf])
        else:
            lo, ext = 0, int(self.sc(a.fixed_extent()))  # type: ignore[arg-type, call-overload]
        old = self.env.get(it.var)
        for p in range(ext):
            f = lo + p if a.variable else (pf * ext + p if a.parent else p)
            if a.kind == "sparse_variable":
                assert a.indices is not None
                coord = int(self._buf(a.indices)[_checked(np.int64(f), int(self._buf(a.indices).size), None, f"indices of axis {a.name}")])
            elif a.kind == "sparse_fixed":
                assert a.indices is not None
                coord = int(self._buf(a.indices)[pf, p])
            else:
                coord = p
            self.env[it.var], self.sp_pos[it.var], fpos[a.name] = np.int64(coord), p, f
            self._sp_nest(iters[1:], body, fpos)
        self.sp_pos.pop(it.var, None)
        fpos.pop(a.name, None)
        self._restore(it.var, old)

    # ---- statements ---------------------------------------------------------------------------
    def run(self, s: Stmt) -> None:
        self.visit(s)

    def visit_Seq(self, s: Seq) -> None:
        for x in s.stmts:
            self.run(x)

    def visit_For(self, s: For) -> None:
        self._for(s)

    def visit_BlockStmt(self, s: BlockStmt) -> None:
        if self.vectorize and (plan := self.plan(s)) is not None:
            self._vector([], plan)
        else:
            self._block(s)

    def visit_Store(self, s: Store) -> None:
        if s.buffer.name in self.views:
            data = self._buf(self.views[s.buffer.name].data)
            data[self._view_index(s.buffer.name, s.indices, None)] = self.sc(s.value)
            return
        arr = self._buf(s.buffer)
        ix = tuple(int(self.sc(i)) for i in s.indices)  # type: ignore[call-overload]
        if len(ix) != arr.ndim:
            raise MlcError(f"buffer {self.label(s.buffer.name)} has {arr.ndim} dims but is indexed with {len(ix)}")
        for d, (i, n) in enumerate(zip(ix, arr.shape)):
            if not 0 <= i < n:
                raise MlcError(f"index out of bounds: buffer {self.label(s.buffer.name)} dim {d} index {i} not in [0, {n})")
        arr[ix] = self.sc(s.value)

    def visit_IfStmt(self, s: IfStmt) -> None:
        if bool(self.sc(s.cond)):
            self.run(s.then)
        elif s.orelse is not None:
            self.run(s.orelse)

    def visit_Let(self, s: Let) -> None:
        old = self.env.get(s.var)
        self.env[s.var] = self.sc(s.value)
        self.run(s.body)
        self._restore(s.var, old)

    def visit_Allocate(self, s: Allocate) -> None:
        views = [v for v, src in self.flat_views.items() if src == s.buffer.name]
        if not views:
            self._scoped([s.buffer], s.body)
            return
        (name,) = self._alloc([s.buffer])
        for v in views:  # a global allocation's flat views: the same memory
            self.bufs[v] = self.bufs[name].reshape(-1)
        self.run(s.body)
        for n in (name, *views):
            del self.bufs[n]

    def visit_AttrStmt(self, s: AttrStmt) -> None:
        self.run(s.body)

    def visit_ThreadAllReduce(self, s: ThreadAllReduce) -> None:
        (name,) = self._alloc([s.acc])
        self.bufs[name][...] = reduction_identity(s.op, s.acc.dtype).value
        self.run(s.loop)  # serially: every thread's partial folds into the one accumulator
        self.run(s.result)
        del self.bufs[name]

    def visit_GemmCall(self, s: GemmCall) -> None:
        self._gemm(s)

    def generic_visit(self, s: Stmt) -> None:
        raise MlcError(f"cannot execute statement {type(s).__name__}")

    def _scoped(self, bufs: Sequence[Buffer], body: Stmt) -> None:
        allocated = self._alloc(bufs)
        self.run(body)
        for name in allocated:
            del self.bufs[name]

    def _gemm(self, s: GemmCall) -> None:
        """C (+)= A @ B in float64 (batched: leading dims shared; else B is 2-D), rounded once to C."""
        a, b, c = self._buf(s.a), self._buf(s.b), self._buf(s.c)
        prod = np.matmul(a.astype(np.float64), b.astype(np.float64))
        if s.accumulate:
            prod = prod + c.astype(np.float64)
        c[...] = prod.astype(c.dtype)

    def _restore(self, v: Var, old: object) -> None:
        if old is None:
            self.env.pop(v, None)
        else:
            self.env[v] = old

    def _block(self, b: BlockStmt) -> None:
        saved = {iv.var: self.env.get(iv.var) for iv in b.iters}
        vals = []
        for iv in b.iters:
            val = int(self.sc(iv.binding))
            ext = int(self.sc(iv.extent))
            if not 0 <= val < ext:
                raise MlcError(f"block {b.name}: iterator {iv.var.name} = {val} outside its domain [0, {ext})")
            vals.append(val)
        for iv, val in zip(b.iters, vals):
            self.env[iv.var] = np.int64(val)
        allocated = self._alloc(b.alloc_buffers)
        if b.init is not None and all(v == 0 for iv, v in zip(b.iters, vals) if iv.kind == "R"):
            self.run(b.init)
        self.run(b.body)
        for name in allocated:
            del self.bufs[name]
        for v, old in saved.items():
            self._restore(v, old)

    def _alloc(self, bufs: Sequence[Buffer]) -> list[str]:
        names = []
        for buf in bufs:
            shape = tuple(int(self.sc(d)) for d in buf.shape)
            dt = to_numpy(buf.dtype)
            # floats start as NaN so that reading never-written data shows up in results
            self.bufs[buf.name] = np.full(shape, np.nan, dt) if dt.kind == "f" else np.zeros(shape, dt)
            names.append(buf.name)
        return names

    def _nest_plan(self, s: For) -> tuple[list[For], _Plan | None]:
        """The perfect nest below `s` and its plan, when its bounds do not depend on its own loops."""
        loops = [s]
        while isinstance(loops[-1].body, For):
            loops.append(loops[-1].body)  # type: ignore[arg-type]
        own = {lp.var for lp in loops}
        plan = self.plan(loops[-1].body)
        extents = [e for lp in loops for e in (lp.start, lp.extent)]
        if plan is not None and plan.block is not None:
            extents += [iv.extent for iv in plan.block.iters]
        return loops, plan if plan is not None and not any(free_vars(e) & own for e in extents) else None

    def _for(self, s: For) -> None:
        if self.vectorize:
            hit = self._nests.get(id(s))
            if hit is None or hit[0] is not s:
                hit = (s, *self._nest_plan(s))
                self._nests[id(s)] = hit
            if hit[2] is not None:
                self._vector(hit[1], hit[2])
                return
        start, ext = int(self.sc(s.start)), int(self.sc(s.extent))
        old = self.env.get(s.var)
        for i in range(start, start + ext):
            self.env[s.var] = np.int64(i)
            self.run(s.body)
        self._restore(s.var, old)

    # ---- vectorised perfect nests -------------------------------------------------------------
    def _vector(self, loops: list[For], plan: _Plan) -> None:
        starts = [int(self.ev(lp.start)) for lp in loops]
        exts = [int(self.ev(lp.extent)) for lp in loops]
        if any(e <= 0 for e in exts):
            return
        inner = math.prod(exts[1:])
        if loops and inner > CHUNK and len(loops) > 1:
            old = self.env.get(loops[0].var)
            for i in range(starts[0], starts[0] + exts[0]):
                self.env[loops[0].var] = np.int64(i)
                self._vector(loops[1:], plan)
            self._restore(loops[0].var, old)
            return
        step = max(1, CHUNK // max(inner, 1)) if loops else 1
        n = len(loops)
        saved = dict(self.env)
        for c0 in range(0, exts[0] if loops else 1, step):
            for a, lp in enumerate(loops):
                lo, hi = (starts[a] + c0, starts[a] + min(c0 + step, exts[0])) if a == 0 else (starts[a], starts[a] + exts[a])
                shape = [1] * n
                shape[a] = hi - lo
                self.env[lp.var] = np.arange(lo, hi, dtype=np.int64).reshape(shape)
            dom = tuple(int(np.shape(self.env[lp.var])[a]) for a, lp in enumerate(loops))
            try:
                self._leaf(plan, dom)
            finally:
                self.env = dict(saved)

    def _wrap(self, ws: Sequence[Stmt], mask: np.ndarray | None) -> np.ndarray | None:
        for w in ws:
            if isinstance(w, IfStmt):
                mask = _mask_and(mask, self.ev(w.cond, mask))
            else:
                assert isinstance(w, Let)
                self.env[w.var] = self.ev(w.value, mask)
        return mask

    def _leaf(self, plan: _Plan, dom: tuple[int, ...]) -> None:
        mask = self._wrap(plan.wrappers, None)
        b = plan.block
        if b is not None:
            for iv in b.iters:
                val = np.asarray(self.ev(iv.binding, mask)).astype(np.int64, copy=False)
                ext = int(self.ev(iv.extent))
                if val.size and (val.min() < 0 or val.max() >= ext):
                    bad = (val < 0) | (val >= ext)
                    if np.any(bad if mask is None else bad & mask):
                        raise MlcError(f"block {b.name}: iterator {iv.var.name} leaves its domain [0, {ext})")
                self.env[iv.var] = val
            if b.init is not None:
                assert isinstance(b.init, Store)
                m = mask
                for iv in b.iters:
                    if iv.kind == "R":
                        m = _mask_and(m, self.env[iv.var] == 0)  # type: ignore[operator]
                self._store_direct(b.init, m, dom)
        if plan.init is not None:
            assert plan.init_cond is not None
            self._store_direct(plan.init, _mask_and(mask, self.ev(plan.init_cond, mask)), dom)
        mask = self._wrap(plan.inner, mask)
        if plan.reduce_op is None:
            self._store_direct(plan.store, mask, dom)
        else:
            assert plan.rest is not None
            self._store_reduce(plan.store, plan.reduce_op, plan.rest, mask, dom)

    def _store_direct(self, s: Store, mask: np.ndarray | None, dom: tuple[int, ...]) -> None:
        arr = self._buf(s.buffer)
        idx = self._index(s.buffer, s.indices, mask)
        val = np.asarray(self.ev(s.value, mask))
        full = np.broadcast_shapes(dom, val.shape, *(i.shape for i in idx))
        if mask is not None:
            sel = np.broadcast_to(mask, full)
            idx = tuple(np.broadcast_to(i, full)[sel] for i in idx)
            val = np.broadcast_to(val, full)[sel]
        else:
            idx = tuple(np.broadcast_to(i, full).ravel() for i in idx)
            val = np.broadcast_to(val, full).ravel()
        if not idx:  # 0-d buffer
            if val.size:
                arr[()] = val.ravel()[-1]
            return
        flat = np.ravel_multi_index(idx, arr.shape) if arr.size else np.zeros(0, np.int64)
        if flat.size > 1 and _has_duplicates(flat, arr.size):
            # several iterations write one element: keep the last in loop order
            _, first_rev = np.unique(flat[::-1], return_index=True)
            keep = np.sort(flat.size - 1 - first_rev)
            idx = tuple(i[keep] for i in idx)
            val = val[keep]
        arr[idx] = val

    def _store_reduce(self, s: Store, op: str, rest: Expr, mask: np.ndarray | None, dom: tuple[int, ...]) -> None:
        arr = self._buf(s.buffer)
        uf = _REDUCE_UFUNCS[op]
        idx = [np.asarray(self.ev(ie, mask)).astype(np.int64, copy=False) for ie in s.indices]
        g = np.asarray(self.ev(rest, mask)).astype(arr.dtype, copy=False)
        full = np.broadcast_shapes(dom, g.shape, *(i.shape for i in idx))
        if mask is not None:
            g = np.where(mask, g, _identity(op, arr.dtype))
        g = np.broadcast_to(g, full)
        # axes no index depends on are folded first with a plain reduction
        padded = [i.reshape((1,) * (len(full) - i.ndim) + i.shape) for i in idx]
        axes = tuple(a for a in range(len(full)) if full[a] > 1 and all(i.shape[a] == 1 for i in padded))
        valid = None if mask is None else np.broadcast_to(mask, full)
        if axes:
            g = uf.reduce(g, axis=axes, keepdims=True)
            if valid is not None:
                valid = np.any(valid, axis=axes, keepdims=True)
        shape = g.shape
        checked = []
        for d, v in enumerate(idx):
            vb = np.broadcast_to(v, shape)
            checked.append(_checked(vb, arr.shape[d], valid, f"buffer {self.label(s.buffer.name)} dim {d}").ravel())
        gv = g.ravel()
        if valid is not None:
            sel = valid.ravel()
            checked = [c[sel] for c in checked]
            gv = gv[sel]
        if not checked:
            arr[()] = uf.reduce(np.concatenate([[arr[()]], gv]).astype(arr.dtype))
            return
        uf.at(arr, tuple(checked), gv)


def _has_duplicates(flat: np.ndarray, size: int) -> bool:
    if flat.size * 8 < size:  # few writes into a big buffer: sort instead of counting
        srt = np.sort(flat)
        return bool(np.any(srt[1:] == srt[:-1]))
    return bool(np.bincount(flat, minlength=size).max() > 1)


def _checked(v: np.ndarray, n: int, mask: np.ndarray | None, what: str) -> np.ndarray:
    """`v` as int64 after checking 0 <= v < n where `mask` holds; masked-off entries are clipped."""
    v = v.astype(np.int64, copy=False)
    if v.size == 0 or (v.min() >= 0 and v.max() < n):  # the common case: nothing to mask
        return v
    bad = (v < 0) | (v >= n)
    if mask is not None:
        bad = bad & mask
    if np.any(bad):
        shape = np.broadcast_shapes(bad.shape, v.shape)
        first = np.broadcast_to(v, shape)[np.broadcast_to(bad, shape)]
        raise MlcError(f"index out of bounds: {what} index {int(first.flat[0])} not in [0, {n})")
    return np.minimum(np.maximum(v, 0), n - 1)


def _identity(op: str, dt: np.dtype) -> object:
    return dt.type(reduction_identity(op, from_numpy(dt)).value)


def _loads_of(e: Expr, name: str) -> list[Load]:
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        if isinstance(x, Load) and x.buffer.name == name:
            out.append(x)
        stack.extend(children(x))
    return out


def _peel(s: Stmt) -> tuple[tuple[Stmt, ...], Stmt]:
    ws: list[Stmt] = []
    while (isinstance(s, IfStmt) and s.orelse is None) or isinstance(s, Let):
        ws.append(s)
        s = s.then if isinstance(s, IfStmt) else s.body
    return tuple(ws), s


def _monotone(e: Expr) -> bool:
    """Whether a reduce binding only grows with its loops (so all-zero is its first value)."""
    if isinstance(e, Var):
        return True
    if isinstance(e, Const):
        return not isinstance(e.value, bool) and e.value >= 0
    if isinstance(e, Bin) and e.op in ("add", "mul", "floordiv", "floormod", "min", "max"):
        return _monotone(e.a) and _monotone(e.b)
    if isinstance(e, Cast):
        return _monotone(e.a)
    return False


def _lowered_init(wrappers: tuple[Stmt, ...], leaf: Stmt) -> tuple[Store, Expr, Stmt] | None:
    """(init, guard, update) of a lowered reduction leaf `{ if r0 == 0 and ... { init } attr { update } }`
    whose reduce iterators are let-bound by `wrappers` to monotone bindings (so the init comes first)."""
    if not (isinstance(leaf, Seq) and len(leaf.stmts) == 2 and isinstance(leaf.stmts[0], IfStmt)):
        return None
    guard, update = leaf.stmts
    if guard.orelse is not None or not isinstance(guard.then, Store):
        return None
    defs = {w.var: w.value for w in wrappers if isinstance(w, Let)}
    for c in conjuncts(guard.cond):
        if not (isinstance(c, Bin) and c.op == "eq" and isinstance(c.a, Var) and c.b == Const(0, c.a.dtype)):
            return None
        if c.a not in defs or not _monotone(defs[c.a]):
            return None
    while isinstance(update, AttrStmt):
        update = update.body
    return guard.then, guard.cond, update


def _plan(s: Stmt) -> _Plan | None:
    """The vectorisation plan of a loop-nest leaf, or None when it needs the scalar path."""
    wrappers, leaf = _peel(s)
    while isinstance(leaf, AttrStmt):
        leaf = leaf.body
    block: BlockStmt | None = None
    inner: tuple[Stmt, ...] = ()
    lowered = _lowered_init(wrappers, leaf)
    init, init_cond = (lowered[0], lowered[1]) if lowered is not None else (None, None)
    if lowered is not None:
        leaf = lowered[2]
    if isinstance(leaf, BlockStmt):
        block = leaf
        if block.alloc_buffers or (block.init is not None and not isinstance(block.init, Store)):
            return None
        inner, leaf = _peel(block.body)
    if not isinstance(leaf, Store):
        return None
    if block is not None and block.init is not None and not all(
            _monotone(iv.binding) for iv in block.iters if iv.kind == "R"):
        return None  # the init might not come first for an element: run it sequentially
    name = leaf.buffer.name
    if block is not None and block.init is not None:
        if _loads_of(block.init.value, name):  # type: ignore[union-attr]
            return None
    if init is not None and (_loads_of(init.value, name) or init.buffer.name != name):
        return None
    for w in wrappers + inner:
        if _loads_of(w.cond if isinstance(w, IfStmt) else w.value, name):  # type: ignore[union-attr]
            return None
    own = _loads_of(leaf.value, name)
    if not own:
        return _Plan(wrappers, block, inner, leaf, None, None, init, init_cond)
    v = leaf.value
    if isinstance(v, Bin) and v.op in _REDUCE_UFUNCS:
        for mine, rest in ((v.a, v.b), (v.b, v.a)):
            if isinstance(mine, Load) and mine.buffer.name == name and mine.indices == leaf.indices:
                if not _loads_of(rest, name):
                    return _Plan(wrappers, block, inner, leaf, v.op, rest, init, init_cond)
    return None


def bind_params(func: PrimFunc, args: Sequence[np.ndarray], scalars: dict[str, int] | None = None) -> dict[Var, object]:
    """Bind symbolic dims from the argument shapes and scalar params from `scalars`; check consistency."""
    if len(args) != len(func.params):
        raise MlcError(f"prim {func.name} takes {len(func.params)} buffers, got {len(args)}")
    env: dict[Var, object] = {}
    origin: dict[Var, str] = {}
    for v in func.scalar_params:
        if scalars is None or v.name not in scalars:
            raise MlcError(f"prim {func.name}: missing value for scalar parameter {v.name}")
        env[v] = np.int64(scalars[v.name])
        origin[v] = "the scalar arguments"
    for buf, a in zip(func.params, args):
        if not isinstance(a, np.ndarray):
            raise MlcError(f"buffer {buf.name}: expected a numpy array, got {type(a).__name__}")
        if a.ndim != len(buf.shape):
            raise MlcError(f"buffer {buf.name}: expected {len(buf.shape)} dims, got an array of shape {a.shape}")
        if a.dtype != to_numpy(buf.dtype):
            raise MlcError(f"buffer {buf.name}: expected dtype {buf.dtype}, got {a.dtype}")
        for d, (dim, n) in enumerate(zip(buf.shape, a.shape)):
            if isinstance(dim, Var):
                if dim in env and int(env[dim]) != n:  # type: ignore[call-overload]
                    raise MlcError(f"buffer {buf.name} dim {d}: {dim.name} = {n} but {origin[dim]} says {dim.name} = {int(env[dim])}")  # type: ignore[call-overload]
                env[dim] = np.int64(n)
                origin.setdefault(dim, buf.name)
    for buf, a in zip(func.params, args):
        for d, (dim, n) in enumerate(zip(buf.shape, a.shape)):
            if isinstance(dim, Var):
                continue
            try:
                want = arith.evaluate(dim, {k: int(v) for k, v in env.items()})  # type: ignore[call-overload]
            except ValueError as err:
                raise MlcError(f"buffer {buf.name} dim {d}: cannot determine {dim!r} from the arguments") from err
            if want != n:
                raise MlcError(f"buffer {buf.name} dim {d}: expected {want}, got {n}")
    return env


def run_prim(
    func: PrimFunc, args: list[np.ndarray], scalars: dict[str, int] | None = None, *, vectorize: bool = True
) -> None:
    """Execute `func` on `args` (inputs then outputs), writing the outputs in place."""
    env = bind_params(func, args, scalars)
    names = [b.name for b in func.params]
    if len(set(names)) != len(names):
        raise MlcError(f"prim {func.name}: duplicate buffer names")
    bufs = {b.name: a for b, a in zip(func.params, args)}
    # a flat view reads and writes its parameter's memory: reshape(-1) of a C-contiguous array (another
    # layout is run on a contiguous copy, written back after the run)
    copies = {v.source.name: np.ascontiguousarray(bufs[v.source.name]) for v in func.views if v.source.name in bufs}
    for v in func.views:
        if v.source.name in copies:
            bufs[v.buffer.name] = copies[v.source.name].reshape(-1)
    interp = _Interp(bufs, env, vectorize)
    interp.views = {sb.buffer.name: sb for sb in func.sparse_buffers}
    interp.flat_views = {v.buffer.name: v.source.name for v in func.views}
    interp.axes = axis_table(func.axes)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        interp.run(func.body)
    for name, c in copies.items():
        if c is not bufs[name]:
            bufs[name][...] = c
