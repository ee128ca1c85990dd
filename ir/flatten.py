"""Flatten buffers (TVM's FlattenBuffer): the last step of ir/tir_lower.lower_tir_func.

Every access of an n-d buffer becomes an access of a 1-D buffer at the row-major flat index, built
in Horner form `((i0 * d1 + i1) * d2 + i2)` with no re-association and no simplification, the form
the code generators built for themselves before: so index linearization is written once, here, and
lane strides stay derivable from it (codegen/vectorize.py reads `i * d + j` term by term). A factor
that is the literal 1 is left out (`i0 + i1`), as the CUDA codegen did. An index whose dtype is not
i64 is cast to i64 first, as the codegens converted each index.

Parameters keep their n-d type (the kernel ABI, the runtime's argument checks and kernel metadata,
`GemmCall`'s operands read it): the function declares a `BufferView` per accessed n-d parameter, a
1-D buffer over its memory, and the accesses go through the view. Global-scope allocations (device
temporaries, sized from their n-d type by the runtime; a `GemmCall` may write one) are viewed the
same way; local and shared allocations become 1-D themselves (`allreduce` accumulators are 1-D
already). Flattening a function already flat is the identity. `unflatten` / `unflatten_func` read a
flat access back per dimension for the analyses that need it (codegen/cuda_rows.py,
runtime/native_replay.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from . import arith
from .expr import Bin, Cast, Const, Expr, Load
from .names import fresh_name
from .tir import Allocate, Buffer, BufferView, GemmCall, PrimFunc, Stmt, Store
from .tir_visit import StmtMutator, loads_in, nodes, own_exprs, rewrite, used_names


def flat_size(shape: Sequence[Expr]) -> Expr:
    """The element count of `shape` (simplified: a constant when every dim is one)."""
    n: Expr = Const(1)
    for d in shape:
        n = d if isinstance(n, Const) and n.value == 1 else Bin("mul", n, d)
    return arith.simplify(n)


def flat_index(indices: Sequence[Expr], shape: Sequence[Expr]) -> Expr:
    """Row-major flat index of `indices` over `shape`, in Horner form (see the module docstring)."""
    idx = [i if i.dtype == "i64" else Cast("i64", i) for i in indices]
    if not idx:
        return Const(0)
    acc = idx[0]
    for d, i in zip(shape[1:], idx[1:], strict=True):
        acc = Bin("add", acc if arith.as_int(d) == 1 and isinstance(d, Const) else Bin("mul", acc, d), i)
    return acc


def unflatten(index: Expr, shape: Sequence[Expr]) -> tuple[Expr, ...] | None:
    """The indices `flat_index` built `index` from over `shape`, or None when `index` is not of that
    form (analyses that reason per dimension, such as codegen/cuda_rows.py, read them back)."""
    out: list[Expr] = []
    acc = index
    for d in reversed(shape[1:]):
        if not (isinstance(acc, Bin) and acc.op == "add"):
            return None
        out.append(acc.b)
        if isinstance(d, Const) and arith.as_int(d) == 1:
            acc = acc.a
        elif isinstance(acc.a, Bin) and acc.a.op == "mul" and acc.a.b == d:
            acc = acc.a.a
        else:
            return None
    if shape:
        out.append(acc)
    return tuple(reversed(out))


class _Unflatten(StmtMutator):
    def __init__(self, views: dict[str, Buffer]) -> None:
        self.views = views  # view name -> its source
        self.failed = False

    def access(self, b: Buffer, idx: tuple[Expr, ...]) -> tuple[Buffer, tuple[Expr, ...]]:
        src = self.views.get(b.name)
        if src is None:
            return b, idx
        nd = unflatten(idx[0], src.shape) if len(idx) == 1 else None
        if nd is None:
            self.failed = True
            return b, idx
        return src, nd

    def visit_expr(self, e: Expr) -> Expr:
        def fn(x: Expr) -> Expr | None:
            if isinstance(x, Load) and x.buffer.name in self.views:
                b, idx = self.access(x.buffer, x.indices)
                return Load(b, idx, x.loc)
            return None
        return rewrite(e, fn)

    def visit_Store(self, s: Store) -> Stmt:
        b, idx = self.access(s.buffer, tuple(self.visit_expr(i) for i in s.indices))
        return Store(b, idx, self.visit_expr(s.value), s.loc)


def unflatten_func(func: PrimFunc) -> PrimFunc | None:
    """`func` with the accesses through its views read back as n-d accesses of their sources (no
    views left), for analyses that reason per dimension (runtime/native_replay.py's window updates);
    None when an index is not of the form `flat_index` builds."""
    if not func.views:
        return func
    un = _Unflatten({v.buffer.name: v.source for v in func.views})
    body = un.visit(func.body)
    return None if un.failed else replace(func, body=body, views=())


def is_flat(func: PrimFunc) -> bool:
    """Every buffer access of `func` is 1-D (what the code generators require)."""
    for s in nodes(func.body):
        if isinstance(s, Store) and len(s.indices) != 1:
            return False
        if isinstance(s, Allocate) and s.buffer.scope != "global" and len(s.buffer.shape) != 1:
            return False
        for e in own_exprs(s):
            if any(len(x.indices) != 1 for x in loads_in(e)):
                return False
    return True


def flatten_func(func: PrimFunc) -> PrimFunc:
    """`func` with every access 1-D (see the module docstring); `func` itself when already so."""
    if is_flat(func):
        return func
    used = used_names(func) | {v.buffer.name for v in func.views}
    fl = _Flatten(used, {v.source.name: v.buffer for v in func.views})
    for b in func.params:
        if len(b.shape) != 1 and b.name not in fl.views:
            fl.views[b.name] = fl.view_of(b)
    body = fl.visit(func.body)
    accessed = {x.buffer.name for x in nodes(body) if isinstance(x, Store)} | fl.read
    params = {b.name: b for b in func.params} | fl.temps
    views = tuple(BufferView(v, params[n], v.loc) for n, v in fl.views.items() if n in params and v.name in accessed)
    return replace(func, body=body, views=views)


class _Flatten(StmtMutator):
    def __init__(self, used: set[str], views: dict[str, Buffer]) -> None:
        self.used = used
        self.views = views  # n-d buffer name -> its 1-D buffer (a param's view or the reshaped allocation)
        self.read: set[str] = set()
        self.temps: dict[str, Buffer] = {}  # global-scope allocations viewed like parameters

    def access(self, b: Buffer, indices: tuple[Expr, ...]) -> tuple[Buffer, tuple[Expr, ...]]:
        if len(b.shape) == 1:
            return b, indices
        return self.views.get(b.name, b), (flat_index(indices, b.shape),)

    def visit_expr(self, e: Expr) -> Expr:
        def fn(x: Expr) -> Expr | None:
            if not isinstance(x, Load):
                return None
            b, idx = self.access(x.buffer, x.indices)
            self.read.add(b.name)
            return None if b is x.buffer else Load(b, idx, x.loc)
        return rewrite(e, fn)

    def view_of(self, b: Buffer) -> Buffer:
        """A fresh 1-D buffer as large as `b`, to view it through."""
        return Buffer(fresh_name(f"{b.name}_flat", self.used), (flat_size(b.shape),), b.dtype, b.scope, b.loc)

    def flat_buffer(self, b: Buffer) -> Buffer:
        if len(b.shape) == 1:
            return b
        nb = replace(b, shape=(flat_size(b.shape),))
        self.views[b.name] = nb
        return nb

    def visit_Store(self, s: Store) -> Stmt:
        b, idx = self.access(s.buffer, tuple(self.visit_expr(i) for i in s.indices))
        return Store(b, idx, self.visit_expr(s.value), s.loc)

    def visit_Allocate(self, s: Allocate) -> Stmt:
        b = s.buffer
        if b.scope == "global" and len(b.shape) != 1:  # a device temporary: n-d like a parameter
            if b.name not in self.views:
                self.views[b.name] = self.view_of(b)
            self.temps[b.name] = b
            return Allocate(b, self.visit(s.body), s.loc)
        return Allocate(self.flat_buffer(b), self.visit(s.body), s.loc)

    def visit_GemmCall(self, s: GemmCall) -> Stmt:
        return s  # reads its n-d parameters whole


__all__ = ["flat_index", "flat_size", "flatten_func", "is_flat", "unflatten", "unflatten_func"]
