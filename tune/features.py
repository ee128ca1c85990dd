"""Loop-nest features of a scheduled tensor program, the cost model's input.

Per leaf block, from the loops around it (symbolic extents count as `SYM_EXTENT`): log2 of the
iteration count, of the parallel, vectorized and unrolled extents, of the innermost extent and the
nest depth; per memory access, its stride along the innermost loop (0, 1 or other) and the
footprint of the innermost three loops, which is what decides cache and register reuse. Blocks are
summarised by the heaviest one (most iterations) plus the totals of the rest, a fixed-length vector.
GPU schedules add the launch shape (log2 of the largest threadIdx and blockIdx extents) and, for a
GEMM emitted as a template, its tile (log2 BM*BN, BK, warps' tile, stages): tiles that the loop nest
does not show, since the template replaces it (all zero on CPU).
"""

from __future__ import annotations

import math

import numpy as np
from mlc.ir import arith
from mlc.ir.expr import Expr, Var, free_vars, substitute
from mlc.ir.tir import BlockStmt, For, PrimFunc
from mlc.ir.tir_visit import loads_in, stmt_exprs, stores_in, walk
from mlc.passes.schedule.tree import ancestors, blocks

SYM_EXTENT = 64
BLOCK_FEATURES = 14
GPU_FEATURES = 6
N_FEATURES = BLOCK_FEATURES + 3 + GPU_FEATURES


def _ext(e: Expr) -> int:
    v = arith.as_int(e)
    return SYM_EXTENT if v is None else max(1, v)


def _stride(idx: tuple[Expr, ...], shape: tuple[Expr, ...], var: Var) -> int:
    """Flat-index stride of an access along `var` (evaluated by differencing; -1 if not affine-ish)."""
    env0: dict[str, int] = {}
    names = {v.name for i in idx for v in free_vars(i)}
    for n in names:
        env0[n] = 1
    try:
        flat0 = flat1 = 0
        for i, d in zip(idx, shape):
            dim = _ext(d)
            flat0 = flat0 * dim + arith.evaluate(i, env0)
            flat1 = flat1 * dim + arith.evaluate(i, {**env0, var.name: env0.get(var.name, 1) + 1})
        return abs(int(flat1 - flat0))
    except (ValueError, KeyError, ZeroDivisionError, TypeError):
        return -1


def _block_features(func: PrimFunc, path: tuple[int, ...], b: BlockStmt) -> list[float]:
    loops = [s for _, s in ancestors(func.body, path) if isinstance(s, For)]
    exts = [_ext(lp.extent) for lp in loops]
    iters = math.prod(exts)
    par = math.prod(e for lp, e in zip(loops, exts) if lp.kind in ("parallel", "thread"))
    vec = math.prod(e for lp, e in zip(loops, exts) if lp.kind == "vectorized")
    unr = math.prod(e for lp, e in zip(loops, exts) if lp.kind == "unrolled")
    inner = exts[-1] if exts else 1
    vmap = {iv.var: iv.binding for iv in b.iters}
    s0 = s1 = sx = 0.0
    foot = 0.0
    inner_var = loops[-1].var if loops else None
    accesses = [(ld.buffer, ld.indices) for e in stmt_exprs(b.body) for ld in loads_in(e)]
    accesses += [(st.buffer, st.indices) for st in stores_in(b.body)]
    for buf, idx in accesses:
        idx = tuple(substitute(i, vmap) for i in idx)
        w = math.log2(iters + 1)
        if inner_var is not None:
            st = _stride(idx, buf.shape, inner_var)
            if st == 0:
                s0 += w
            elif st == 1:
                s1 += w
            else:
                sx += w
        used = {v.name for i in idx for v in free_vars(i)}
        foot += math.log2(1 + math.prod(e for lp, e in zip(loops[-3:], exts[-3:]) if lp.var.name in used))
    local = sum(math.prod(_ext(d) for d in a.shape) for a in b.alloc_buffers)
    lg = math.log2
    return [lg(iters + 1), lg(par), lg(vec), lg(unr), lg(inner + 1), float(len(loops)), s0, s1, sx, foot,
            float(len(accesses)), lg(local + 1), float(inner_var is not None and loops[-1].kind == "vectorized"),
            float(b.init is not None)]


def extract(func: PrimFunc) -> np.ndarray:
    """The feature vector of one scheduled program (length `N_FEATURES`)."""
    rows = [_block_features(func, p, b) for p, b in blocks(func.body)
            if p and not any(isinstance(s, BlockStmt) for _, s in blocks(b.body) if _)]
    if not rows:
        return np.zeros(N_FEATURES)
    arr = np.asarray(rows)
    main = arr[int(np.argmax(arr[:, 0]))]
    rest = [float(len(rows)), float(np.log2(np.sum(2.0 ** arr[:, 0]) + 1)), float(arr[:, 1].mean())]
    return np.concatenate([main, rest, _gpu_features(func)])


def _gpu_features(func: PrimFunc) -> list[float]:
    from mlc.passes.schedule.gpu_rules import func_gemm_config

    threads = blocks_ = 1
    for _, s in walk(func.body):
        if isinstance(s, For) and s.kind == "thread":
            if s.thread_tag.startswith("threadIdx"):
                threads = max(threads, _ext(s.extent))
            elif s.thread_tag.startswith("blockIdx"):
                blocks_ = max(blocks_, _ext(s.extent))
    cfg = func_gemm_config(func)
    tile = [math.log2(cfg[0] * cfg[1]), float(cfg[2]), math.log2(cfg[3] * cfg[4]), float(cfg[5])] if cfg else [0.0] * 4
    return [math.log2(threads), math.log2(blocks_), *tile]
