"""Tensor intrinsics and `tensorize`: match a blockized computation against a micro-kernel description.

An intrinsic is described by a PrimFunc with one perfect loop nest over one block (e.g. a 4x8x1 GEMM
update). Tensorizing an outer block checks that the computation below it is that description up to
renaming and constant-per-tile index offsets, then annotates the outer block with
`tensor_intrin = name`. The body stays as it is, so the reference semantics never change; a codegen
that knows the intrinsic replaces the tile by its micro-kernel, others compile the body.
"""

from __future__ import annotations

from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, free_vars, substitute
from mlc.ir.tir import BlockStmt, For, PrimFunc, Stmt, Store
from mlc.ir.tir_builder import build, cast, compute, placeholder, reduce_axis, rsum
from mlc.ir.tir_visit import rewrite, simp

from .tree import blocks, find_block, get, put

_INTRINS: dict[str, PrimFunc] = {}


def register_intrin(name: str, desc: PrimFunc) -> None:
    """Register a description; re-registering a name with a different description is an error."""
    if name in _INTRINS and _INTRINS[name] != desc:
        raise MlcError(f"tensor intrinsic {name} is already registered with another description")
    _INTRINS[name] = desc


def get_intrin(name: str) -> PrimFunc:
    if name not in _INTRINS:
        raise MlcError(f"unknown tensor intrinsic {name!r}; registered: {', '.join(sorted(_INTRINS)) or 'none'}")
    return _INTRINS[name]


MIXED = {"f16f32": "f16", "bf16f32": "bf16"}  # operands in 16 bits, accumulator and C in f32 (amp's matmuls)


def gemm_intrin(m: int, n: int, k: int, dtype: str = "f32") -> str:
    """Register (once) and name the update `C[i, j] += A[i, r] * B[r, j]` over an m x n x k tile; for a
    mixed `dtype` (`f16f32`), `C[i, j] += f32(A[i, r]) * f32(B[r, j])` with f16 operands."""
    name = f"gemm_{m}x{n}x{k}_{dtype}"
    if name not in _INTRINS:
        op = MIXED.get(dtype, dtype)
        A, B = placeholder("A", (m, k), op), placeholder("B", (k, n), op)
        r = reduce_axis(k, "r")
        if op != dtype:
            C = compute("C", (m, n), lambda i, j: rsum(cast("f32", A[i, r]) * cast("f32", B[r, j]), r))
        else:
            C = compute("C", (m, n), lambda i, j: rsum(A[i, r] * B[r, j], r))
        f = build(name, [A, B], [C])
        body = f.body
        assert isinstance(body, BlockStmt)
        register_intrin(name, replace(f, body=_drop_init(body)))
    return name


def _drop_init(s: Stmt) -> Stmt:
    for p, b in blocks(s):
        if p and b.init is not None:
            return put(s, p, replace(b, init=None))
    return s


def _nest(s: Stmt, what: str) -> tuple[list[For], BlockStmt]:
    loops: list[For] = []
    while isinstance(s, For):
        loops.append(s)
        s = s.body
    if not isinstance(s, BlockStmt) or not isinstance(s.body, Store):
        raise MlcError(f"tensorize: {what} must be a perfect loop nest over one single-store block")
    return loops, s


class _Matcher:
    """Structural match of an actual expression against the description (desc loop vars as pattern)."""

    def __init__(self, pattern_vars: set[Var]):
        self.pvars = pattern_vars
        self.bufs: dict[str, str] = {}
        self.offsets: dict[str, list[Expr]] = {}

    def index(self, buf: str, actual: tuple[Expr, ...], desc: tuple[Expr, ...]) -> bool:
        """Each actual index is the description's plus an offset free of the tile's loop variables; extra
        leading actual indices (a batch matmul's leading dims) are offsets too: the tile is one slice."""
        lead = len(actual) - len(desc)
        if lead < 0:
            return False
        offs = [simp(a) for a in actual[:lead]] + [simp(a - d) for a, d in zip(actual[lead:], desc)]
        if any(free_vars(o) & self.pvars for o in offs):
            return False
        prev = self.offsets.setdefault(buf, offs)
        return all(arith.prove_equal(x, y) for x, y in zip(prev, offs))

    def buffer(self, actual: str, desc: str) -> bool:
        return self.bufs.setdefault(desc, actual) == actual

    def expr(self, a: Expr, d: Expr) -> bool:
        if type(a) is not type(d):
            return False
        if isinstance(a, Load) and isinstance(d, Load):
            return a.buffer.dtype == d.buffer.dtype and self.buffer(a.buffer.name, d.buffer.name) \
                and self.index(d.buffer.name, a.indices, d.indices)
        if isinstance(a, Const) and isinstance(d, Const):
            return a == d
        if isinstance(a, Var) and isinstance(d, Var):
            return a == d
        if isinstance(a, Bin) and isinstance(d, Bin):
            return a.op == d.op and self.expr(a.a, d.a) and self.expr(a.b, d.b)
        if isinstance(a, Cast) and isinstance(d, Cast):
            return a.dtype == d.dtype and self.expr(a.a, d.a)
        if isinstance(a, Call) and isinstance(d, Call):
            return a.name == d.name and len(a.args) == len(d.args) and all(map(self.expr, a.args, d.args))
        if isinstance(a, Select) and isinstance(d, Select):
            return self.expr(a.cond, d.cond) and self.expr(a.t, d.t) and self.expr(a.f, d.f)
        if isinstance(a, Not) and isinstance(d, Not):
            return self.expr(a.a, d.a)
        return False


def tensorize(func: PrimFunc, outer_block: str, intrin: str) -> PrimFunc:
    desc = get_intrin(intrin)
    opath = find_block(func.body, outer_block)
    o = get(func.body, opath)
    assert isinstance(o, BlockStmt)
    loops, b = _nest(o.body, f"the body of block {outer_block}")
    droot = desc.body.body if isinstance(desc.body, BlockStmt) and not desc.body.iters else desc.body
    dloops, d = _nest(droot, f"intrinsic {intrin}")
    if b.init is not None:
        raise MlcError(f"tensorize: block {b.name} still has an init; decompose_reduction first")
    if len(loops) != len(dloops) or any(not arith.prove_equal(x.extent, y.extent) for x, y in zip(loops, dloops)):
        raise MlcError(f"tensorize: the loops under {outer_block} ({[str(arith.as_int(x.extent)) for x in loops]}) "
                       f"do not have the extents of {intrin} ({[str(arith.as_int(y.extent)) for y in dloops]})")
    # the description's loop variables renamed apart from the function's (an outer loop may be called `i` too)
    tile = {dl.var: Var(f"tensorize.{dl.var.name}", dl.var.dtype) for dl in dloops}
    ren = {lp.var: tile[dl.var] for lp, dl in zip(loops, dloops)}
    a_env = {iv.var: simp(substitute(iv.binding, ren)) for iv in b.iters}
    d_env = {iv.var: substitute(iv.binding, tile) for iv in d.iters}
    ast, dst = b.body, d.body
    assert isinstance(ast, Store) and isinstance(dst, Store)
    m = _Matcher(set(tile.values()))
    a_idx = tuple(simp(substitute(i, a_env)) for i in ast.indices)
    d_idx = tuple(simp(substitute(i, d_env)) for i in dst.indices)
    ok = ast.buffer.dtype == dst.buffer.dtype and m.buffer(ast.buffer.name, dst.buffer.name) \
        and m.index(dst.buffer.name, a_idx, d_idx) \
        and m.expr(_indices(substitute(ast.value, a_env)), _indices(substitute(dst.value, d_env)))
    if not ok:
        raise MlcError(f"tensorize: the computation of block {b.name} does not match intrinsic {intrin}")
    ann = dict(o.annotations)
    ann["tensor_intrin"] = intrin
    return replace(func, body=put(func.body, opath, replace(o, annotations=tuple(sorted(ann.items())))))


def _indices(e: Expr) -> Expr:
    return rewrite(e, lambda x: Load(x.buffer, tuple(simp(i) for i in x.indices), x.loc) if isinstance(x, Load) else None)
