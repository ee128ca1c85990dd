"""Schedule primitives keep the interpreter's results; bad uses raise MlcError; traces replay."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from mlc.ir import BlockStmt, For, IfStmt, MlcError, PrimFunc, Var
from mlc.ir.tir_builder import build, compute, fconst, maximum, placeholder, reduce_axis, rsum
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.tir_visit import walk
from mlc.passes.schedule import BlockRV, LoopRV, Schedule, Trace, gemm_intrin
from test_tir_interp import conv_func, matmul_func, softmax_func

RNG = np.random.default_rng(1)


def mm_relu(n: object = 20, k: int = 12, m: int = 8) -> PrimFunc:
    A, B = placeholder("A", (n, k)), placeholder("B", (k, m))
    r = reduce_axis(k, "k")
    C = compute("C", (n, m), lambda i, j: rsum(A[i, r] * B[r, j], r))
    D = compute("D", (n, m), lambda i, j: maximum(C[i, j], fconst(0.0)))
    return build("mm_relu", [A, B], [D])


def _args(func: PrimFunc, dims: dict[str, int] | None = None) -> list[np.ndarray]:
    out = []
    for b in func.params:
        shape = tuple(int(d.value) if not isinstance(d, Var) else (dims or {})[d.name] for d in b.shape)  # type: ignore[attr-defined]
        out.append(RNG.standard_normal(shape).astype(np.float32))
    return out


def same(orig: PrimFunc, new: PrimFunc, dims: dict[str, int] | None = None, vectorize: bool = True) -> None:
    """`new` computes what `orig` computes, per the reference interpreter."""
    args = _args(orig, dims)
    ref = [a.copy() for a in args]
    run_prim(orig, ref)
    got = [a.copy() for a in args]
    run_prim(new, got, vectorize=vectorize)
    low = [a.copy() for a in args]  # and so does its loop-level form (lower-tir), the oracle of the lowering
    run_prim(lower_tir_func(new), low, vectorize=vectorize)
    for r, g, lw in zip(ref[-orig.num_outputs:], got[-orig.num_outputs:], low[-orig.num_outputs:]):
        assert not np.isnan(g).any()
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(lw, g, rtol=1e-5, atol=1e-5)


def loop_names(func: PrimFunc) -> list[str]:
    return [s.var.name for _, s in walk(func.body) if isinstance(s, For)]


# ---- loop primitives -------------------------------------------------------------------------
@pytest.mark.parametrize("factors", [[4, 5], [None, 8], [3, None], [2, 2, None], [7, 3]])
def test_split_keeps_results(factors: list[int | None]) -> None:
    f = mm_relu()
    s = Schedule(f)
    i, _, _ = s.get_loops(s.get_block("C"))
    outs = s.split(i, factors)
    assert len(outs) == len(factors)
    same(f, s.func)
    imperfect = any(isinstance(x, IfStmt) for _, x in walk(s.func.body))
    assert imperfect == (factors in ([None, 8], [3, None], [7, 3]))


def test_split_symbolic_extent_needs_none() -> None:
    n = Var("n")
    f = mm_relu(n)
    s = Schedule(f)
    i, j, k = s.get_loops(s.get_block("C"))
    with pytest.raises(MlcError, match="symbolic extent"):
        s.split(i, [4, 5])
    io, ii = s.split(i, [None, 8])
    s.reorder(j, io)
    for nv in (5, 17):
        same(f, s.func, {"n": nv})


def test_split_errors() -> None:
    s = Schedule(mm_relu())
    i, _, _ = s.get_loops(s.get_block("C"))
    with pytest.raises(MlcError, match="multiply to 6 < extent 20"):
        s.split(i, [2, 3])
    with pytest.raises(MlcError, match="at most one factor"):
        s.split(i, [None, None])
    with pytest.raises(MlcError, match="no loop named nope"):
        s.split(LoopRV("nope"), [2, None])
    before = s.func
    with pytest.raises(MlcError):
        s.split(i, [0, None])
    assert s.func == before and len(s.trace) == 2  # failed primitives change nothing and are not recorded


def test_fuse_reorder_kinds() -> None:
    f = conv_func()
    s = Schedule(f)
    conv = s.get_block("conv")
    n, k, h, w, rc, rh, rw = s.get_loops(conv)
    s.reorder(h, w, rc, rh, rw)
    s.reorder(rh, rc)
    nk = s.fuse(n, k)
    s.parallel(nk)
    wo, wi = s.split(w, [None, 4])
    s.vectorize(wi)
    s.unroll(rw)
    same(f, s.func)
    kinds = {x.var.name: x.kind for _, x in walk(s.func.body) if isinstance(x, For)}
    assert kinds[nk.name] == "parallel" and kinds[wi.name] == "vectorized" and kinds[rw.name] == "unrolled"
    with pytest.raises(MlcError, match="bound to reduce iterator"):
        s.parallel(rc)
    with pytest.raises(MlcError, match="bound to reduce iterator"):
        s.vectorize(rh)
    with pytest.raises(MlcError, match="not directly nested"):
        s.fuse(nk, wo)
    with pytest.raises(MlcError, match="not in one loop nest"):
        s.reorder(nk, s.get_loops(s.get_block("relu"))[0])
    with pytest.raises(MlcError, match="no loop named n"):
        s.get(n)  # fused away: the handle is stale


def test_fuse_all_and_bind() -> None:
    f = softmax_func()
    s = Schedule(f)
    i, j = s.get_loops(s.get_block("y"))
    fused = s.fuse(i, j)
    bx, tx = s.split(fused, [None, 16])
    s.bind(bx, "blockIdx.x")
    s.bind(tx, "threadIdx.x")
    same(f, s.func)
    lp = s.get(tx)
    assert isinstance(lp, For) and lp.kind == "thread" and lp.thread_tag == "threadIdx.x"
    with pytest.raises(MlcError, match="unknown thread tag"):
        s.bind(s.get_loops(s.get_block("e"))[0], "warp.x")
    with pytest.raises(MlcError, match="bound to reduce"):  # grid-level loops must be spatial
        s.bind(s.get_loops(s.get_block("s"))[1], "blockIdx.y")
    s.bind(s.get_loops(s.get_block("s"))[1], "threadIdx.y")  # a cross-thread reduction is allowed


# ---- block primitives ------------------------------------------------------------------------
def test_tiled_matmul_cache_compute_at_decompose() -> None:
    f = mm_relu(20, 12, 8)
    s = Schedule(f)
    c = s.get_block("C")
    i, j, k = s.get_loops(c)
    io, ii = s.split(i, [None, 8])
    jo, ji = s.split(j, [2, 4])
    ko, ki = s.split(k, [None, 5])
    s.reorder(io, jo, ko, ii, ki, ji)
    a_loc = s.cache_read(c, 0, "local")
    b_loc = s.cache_read(c, 1, "shared")
    s.compute_at(a_loc, ko)
    s.compute_at(b_loc, ko)
    wb = s.cache_write(c, 0, "local")
    s.reverse_compute_at(wb, jo)
    s.reverse_compute_at(s.get_block("D"), jo)
    init = s.decompose_reduction(c, ko)
    s.vectorize(ji)
    same(f, s.func)
    same(f, s.func, vectorize=False)
    assert s.get(init).init is None and s.get(c).init is None  # type: ignore[union-attr]
    # the copied tile of A under ko is at most 8 x 5, not the whole buffer
    a_nest = [x for _, x in walk(s.func.body) if isinstance(x, For) and isinstance(x.body, For)
              and isinstance(x.body.body, BlockStmt) and x.body.body.name == a_loc.name]
    assert a_nest and repr(a_nest[0].extent).count("8") >= 1


def test_compute_inline_and_reverse_inline_conv() -> None:
    f = conv_func()
    s = Schedule(f)
    s.compute_inline(s.get_block("pad"))
    with pytest.raises(MlcError, match="block conv is a reduction"):
        s.reverse_compute_inline(s.get_block("relu"))
    wb = s.cache_write(s.get_block("conv"), 0, "local")
    s.reverse_compute_inline(s.get_block("relu"))  # relu folds into the write-back copy
    same(f, s.func)
    names = [b.name for _, b in walk(s.func.body) if isinstance(b, BlockStmt)]
    assert names == ["root", "conv", wb.name]
    assert [b.name for b in s.func.body.alloc_buffers] == ["conv_local"]  # type: ignore[attr-defined]
    with pytest.raises(MlcError, match="no block named pad"):
        s.get_block("pad")


def test_conv_pad_compute_at_halo() -> None:
    f = conv_func()
    s = Schedule(f)
    n, k, h, w, *_ = s.get_loops(s.get_block("conv"))
    s.compute_at(s.get_block("pad"), h)
    s.reverse_compute_at(s.get_block("relu"), w)
    same(f, s.func)


def test_softmax_schedule() -> None:
    f = softmax_func(Var("n"), 10)
    s = Schedule(f)
    i = s.get_loops(s.get_block("y"))[0]
    with pytest.raises(MlcError, match="consumer e of mx is not under loop"):
        s.compute_at(s.get_block("mx"), i)
    for b in ("s", "e", "mx"):
        s.compute_at(s.get_block(b), i)
    s.parallel(i)
    _, k = s.get_loops(s.get_block("s"))
    ko, ki = s.split(k, [None, 4])
    s.decompose_reduction(s.get_block("s"), ko)
    for n in (3, 9):
        same(f, s.func, {"n": n})


def test_compute_inline_elementwise_in_softmax() -> None:
    f = softmax_func()
    s = Schedule(f)
    s.compute_inline(s.get_block("e"))
    same(f, s.func)


def test_block_precondition_errors() -> None:
    f = mm_relu()
    s = Schedule(f)
    c, d = s.get_block("C"), s.get_block("D")
    i, j, k = s.get_loops(c)
    with pytest.raises(MlcError, match="is a reduction"):
        s.compute_inline(c)
    with pytest.raises(MlcError, match="writes the function output D"):
        s.compute_inline(d)
    with pytest.raises(MlcError, match="index 5 is out of range"):
        s.cache_read(c, 5, "local")
    with pytest.raises(MlcError, match="unknown scope"):
        s.cache_read(c, 0, "texture")
    with pytest.raises(MlcError, match="belongs to block C itself"):
        s.compute_at(c, k)
    di = s.get_loops(d)[0]
    with pytest.raises(MlcError, match="does not run before"):
        s.reverse_compute_at(d, s.get_loops(d)[1])
    with pytest.raises(MlcError, match="is not an ancestor"):
        s.decompose_reduction(c, di)
    s2 = Schedule(f)
    ko, ki = s2.split(s2.get_loops(s2.get_block("C"))[2], [3, 4])
    s2.reorder(ko, s2.get_loops(s2.get_block("C"))[0])
    with pytest.raises(MlcError, match="inside reduction loop"):
        s2.decompose_reduction(s2.get_block("C"), s2.get_loops(s2.get_block("C"))[1])
    with pytest.raises(MlcError, match="has no init"):
        s.decompose_reduction(d, di)
    with pytest.raises(MlcError, match="not a single store|spatial store|exactly one"):
        s.reverse_compute_inline(c)


def test_storage_align_annotation() -> None:
    f = mm_relu()
    s = Schedule(f)
    a_loc = s.cache_read(s.get_block("C"), 0, "shared")
    s.storage_align(a_loc, 0, 0, 32, 8)
    b = s.get(a_loc)
    assert isinstance(b, BlockStmt) and dict(b.annotations)["storage_align"] == (("A_shared", 0, 32, 8),)
    with pytest.raises(MlcError, match="function parameter"):
        s.storage_align(s.get_block("D"), 0, 0, 32, 8)
    with pytest.raises(MlcError, match="offset"):
        s.storage_align(a_loc, 0, 0, 32, 40)
    same(f, s.func)


# ---- traces ----------------------------------------------------------------------------------
def tile_program(sch: Schedule) -> None:
    c = sch.get_block("C")
    i, j, k = sch.get_loops(c)
    ti = sch.sample_perfect_tile(i, 3, 4)
    tj = sch.sample_perfect_tile(j, 2, 8)
    tk = sch.sample_perfect_tile(k, 2, 16)
    i0, i1, i2 = sch.split(i, ti)
    j0, j1 = sch.split(j, tj)
    k0, k1 = sch.split(k, tk)
    order = sch.sample_categorical([0, 1], [0.5, 0.5])
    if order == 0:
        sch.reorder(i0, j0, k0, i1, k1, i2, j1)
    else:
        sch.reorder(i0, j0, i1, k0, k1, i2, j1)
    sch.vectorize(j1)


@pytest.mark.parametrize("seed", range(6))
def test_random_traces_replay_deterministically(seed: int) -> None:
    f = mm_relu(24, 12, 16)
    s = Schedule(f, seed=seed)
    tile_program(s)
    same(f, s.func)
    text = s.trace.to_json()
    json.loads(text)
    t = Trace.from_json(text)
    assert t == s.trace
    assert t.apply(f) == s.func
    again = Schedule(f, seed=seed)
    tile_program(again)
    assert again.func == s.func and again.trace.to_json() == text
    d = t.decisions()
    assert len(d) == 4
    i_ext = np.prod(d[min(d)])
    assert i_ext == 24


def test_mutated_decision_propagates() -> None:
    f = mm_relu(24, 12, 16)
    s = Schedule(f, seed=3)
    tile_program(s)
    first = min(s.trace.decisions())
    t2 = s.trace.with_decision(first, [2, 3, 4])
    g = t2.apply(f)
    same(f, g)
    exts = {x.var.name: int(x.extent.value) for _, x in walk(g.body) if isinstance(x, For) and x.var.name.startswith("i_")}  # type: ignore[attr-defined]
    assert (exts["i_0"], exts["i_1"], exts["i_2"]) == (2, 3, 4)
    with pytest.raises(MlcError, match="not a perfect 3-tiling"):
        s.trace.with_decision(first, [5, 5, 1]).apply(f)
    with pytest.raises(MlcError, match="not a sampling instruction"):
        s.trace.with_decision(0, [1])


def test_sampling_respects_max_innermost_and_probs() -> None:
    f = matmul_func(64, 8, 8)
    for seed in range(20):
        s = Schedule(f, seed=seed)
        t = s.sample_perfect_tile(s.get_loops(s.get_block("C"))[0], 3, 4)
        assert int(np.prod(t)) == 64 and t[-1] <= 4
        assert s.sample_categorical([7, 9], [0.0, 1.0]) == 9
    with pytest.raises(MlcError, match="probabilities"):
        s.sample_categorical([1, 2], [1.0])


def test_trace_json_rejects_garbage() -> None:
    with pytest.raises(MlcError, match="invalid JSON"):
        Trace.from_json("{nope")
    with pytest.raises(MlcError, match="version"):
        Trace.from_json('{"version": 99, "insts": []}')
    bad = Trace.from_json('{"version": 1, "insts": [{"kind": "__init__", "inputs": []}]}')
    with pytest.raises(MlcError, match="unknown instruction"):
        bad.apply(mm_relu())


def test_trace_of_block_primitives_replays() -> None:
    f = conv_func()
    s = Schedule(f)
    s.compute_inline(s.get_block("pad"))
    conv = s.get_block("conv")
    wb = s.cache_write(conv, 0, "local")
    loops = s.get_loops(conv)
    s.reverse_compute_at(wb, loops[2])
    s.decompose_reduction(conv, loops[3])
    t = Trace.from_json(s.trace.to_json())
    assert t.apply(f) == s.func
    same(f, s.func)
    assert isinstance(BlockRV("x"), BlockRV)


@pytest.mark.parametrize("which", [0, 1])
def test_rfactor(which: int) -> None:
    f = mm_relu(20, 12, 8)
    s = Schedule(f)
    c = s.get_block("C")
    i, j, k = s.get_loops(c)
    ko, ki = s.split(k, [None, 5])
    rf_loop = (ko, ki)[which]
    rf = s.rfactor(rf_loop, which)
    s.reorder(rf_loop, s.get_loops(rf)[0])
    s.parallel(rf_loop)  # the factored loop is spatial in the rf block
    same(f, s.func)
    same(f, s.func, vectorize=False)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    with pytest.raises(MlcError, match="bound to reduce iterators only"):
        Schedule(f).rfactor(LoopRV("i"))


def test_random_loop_schedules_keep_results() -> None:
    """Random split / reorder / fuse sequences (imperfect splits included) never change the result."""
    f = mm_relu(13, 10, 6)
    rng = np.random.default_rng(7)
    for _ in range(25):
        s = Schedule(f)
        c = s.get_block("C")
        for _step in range(4):
            loops = s.get_loops(c)
            op = rng.integers(3)
            lp = loops[int(rng.integers(len(loops)))]
            if op == 0:
                s.split(lp, [None, int(rng.integers(1, 6))])
            elif op == 1:
                perm = list(rng.permutation(len(loops)))
                try:
                    s.reorder(*[loops[p] for p in perm])
                except MlcError as e:  # bounds depending on a moved loop are legitimately refused
                    assert "depend" in e.message
            elif len(loops) > 1:
                a = int(rng.integers(len(loops) - 1))
                s.fuse(loops[a], loops[a + 1])
        same(f, s.func)
        assert s.trace.apply(f) == s.func


def test_copy_forks_independently_and_get_blocks() -> None:
    f = mm_relu(24, 12, 16)
    s = Schedule(f, seed=5)
    assert [b.name for b in s.get_blocks()] == ["C", "D"]
    t = s.copy()
    tile_program(s)
    tile_program(t)
    assert s.func == t.func and s.trace == t.trace  # same rng state -> same samples
    u = s.copy()
    u.parallel(u.get_loops(u.get_block("D"))[0])
    assert u.func != s.func and len(u.trace) == len(s.trace) + 3


def test_compute_at_symbolic_and_cache_read_of_intermediate() -> None:
    n = Var("n")
    f = mm_relu(n, 12, 8)
    s = Schedule(f)
    d = s.get_block("D")
    i, j = s.get_loops(d)
    io, ii = s.split(i, [None, 4])
    cr = s.cache_read(d, 0, "local")  # D reads the intermediate C
    s.compute_at(cr, io)
    s.compute_at(s.get_block("C"), io)
    for nv in (1, 7, 8):
        same(f, s.func, {"n": nv})
    with pytest.raises(MlcError, match="runs before block"):
        s2 = Schedule(f)
        s2.cache_write(s2.get_block("C"), 0, "local")
        s2.compute_at(s2.get_block("C_local_wb"), s2.get_loops(s2.get_block("C"))[0])


def _random_step(s: Schedule, rng: np.random.Generator) -> None:
    blocks_ = s.get_blocks()
    b = blocks_[int(rng.integers(len(blocks_)))]
    loops = s.get_loops(b)
    lp = loops[int(rng.integers(len(loops)))] if loops else None
    other = blocks_[int(rng.integers(len(blocks_)))]
    olp = s.get_loops(other)
    op = int(rng.integers(12))
    if op == 0 and lp is not None:
        s.split(lp, [None, int(rng.integers(2, 5))])
    elif op == 1 and len(loops) > 1:
        s.reorder(*[loops[p] for p in rng.permutation(len(loops))])
    elif op == 2:
        s.cache_read(b, int(rng.integers(2)), "local")
    elif op == 3:
        s.cache_write(b, 0, "local")
    elif op == 4 and olp:
        s.compute_at(b, olp[int(rng.integers(len(olp)))])
    elif op == 5 and olp:
        s.reverse_compute_at(b, olp[int(rng.integers(len(olp)))])
    elif op == 6:
        s.compute_inline(b)
    elif op == 7:
        s.reverse_compute_inline(b)
    elif op == 8 and lp is not None:
        s.decompose_reduction(b, lp)
    elif op == 9 and lp is not None:
        s.rfactor(lp, block=b)
    elif op == 10 and lp is not None:
        s.parallel(lp)
    elif op == 11 and lp is not None:
        s.blockize(lp)


@pytest.mark.parametrize("make", [mm_relu, conv_func, softmax_func], ids=["mm", "conv", "softmax"])
def test_random_block_schedules_keep_results(make: Callable[[], PrimFunc]) -> None:
    """Fuzz: random primitive sequences either apply (and keep the result) or refuse without change."""
    f = make()
    rng = np.random.default_rng(11)
    applied = 0
    for _ in range(12):
        s = Schedule(f)
        for _step in range(6):
            before, n = s.func, len(s.trace)
            try:
                _random_step(s, rng)
                applied += 1
            except MlcError:
                assert s.func == before and len(s.trace) >= n
        same(f, s.func)
        assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    assert applied > 20


def _tiled_for_tensorize(f: PrimFunc) -> tuple[Schedule, LoopRV]:
    s = Schedule(f)
    c = s.get_block("C")
    i, j, k = s.get_loops(c)
    io, ii = s.split(i, [None, 4])
    jo, ji = s.split(j, [None, 4])
    ko, ki = s.split(k, [None, 3])
    s.reorder(io, jo, ko, ii, ji, ki)
    s.decompose_reduction(c, ko)
    return s, ii


def test_blockize_and_tensorize_gemm() -> None:
    f = mm_relu(16, 12, 8)
    s, ii = _tiled_for_tensorize(f)
    o = s.tensorize(ii, gemm_intrin(4, 4, 3))
    b = s.get(o)
    assert isinstance(b, BlockStmt) and dict(b.annotations)["tensor_intrin"] == "gemm_4x4x3_f32"
    assert [iv.kind for iv in b.iters] == ["S", "S", "R"]
    same(f, s.func)
    same(f, s.func, vectorize=False)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    s2, ii2 = _tiled_for_tensorize(f)
    with pytest.raises(MlcError, match="do not have the extents"):
        s2.tensorize(ii2, gemm_intrin(4, 4, 4))
    s3 = Schedule(f)
    i, j, k = s3.get_loops(s3.get_block("C"))
    with pytest.raises(MlcError, match="still has an init"):
        s3.tensorize(i, gemm_intrin(20, 8, 12))
    with pytest.raises(MlcError, match="unknown tensor intrinsic"):
        s2.tensorize(ii2, "nope")


def test_tensorize_rejects_a_different_computation() -> None:
    A, B = placeholder("A", (8, 6)), placeholder("B", (6, 8))
    r = reduce_axis(6, "k")
    C = compute("C", (8, 8), lambda i, j: rsum(A[i, r] * B[j, r], r))  # B transposed
    f = build("mmT", [A, B], [C])
    s, ii = _tiled_for_tensorize(f)
    with pytest.raises(MlcError, match="does not match intrinsic"):
        s.tensorize(ii, gemm_intrin(4, 4, 3))


def test_blockize_rejects_unsplittable_binding() -> None:
    f = mm_relu(16, 12, 8)
    s = Schedule(f)
    i, j, k = s.get_loops(s.get_block("C"))
    fused = s.fuse(i, j)
    a, b = s.split(fused, [None, 3])  # 3 does not divide the inner extent 8 of j
    with pytest.raises(MlcError, match="does not split|not tiled evenly"):
        s.blockize(b)
    o = s.blockize(s.get_loops(s.get_block("C"))[-1])  # blockizing the reduction loop alone is fine
    same(f, s.func)
    assert s.get(o).iters[-1].kind == "R"  # type: ignore[union-attr]


def test_scheduled_program_round_trips_through_text() -> None:
    """Every construct the primitives emit (guards, annotations, thread loops, nested blocks) prints and parses."""
    from mlc.ir import Module
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module

    f = mm_relu(16, 12, 8)
    s, ii = _tiled_for_tensorize(f)
    s.tensorize(ii, gemm_intrin(4, 4, 3))
    a = s.cache_read(s.get_block("D"), 0, "shared")
    s.storage_align(a, 0, 0, 32, 8)
    io, _ = s.split(s.get_loops(s.get_block("D"))[0], [None, 5])
    s.parallel(io)
    s.bind(s.get_loops(s.get_block("D"))[-1], "threadIdx.x")
    m = Module((s.func,))
    text = print_module(m)
    assert parse_module(text) == m and print_module(parse_module(text)) == text
    same(f, parse_module(text).functions[0])  # type: ignore[arg-type]


def test_trace_with_bad_arguments_is_a_clean_error() -> None:
    f = mm_relu()
    good = Schedule(f)
    good.split(good.get_loops(good.get_block("C"))[0], [4, 5])
    data = json.loads(good.trace.to_json())
    data["insts"][-1]["inputs"][1] = ["four", 5]
    with pytest.raises(MlcError, match=r"instruction 2 \(split\) has bad arguments"):
        Trace.from_json(json.dumps(data)).apply(f)
    data["insts"][-1]["inputs"] = [{"loop": "i"}, [{"rv": "v9"}, 5]]
    with pytest.raises(MlcError, match="v9 used before it is sampled"):
        Trace.from_json(json.dumps(data)).apply(f)


def test_normalize_wraps_root_and_renames_duplicate_loops() -> None:
    from mlc.ir import Const, IterVar, Load, Seq, Store
    from mlc.ir.tir import Buffer

    X, Y = Buffer("X", (Const(4),), "f32"), Buffer("Y", (Const(4),), "f32")
    i, v = Var("i"), Var("v")
    nest1 = For(i, Const(0), Const(4), BlockStmt("a", (IterVar(v, Const(4), "S", i),), Store(Y, (v,), Load(X, (v,)))))
    nest2 = For(i, Const(0), Const(4), BlockStmt("b", (IterVar(v, Const(4), "S", i),),
                                                  Store(Y, (v,), Load(Y, (v,)) * Const(2.0, "f32"))))
    f = PrimFunc("two", (X, Y), 1, Seq((nest1, nest2)))
    s = Schedule(f)
    assert isinstance(s.func.body, BlockStmt) and s.func.body.name == "root"
    assert [lp.name for lp in s.get_loops(s.get_block("a")) + s.get_loops(s.get_block("b"))] == ["i", "i_1"]
    same(f, s.func)
    dup = PrimFunc("dup", (X, Y), 1, Seq((nest1, nest1)))
    with pytest.raises(MlcError, match="block names must be unique"):
        Schedule(dup)


def test_producers_consumers_and_str() -> None:
    s = Schedule(softmax_func())
    names = lambda rvs: [r.name for r in rvs]  # noqa: E731
    assert names(s.get_producers(s.get_block("y"))) == ["e", "s"]
    assert names(s.get_consumers(s.get_block("e"))) == ["s", "y"]
    assert names(s.get_consumers(s.get_block("y"))) == [] and names(s.get_producers(s.get_block("mx"))) == []
    text = str(s)
    assert 'block "mx"' in text and text.startswith("mlc.module")


# ---- layout: pack and compact ------------------------------------------------------------------
def _tiled_matmul(n: int = 16, k: int = 12, m: int = 8) -> tuple[PrimFunc, Schedule]:
    """C = A @ B with a 4 x 4 accumulator tile written back under the tile loop."""
    f = matmul_func(n, k, m)
    s = Schedule(f)
    c = s.get_block("C")
    i, j, r = s.get_loops(c)
    io, ii = s.split(i, [None, 4])
    jo, ji = s.split(j, [None, 4])
    s.reorder(io, jo, r, ii, ji)
    wb = s.cache_write(c, 0, "local")
    s.reverse_compute_at(wb, jo)
    return f, s


def test_pack_keeps_results_and_makes_panels_contiguous() -> None:
    f, s = _tiled_matmul()
    c = s.get_block("C")
    bp = s.pack(c, 1, [1, 4], [1, 0, 2])  # B[k, j] -> B_packed[j // 4, k, j % 4]
    ap = s.pack(c, 0, [4, 1], [0, 2, 1])  # A[i, k] -> A_packed[i // 4, k, i % 4]
    same(f, s.func)
    allocs = {b.name: tuple(int(d.value) for d in b.shape) for b in s.func.body.alloc_buffers}  # type: ignore[attr-defined]
    assert allocs["B_packed"] == (2, 12, 4) and allocs["A_packed"] == (4, 12, 4)
    s.parallel(s.get_loops(bp)[0])
    s.vectorize(s.get_loops(bp)[-1])
    s.unroll(s.get_loops(ap)[-1])
    same(f, s.func)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func


def test_pack_rejects_bad_layouts() -> None:
    f, s = _tiled_matmul()
    c = s.get_block("C")
    with pytest.raises(MlcError, match="index 5 is out of range"):
        s.pack(c, 5, [1, 4], [1, 0, 2])
    with pytest.raises(MlcError, match="not a multiple of tile 5"):
        s.pack(c, 1, [1, 5], [1, 0, 2])
    with pytest.raises(MlcError, match="not a permutation"):
        s.pack(c, 1, [1, 4], [1, 1, 2])
    with pytest.raises(MlcError, match="one tile >= 1 per axis"):
        s.pack(c, 1, [4], [0, 1])
    before = s.func
    with pytest.raises(MlcError, match="not a multiple"):
        s.pack(c, 0, [5, 1], [0, 2, 1])
    assert s.func == before  # a failed primitive changes nothing
    g = mm_relu()
    s2 = Schedule(g)
    s2.reverse_compute_at(s2.get_block("D"), s2.get_loops(s2.get_block("C"))[1])
    with pytest.raises(MlcError, match="producer C of C shares a loop nest"):
        s2.pack(s2.get_block("D"), 0, [2, 1], [0, 2, 1])


def test_compact_shrinks_the_accumulator_to_the_tile() -> None:
    f, s = _tiled_matmul()
    c = s.get_block("C")
    scope_block = s.compact(c, 0)
    same(f, s.func)
    assert not any(b.name == "C_local" for b in s.func.body.alloc_buffers)  # type: ignore[attr-defined]
    blk = s.get(scope_block)
    assert isinstance(blk, BlockStmt)
    assert [tuple(int(d.value) for d in b.shape) for b in blk.alloc_buffers] == [(4, 4)]  # type: ignore[attr-defined]
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    # packing after compaction still works (and the other way round is exercised by the rules)
    s.pack(c, 1, [1, 4], [1, 0, 2])
    same(f, s.func)


def test_compact_preconditions() -> None:
    f, s = _tiled_matmul()
    with pytest.raises(MlcError, match="C is a function parameter"):
        s.compact(s.get_block("C_local_wb"), 0)
    with pytest.raises(MlcError, match="index 3 is out of range"):
        s.compact(s.get_block("C"), 3)
    # an unmoved write-back: only the root encloses every use
    s2 = Schedule(matmul_func(16, 12, 8))
    s2.cache_write(s2.get_block("C"), 0, "local")
    with pytest.raises(MlcError, match="no loop encloses every access of C_local"):
        s2.compact(s2.get_block("C"), 0)
    # a 3-row tile (not a power of two) is still aligned at rows 3 * io: indexed modulo 3
    s3 = Schedule(matmul_func(12, 4, 8))
    c = s3.get_block("C")
    i, j, r = s3.get_loops(c)
    io, ii = s3.split(i, [None, 3])
    wb = s3.cache_write(c, 0, "local")
    s3.reverse_compute_at(wb, io)
    s3.compact(c, 0)  # 3 x 8 tile at rows 3 * io: aligned, fine
    same(matmul_func(12, 4, 8), s3.func)


def test_compute_at_refuses_a_loop_whose_blocks_overwrite_its_input() -> None:
    """Softmax over axis 0, divided in place: the column sum read by the division may not move under
    the division's row loop, since it would re-read rows that earlier iterations already divided."""
    from mlc.ir.expr import Bin, Call, Const
    from mlc.ir.tir_builder import Builder

    b = Builder(set())
    x = b.placeholder((Const(3), Const(4)), "f32", "x")
    e = b.compute(x.shape, "f32", lambda i: Call("exp", (x.at(i),), "f32"), "exp")
    tot = b.reduce((Const(4),), "f32", "add", (Const(3),), lambda i, r: e.at((r[0], i[0])), "sum")
    b.output(b.in_place(e, lambda i, v: Bin("div", v, tot.at((i[1],))), "div"))
    f = b.build("softmax0")
    s = Schedule(f)
    rows = s.get_loops(s.get_block("div"))[0]
    with pytest.raises(MlcError, match="interleaved with block div, which also accesses"):
        s.compute_at(s.get_block("sum"), rows)
    xv = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    out = np.zeros((3, 4), np.float32)
    run_prim(s.func, [xv, out])
    ref = np.exp(xv) / np.exp(xv).sum(axis=0)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
