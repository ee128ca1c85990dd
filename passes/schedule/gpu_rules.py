"""Default GPU schedules, written with the `Schedule` primitives so that they are replayable traces.

Per leaf block of a tensor program (each top-level loop nest holding one block):
- a GEMM (`match_gemm`) is tiled and its inner tile tensorized with a `gemm_*` intrinsic; the CUDA
  codegen emits that stage as a tensor-core (f16/bf16) or register-tiled (f32) kernel;
- a reduction over >= 32 elements becomes a cross-thread reduction: spatial loops fused and bound
  to `blockIdx.x`, reduce loops fused, split and the inner part bound to `threadIdx.x` (the codegen
  combines the partial results with warp shuffles);
- elementwise blocks feeding other blocks are inlined into them first (`compute_inline`);
- everything else (elementwise, short reductions) is fused, split and bound to blockIdx.x/threadIdx.x,
  each thread computing one output (a short reduction runs serially in that thread).
With `sample=True` the thread counts come from `sample_categorical`, which makes the rule a design
space for the tuner; `sample=False` takes the defaults.
"""

from __future__ import annotations

from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import free_vars
from mlc.ir.tir import BlockStmt, For, PrimFunc

from .schedule import Schedule
from .tensorize import gemm_intrin
from .trace import BlockRV, LoopRV
from .tree import blocks, find_loop, get, put, walk

THREAD_CHOICES = (64, 128, 256, 512)
REDUCE_THREAD_CHOICES = (32, 64, 128, 256)


def is_bound(func: PrimFunc) -> bool:
    return any(isinstance(s, For) and s.kind == "thread" for _, s in walk(func.body))


def schedule_gpu(func: PrimFunc, sample: bool = False, seed: int = 0) -> Schedule:
    """Apply the GPU rules to every block of `func` (blocks already bound to threads are left alone)."""
    sch = Schedule(func, seed)
    for b in sch.get_blocks():
        _inline(sch, b)
    for b in sch.get_blocks():
        _schedule_block(sch, b, sample)
    return sch


def _inline(sch: Schedule, b: BlockRV) -> None:
    """Inline an elementwise block into its consumers (one kernel and one round trip to memory fewer);
    `compute_inline` refuses what it cannot do (reductions, outputs of the function, ...)."""
    blk = sch.get(b)
    if not isinstance(blk, BlockStmt) or any(iv.kind == "R" for iv in blk.iters) or blk.init is not None:
        return
    if not sch.get_consumers(b):
        return
    try:
        sch.compute_inline(b)
    except MlcError:
        pass


def default_gpu_schedule(func: PrimFunc) -> PrimFunc:
    """The deterministic default schedule (what a build uses without tuning records)."""
    if is_bound(func):
        return func
    return schedule_gpu(func).func


def _loop_kinds(sch: Schedule, b: BlockRV, loops: list[LoopRV]) -> list[str] | None:
    """'S' or 'R' per loop (by the iterators it feeds), None if some loop feeds both kinds."""
    blk = sch.get(b)
    assert isinstance(blk, BlockStmt)
    kinds = []
    for lp in loops:
        st = sch.get(lp)
        assert isinstance(st, For)
        feeds = {iv.kind for iv in blk.iters if st.var in free_vars(iv.binding)}
        if len(feeds) > 1:
            return None
        kinds.append(feeds.pop() if feeds else "S")
    return kinds


def _alone(sch: Schedule, loops: list[LoopRV]) -> bool:
    """The outermost loop holds just this block (the nest is a stage of its own)."""
    top = sch.get(loops[0])
    return len([1 for _ in blocks(top)]) == 1


def _schedule_block(sch: Schedule, b: BlockRV, sample: bool) -> None:
    loops = sch.get_loops(b)
    if not loops or any(_is_thread(sch, lp) for lp in loops) or not _alone(sch, loops):
        return
    kinds = _loop_kinds(sch, b, loops)
    if kinds is None:
        return
    n_s = kinds.index("R") if "R" in kinds else len(kinds)
    if any(k == "S" for k in kinds[n_s:]):
        return  # reduce loops are not innermost
    if "R" in kinds and _try_gemm(sch, b, loops):
        return
    red_ext = arith.simplify(_extent_product(sch, loops[n_s:]))
    red_c = arith.as_int(red_ext)
    if n_s < len(loops) and (red_c is None or red_c >= 32):
        _cross_thread(sch, loops[:n_s], loops[n_s:], red_c, sample)
        return
    _bind_spatial(sch, loops[:n_s], sample)


def _is_thread(sch: Schedule, lp: LoopRV) -> bool:
    st = sch.get(lp)
    return isinstance(st, For) and st.kind == "thread"


def _extent_product(sch: Schedule, loops: list[LoopRV]):  # type: ignore[no-untyped-def]
    from mlc.ir.expr import Const

    e = Const(1)
    for lp in loops:
        st = sch.get(lp)
        assert isinstance(st, For)
        e = e * st.extent
    return e


def _threads(sch: Schedule, choices: tuple[int, ...], default: int, sample: bool, extent: int | None) -> int:
    if sample:
        return int(sch.sample_categorical(list(choices), [1.0] * len(choices)).value)
    if extent is not None:  # no more threads than work, in whole warps
        return max(32, min(default, (extent + 31) // 32 * 32))
    return default


def _bind_spatial(sch: Schedule, spatial: list[LoopRV], sample: bool) -> None:
    if not spatial:
        return
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    ext = arith.as_int(_extent_product(sch, [fused]))
    t = _threads(sch, THREAD_CHOICES, 256, sample, ext)
    bx, tx = sch.split(fused, [None, t])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _cross_thread(sch: Schedule, spatial: list[LoopRV], reduce: list[LoopRV], red_c: int | None, sample: bool) -> None:
    if spatial:
        fs = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        sch.bind(fs, "blockIdx.x")
    fr = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    default = 64 if red_c is None else 32 if red_c <= 256 else 128 if red_c <= 4096 else 256
    t = _threads(sch, REDUCE_THREAD_CHOICES, default, sample, None)
    ro, ri = sch.split(fr, [None, t])
    sch.reorder(ri, ro)
    bind_reduce_thread(sch, ri, "threadIdx.x")


def bind_reduce_thread(sch: Schedule, loop: LoopRV, tag: str) -> None:
    """Bind a reduce loop to threads (a cross-thread reduction).

    `Schedule.bind` refuses loops that feed reduce iterators (right for parallel/vectorize, too strict
    for threadIdx, where the codegen combines partial results); until it accepts them the binding is
    applied to the function directly, outside the trace.
    """
    try:
        sch.bind(loop, tag)
    except MlcError:
        path = find_loop(sch.func.body, loop.name)
        lp = get(sch.func.body, path)
        assert isinstance(lp, For)
        sch.func = replace(sch.func, body=put(sch.func.body, path, replace(lp, kind="thread", thread_tag=tag)))


def _try_gemm(sch: Schedule, b: BlockRV, loops: list[LoopRV]) -> bool:
    """Tile a GEMM block and tensorize its inner tile; False (schedule untouched) when it does not fit."""
    from mlc.codegen.cuda_gemm import match_gemm, tensor_core_ok

    blk = sch.get(b)
    assert isinstance(blk, BlockStmt)
    g = match_gemm(blk)
    if g is None or len(loops) < 3:
        return False
    n, k = arith.as_int(g.n), arith.as_int(g.k)
    if g.a.dtype == "f32":
        if n is None or k is None or n < 64 or k < 64 or g.c.dtype != "f32":
            return False
    elif not tensor_core_ok(g) or g.c.dtype != g.a.dtype:
        return False
    nt = 16 if n % 16 == 0 else 8  # type: ignore[operator]
    kt = 16 if k % 16 == 0 else 8  # type: ignore[operator]
    trial = sch.copy()
    try:
        *lead, i, j, kk = trial.get_loops(b)
        io, ii = trial.split(i, [None, 1])
        jo, ji = trial.split(j, [None, nt])
        ko, ki = trial.split(kk, [None, kt])
        trial.reorder(io, jo, ko, ii, ji, ki)
        trial.decompose_reduction(b, ko)
        trial.tensorize(ii, gemm_intrin(1, nt, kt, g.a.dtype))
    except MlcError:
        return False
    sch.func, sch.trace, sch._rv = trial.func, trial.trace, trial._rv
    return True
