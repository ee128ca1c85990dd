"""sparse-lower: sparse tensor programs (stage I, coordinate space) -> position space -> flat buffers.

The lowering is ir/sparse_lower.py; this pass runs it over every PrimFunc (dense ones are left as
they are, so the pass is a no-op on dense modules and sits in every CPU build). With `schedule`
(on in configs/pipelines/build-cpu.yaml), each stage-III function the lowering produced gets the
default sparse CPU schedule through the schedule primitives: the outer loop of every nest (rows, or
with `parts` the parts of rows of equal nonzeros) in parallel, the innermost loop vectorized when it is spatial with a constant extent (the feature
dim). The default rules' tiling reorders loops, which a row extent read from indptr forbids, so a
function scheduled here is marked `schedule = "sparse"` and the schedule pass leaves it alone.

Register tiles (`register_tiles`): an accumulation into a row of the result over a row's nonzeros
(SpMM: C[i, :] += A[i, j] * B[j, :]) keeps a tile of T features of that row in a local buffer (vector
registers) across the nonzero loop and writes it once, the feature dim in F / T tiles; a dot product
along the feature dim per nonzero (SDDMM: C[p] = A[p] * sum_k X[i, k] * Y[j, k]) sums into T lanes
of vector accumulators, folds them to 8 and adds those, the factors free of k (A[p]) applied once
after the sum. Before, each nonzero loaded and stored its C row (SpMM), and SDDMM's reduction ran
one scalar chain through C's memory: 0.5 GFLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Const, Expr, Load, Var, free_vars, substitute
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.sparse_lower import is_sparse, lower_sparse
from mlc.ir.tir import BlockStmt, Buffer, For, IterVar, Let, PrimFunc, Seq, Stmt, Store
from mlc.ir.tir_visit import StmtMutator, loads_in, seq, used_names

from .registry import ModulePass, PassContext, option, register_pass


def sparse_cpu_schedule(func: PrimFunc) -> PrimFunc:
    """Rows in parallel, the feature loop vectorized (see module doc); marks the function scheduled."""
    from .schedule.schedule import Schedule

    sch = Schedule(func)
    for rv in sch.get_blocks():
        loops = sch.get_loops(rv)
        if not loops:
            continue
        block = sch.get(rv)
        assert isinstance(block, BlockStmt)
        kinds = {iv.binding.name: iv.kind for iv in block.iters if isinstance(iv.binding, Var)}
        outer, inner = sch.get(loops[0]), sch.get(loops[-1])
        if outer.kind != "parallel" and kinds.get(outer.var.name, "S") == "S":  # type: ignore[union-attr]
            sch.parallel(loops[0])  # rows, or parts of rows (bound to no iterator)
        if len(loops) > 1 and kinds.get(inner.var.name) == "S" and arith.as_int(inner.extent) is not None:  # type: ignore[union-attr]
            sch.vectorize(loops[-1])
    attrs = tuple(sorted(dict(sch.func.attrs, schedule="sparse").items()))
    return register_tiles(replace(sch.func, attrs=attrs))


LANES = 8  # f32 lanes of one AVX2 register: the narrowest tile and the width an SDDMM sum folds to


def _tile(extent: int, widths: tuple[int, ...]) -> int | None:
    """The widest of `widths` that divides `extent` (None: no register tile)."""
    return next((w for w in widths if w <= extent and extent % w == 0), None)


def _const_loop(s: Stmt, kind: str | None) -> tuple[For, int] | None:
    """(loop, extent) when `s` is a loop from 0 of constant extent (of `kind`, when given)."""
    if not isinstance(s, For) or (kind is not None and s.kind != kind) or arith.as_int(s.start) != 0:
        return None
    ext = arith.as_int(s.extent)
    return (s, ext) if ext is not None else None


def _accumulation(s: Stmt) -> tuple[BlockStmt, Store, Expr] | None:
    """(block, store, added term) of a block `X[idx] = X[idx] + term` that has no init or allocations."""
    if not isinstance(s, BlockStmt) or s.init is not None or s.alloc_buffers or not isinstance(s.body, Store):
        return None
    st = s.body
    v = st.value
    if not (isinstance(v, Bin) and v.op == "add" and v.a == Load(st.buffer, st.indices)):
        return None
    if any(ld.buffer.name == st.buffer.name for ld in loads_in(v.b)):
        return None
    return s, st, v.b


def _zero_store(s: Stmt) -> tuple[BlockStmt, Store] | None:
    if (isinstance(s, BlockStmt) and s.init is None and not s.alloc_buffers and isinstance(s.body, Store)
            and isinstance(s.body.value, Const) and s.body.value.value == 0):
        return s, s.body
    return None


def _bound(b: BlockStmt, idx: tuple[Expr, ...]) -> tuple[Expr, ...]:
    """An index of `b` in loop terms (its iterators replaced by their bindings)."""
    env = {iv.var: iv.binding for iv in b.iters}
    return tuple(substitute(i, env) for i in idx)


def _rebind(b: BlockStmt, var: Var, binding: Expr) -> tuple[IterVar, ...]:
    return tuple(replace(iv, binding=binding) if iv.binding == var else iv for iv in b.iters)


def _factors(e: Expr) -> list[Expr]:
    if isinstance(e, Bin) and e.op == "mul":
        return _factors(e.a) + _factors(e.b)
    return [e]


def _product(xs: list[Expr]) -> Expr:
    out = xs[0]
    for x in xs[1:]:
        out = Bin("mul", out, x)
    return out


def _tree_sum(xs: list[Expr]) -> Expr:
    while len(xs) > 1:
        xs = [Bin("add", xs[k], xs[k + 1]) if k + 1 < len(xs) else xs[k] for k in range(0, len(xs), 2)]
    return xs[0]


class _RegisterTiles(StmtMutator):
    def __init__(self, used: set[str]):
        self.used = used

    def visit_Seq(self, s: Seq) -> Stmt:
        stmts = list(s.stmts)
        out: list[Stmt] = []
        k = 0
        while k < len(stmts):
            new = None
            if k + 1 < len(stmts):
                new = self.row_tile(stmts[k], stmts[k + 1]) or self.dot_tile(stmts[k], stmts[k + 1])
            out.append(new if new is not None else self.visit(stmts[k]))
            k += 2 if new is not None else 1
        return seq(out)

    def visit_For(self, lp: For) -> Stmt:
        new = self.carried_tile(lp)
        return new if new is not None else self.generic_visit(lp)

    def carried_tile(self, lp: For) -> Stmt | None:
        """`for j { lets, loops { for k vec { C[r, k] += t } } }` with r free of the nest's variables and
        no init (hyb's buckets add into C): per tile, acc = C[r, tile]; the nest into acc; C[r, tile] = acc."""
        chain: set[Var] = {lp.var}
        inner: Stmt = lp.body
        while True:
            if isinstance(inner, Let):
                chain.add(inner.var)
            elif isinstance(inner, For) and inner.kind != "vectorized":
                chain.add(inner.var)
            else:
                break
            inner = inner.body
        upd = _const_loop(inner, "vectorized")
        if upd is None or lp.kind == "parallel" or (acc_ := _accumulation(upd[0].body)) is None:
            return None
        (ku, F), (bu, su, term) = upd, acc_
        T = _tile(F, (64, 32, 16, LANES))
        row = _bound(bu, su.indices[:-1])
        kept = tuple(iv for iv in bu.iters if not (free_vars(iv.binding) & chain) and iv.binding != ku.var)
        feat = [iv for iv in bu.iters if iv.binding == ku.var]
        if (T is None or _bound(bu, su.indices[-1:]) != (ku.var,) or len(feat) != 1
                or any(free_vars(i) & (chain | {ku.var}) for i in row)
                or any(free_vars(i) & ({iv.var for iv in bu.iters} - {iv.var for iv in kept}) for i in su.indices[:-1])):
            return None
        C = su.buffer
        acc = Buffer(fresh_name(f"{C.name}_acc", self.used), (Const(T),), C.dtype, "local")
        ko = Var(fresh_name("ko", self.used))
        lane = Var(fresh_name("lane", self.used))
        fv = feat[0]

        def edge(name: str, store: Store) -> For:
            iters = (*kept, replace(fv, binding=ko * T + lane, kind="S"))
            return For(lane, Const(0), Const(T), BlockStmt(fresh_name(name, self.used), iters, store, loc=bu.loc), "vectorized")

        idx = su.indices
        load = edge(f"{bu.name}_load", Store(acc, (lane,), Load(C, idx)))
        a = Load(acc, (ku.var,))
        add = replace(bu, iters=_rebind(bu, ku.var, ko * T + ku.var), body=replace(su, buffer=acc, indices=(ku.var,), value=a + term))

        def rebuild(s: Stmt) -> Stmt:
            if s is upd[0]:
                return replace(upd[0], extent=Const(T), body=add)
            assert isinstance(s, Let | For)
            return replace(s, body=rebuild(s.body))

        store = edge(f"{bu.name}_store", Store(C, idx, Load(acc, (lane,))))
        tile = BlockStmt(fresh_name(f"{bu.name}_tile", self.used), (), seq([load, rebuild(lp), store]),
                         alloc_buffers=(acc,), loc=bu.loc)
        return For(ko, Const(0), Const(F // T), tile, loc=lp.loc)

    def row_tile(self, first: Stmt, second: Stmt) -> Stmt | None:
        """`for k vec { C[r, k] = 0 }; for j { lets { for k vec { C[r, k] += t } } }` -> per tile of T
        features: acc = 0; for j { ... acc[k] += t }; C[r, tile] = acc."""
        init = _const_loop(first, "vectorized")
        if init is None or (z := _zero_store(init[0].body)) is None or not isinstance(second, For):
            return None
        (kz, F), (bz, sz) = init, z
        lets: list[Let] = []
        inner: Stmt = second.body
        while isinstance(inner, Let):
            lets.append(inner)
            inner = inner.body
        upd = _const_loop(inner, "vectorized")
        if upd is None or upd[1] != F or (acc_ := _accumulation(upd[0].body)) is None:
            return None
        ku, (bu, su, term) = upd[0], acc_
        T = _tile(F, (64, 32, 16, LANES))
        if (su.buffer != sz.buffer or T is None or _bound(bu, su.indices) != tuple(
                substitute(i, {kz.var: ku.var}) for i in _bound(bz, sz.indices))
                or _bound(bu, su.indices[-1:]) != (ku.var,)):
            return None
        C = su.buffer
        acc = Buffer(fresh_name(f"{C.name}_acc", self.used), (Const(T),), C.dtype, "local")
        ko = Var(fresh_name("ko", self.used))
        base = ko * T

        def lane_loop(lp: For, body: Stmt) -> For:
            return replace(lp, extent=Const(T), body=body)

        zero = lane_loop(kz, replace(bz, iters=_rebind(bz, kz.var, base + kz.var), body=replace(sz, buffer=acc, indices=(kz.var,))))
        a = Load(acc, (ku.var,))
        add = replace(bu, iters=_rebind(bu, ku.var, base + ku.var), body=replace(su, buffer=acc, indices=(ku.var,), value=a + term))
        body: Stmt = lane_loop(ku, add)
        for lt in reversed(lets):
            body = replace(lt, body=body)
        loop = replace(second, body=body)
        wb_block = BlockStmt(fresh_name(f"{bz.name}_wb", self.used), _rebind(bz, kz.var, base + kz.var),
                             replace(sz, value=Load(acc, (kz.var,))), loc=bz.loc)
        wb = lane_loop(kz, wb_block)
        tile = BlockStmt(fresh_name(f"{bu.name}_tile", self.used), (), seq([zero, loop, wb]), alloc_buffers=(acc,), loc=bu.loc)
        return For(ko, Const(0), Const(F // T), tile, loc=second.loc)

    def dot_tile(self, first: Stmt, second: Stmt) -> Stmt | None:
        """`O[p] = 0; for k { O[p] += f(p) * g(k) }` -> acc[0:T] = 0; for tiles { acc[l] += g(k) };
        folded to 8 lanes; O[p] = f(p) * (acc[0] + ... + acc[7])."""
        z = _zero_store(first)
        red = _const_loop(second, "serial")
        if z is None or red is None or (acc_ := _accumulation(red[0].body)) is None:
            return None
        (bz, sz), (kr, F), (bu, su, term) = z, red, acc_
        T = _tile(F, (32, 16, LANES))
        rv = [iv for iv in bu.iters if iv.binding == kr.var and iv.kind == "R"]
        if T is None or su.buffer != sz.buffer or len(rv) != 1 or _bound(bu, su.indices) != _bound(bz, sz.indices):
            return None
        k = rv[0].var
        variant = [f for f in _factors(term) if k in free_vars(f)]
        invariant = [f for f in _factors(term) if k not in free_vars(f)]
        rename = {iv.var: next((z.var for z in bz.iters if z.binding == iv.binding), iv.var) for iv in bu.iters if iv.var != k}
        if not variant or any(v in free_vars(f) for f in invariant for v in rename if rename[v] == v):
            return None
        out = su.buffer
        acc = Buffer(fresh_name(f"{out.name}_acc", self.used), (Const(T),), out.dtype, "local")
        lane, ko = Var(fresh_name("lane", self.used)), Var(fresh_name("ko", self.used))

        def lanes(width: int, store: Store, name: str) -> For:
            return For(lane, Const(0), Const(width), BlockStmt(fresh_name(name, self.used), (), store), "vectorized")

        a = Load(acc, (lane,))
        parts: list[Stmt] = [lanes(T, Store(acc, (lane,), sz.value), f"{bz.name}_lanes")]
        add = replace(bu, iters=_rebind(bu, kr.var, ko * T + lane),
                      body=replace(su, buffer=acc, indices=(lane,), value=a + _product(variant)))
        parts.append(For(ko, Const(0), Const(F // T), For(lane, Const(0), Const(T), add, "vectorized"), loc=second.loc))
        width = T
        while width > LANES:
            width //= 2
            parts.append(lanes(width, Store(acc, (lane,), a + Load(acc, (lane + width,))), f"{bu.name}_fold"))
        total = _tree_sum([Load(acc, (Const(x),)) for x in range(width)])
        value = _product([substitute(f, rename) for f in invariant] + [total]) if invariant else total
        parts.append(replace(bz, body=replace(sz, value=value)))
        return BlockStmt(fresh_name(f"{bu.name}_dot", self.used), (), seq(parts), alloc_buffers=(acc,), loc=bu.loc)


def register_tiles(func: PrimFunc) -> PrimFunc:
    """`func` with its row accumulations and per-nonzero dot products in registers (module doc);
    nests of other shapes are left as they are."""
    return replace(func, body=_RegisterTiles(used_names(func)).visit(func.body))


@register_pass
@dataclass(frozen=True)
class SparseLower(ModulePass):
    """Lower sparse tensor programs: sparse iterations to position-space loops (stage 2), then to
    flat value arrays (stage 3); dense programs are left as they are."""

    name: ClassVar[str] = "sparse-lower"
    stage: int = option(3, "stop after stage 2 (position space: loops, blocks, sparse buffers) or 3 (flat buffers)")
    schedule: bool = option(False, "give the stage-3 result the default sparse CPU schedule (rows parallel, "
                                   "feature dim vectorized)")
    parts: int = option(0, "split the rows of CSR iterations into this many parts of equal nonzeros "
                           "(0: one loop over rows; a program's `sparse_parts` attribute, set by a tuned "
                           "sparse-format, overrides it)")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        if self.stage not in (2, 3):
            raise MlcError(f"sparse-lower: --stage must be 2 or 3, got {self.stage}")
        if not 0 <= self.parts <= 4096:
            raise MlcError(f"sparse-lower: --parts must be in [0, 4096], got {self.parts}")
        for f in module.prim_functions():
            if not is_sparse(f):
                continue
            try:
                parts = dict(f.attrs).get("sparse_parts", self.parts)  # a tuned program's own (sparse-format auto)
                new = lower_sparse(f, self.stage, int(parts) if isinstance(parts, int) else self.parts)
                if self.schedule and self.stage == 3:
                    new = sparse_cpu_schedule(new)
            except MlcError as e:
                raise MlcError(f"sparse-lower: @{f.name}: {e.message}", e.loc or f.loc, e.source_line) from None
            module = module.with_function(new)
        return module
