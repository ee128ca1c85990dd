"""Which consecutive stages of a PrimFunc may run as one CUDA kernel (row chains: softmax,
log-softmax, layernorm, scheduled by passes/schedule/gpu_rules.py with rows on blockIdx.x).

Stages become separate kernels because a kernel boundary is the only grid-wide barrier. Two stages
need none when each thread block only reads what the same block wrote earlier: both launch alike
(same grid expression and threads), the outermost loop of each is bound to blockIdx.x, and every
access to a global buffer written by the group touches the block's own row of it: its leading
indices flatten to exactly the blockIdx.x variable (one row per block, rows disjoint) and its other
indices do not depend on it. Then a `__syncthreads()` between the stages orders them (global writes
of a block are visible to the block after the barrier), and the group is one kernel: one launch, and
the stages' re-reads of the row hit the caches instead of a fresh pass over DRAM.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir import arith
from ..ir.expr import Bin, Const, Expr, Var, free_vars, substitute
from ..ir.flatten import unflatten
from ..ir.tir import Buffer, For, Let, Stmt, Store
from ..ir.tir_visit import loads_in, nodes, own_exprs, stored_buffers


def _lets(stage: Stmt) -> dict[Var, Expr] | None:
    """Every let of the stage, its value in terms of loop variables; None when one name is bound to
    two different values (then the accesses cannot be read unambiguously)."""
    out: dict[Var, Expr] = {}
    for s in nodes(stage):
        if isinstance(s, Let):
            v = arith.simplify(substitute(s.value, out))
            if s.var in out and not arith.prove_equal(out[s.var], v):
                return None
            out[s.var] = v
    return out


def _accesses(stage: Stmt) -> list[tuple[Buffer, tuple[Expr, ...]]]:
    acc: list[tuple[Buffer, tuple[Expr, ...]]] = []
    for s in nodes(stage):
        for e in own_exprs(s):
            acc += [(ld.buffer, ld.indices) for ld in loads_in(e)]
        if isinstance(s, Store):
            acc.append((s.buffer, s.indices))
    return acc


def _nested_div(e: Expr) -> Expr:
    """floordiv(floordiv(x, a), b) as floordiv(x, a * b) (divisors are extents, positive)."""
    if isinstance(e, Bin):
        a, b = _nested_div(e.a), _nested_div(e.b)
        if e.op == "floordiv" and isinstance(a, Bin) and a.op == "floordiv":
            return Bin("floordiv", a.a, arith.simplify(a.b * b))
        return Bin(e.op, a, b) if (a, b) != (e.a, e.b) else e
    return e


def _flatten(idx: Sequence[Expr], shape: Sequence[Expr]) -> Expr:
    """Row-major flat index of `idx` over `shape`, recognising q * d + r with q = x // d, r = x % d as x
    (how fused loops are split back into iterators)."""
    idx = [_nested_div(i) for i in idx]
    flat = idx[0]
    for i, d in zip(idx[1:], shape[1:]):
        if isinstance(i, Bin) and i.op == "floormod" and arith.prove_equal(i.b, d) \
                and arith.prove_equal(_nested_div(flat), _nested_div(Bin("floordiv", i.a, i.b))):
            flat = i.a
        else:
            flat = arith.simplify(flat * d + i)
    return flat


def _row_rank(idx: tuple[Expr, ...], shape: tuple[Expr, ...], row: Var) -> int | None:
    """r such that idx[:r] flattens to `row` and idx[r:] do not involve it, else None."""
    for r in range(1, len(idx) + 1):
        if any(row in free_vars(i) for i in idx[r:]):
            continue
        if arith.prove_equal(_flatten(idx[:r], shape[:r]), row):
            return r
    return None


def _block_loop(stage: Stmt) -> For | None:
    return stage if isinstance(stage, For) and stage.kind == "thread" and stage.thread_tag == "blockIdx.x" \
        and arith.prove_equal(stage.start, Const(0)) else None


def _same_launch(a: dict[str, Expr], b: dict[str, Expr]) -> bool:
    return set(a) == set(b) and all(arith.prove_equal(a[t], b[t]) for t in a)


def row_local(stages: Sequence[Stmt], global_bufs: set[str], views: dict[str, Buffer] | None = None) -> bool:
    """Every access of the stages to a global buffer they write stays in the block's own row.
    `views`: a parameter's flat view (lower-tir's BufferView) -> the parameter; an access through a
    view is read as the parameter's n-d indices (ir/flatten.unflatten)."""
    views = views or {}
    row = Var("__mlc_row")
    written = {views[n].name if n in views else n for s in stages for n in stored_buffers(s)} & global_bufs
    ranks: dict[str, int] = {}
    for s in stages:
        top = _block_loop(s)
        lets = _lets(s) if top is not None else None
        if top is None or lets is None:
            return False
        for buf, idx in _accesses(s):
            if buf.name in views:
                src = views[buf.name]
                nd = unflatten(idx[0], src.shape) if len(idx) == 1 else None
                if nd is None:
                    return False
                buf, idx = src, nd
            if buf.name not in written:
                continue
            sub = {**{v: substitute(e, {top.var: row}) for v, e in lets.items()}, top.var: row}
            full = tuple(arith.simplify(substitute(substitute(i, sub), sub)) for i in idx)
            if any(isinstance(v, Var) and v in lets for i in full for v in free_vars(i)):
                return False  # a let still unresolved: give up
            r = _row_rank(full, buf.shape, row)
            if r is None or ranks.setdefault(buf.name, r) != r:
                return False
    return True


def row_groups(stages: Sequence[Stmt], extents: Sequence[dict[str, Expr] | None],
               global_bufs: set[str], views: dict[str, Buffer] | None = None) -> list[list[int]]:
    """Consecutive stage indices grouped into kernels (`extents[k]` None: stage k runs alone, e.g. a
    GEMM template)."""
    groups: list[list[int]] = []
    for k, s in enumerate(stages):
        prev = groups[-1] if groups else None
        if prev is not None and extents[k] is not None and extents[prev[0]] is not None \
                and _same_launch(extents[prev[0]], extents[k]) and "threadIdx.x" in extents[k] \
                and _block_loop(s) is not None \
                and row_local([stages[j] for j in prev] + [s], global_bufs, views):
            prev.append(k)
        else:
            groups.append([k])
    return groups
