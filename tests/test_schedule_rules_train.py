"""CPU default schedules of the kernels a training step adds: matmuls with a transposed operand and
batch dims (dX = dY @ W, dK = dS^T @ Q), symbolic rows (batch x time), weight and bias gradients
summed over the rows, short reductions over a symbolic lane loop (attention scores).

Every schedule is run by the TIR interpreter against the unscheduled program on random inputs
(odd and prime sizes, several values of the symbolic dims), replays from its trace, and has the
structure that makes it fast (asserted on the program, never timed here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlc.ir import PrimFunc, arith
from mlc.ir.expr import Var, free_vars
from mlc.ir.tir import BlockStmt, For, IfStmt
from mlc.ir.tir_builder import build, compute, exp, placeholder, reduce_axis, rsum
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.tir_visit import loads_in, walk
from mlc.passes.schedule import Trace
from mlc.passes.schedule.rules import TargetInfo, default_schedule

CPU = TargetInfo(lanes=8, cores=2)
B, T = Var("B", "i64"), Var("T", "i64")


def check(orig: PrimFunc, new: PrimFunc, **dims: int) -> None:
    rng = np.random.default_rng(sum(dims.values()))
    args = [rng.standard_normal(tuple(arith.evaluate(d, dims) for d in b.shape)).astype(np.float32)
            for b in orig.params]
    ref, got = [a.copy() for a in args], [a.copy() for a in args]
    run_prim(orig, ref, dims)
    run_prim(new, got, dims)
    for r, g in zip(ref[-orig.num_outputs:], got[-orig.num_outputs:]):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def scheduled(f: PrimFunc, *dim_sets: dict[str, int]) -> PrimFunc:
    s = default_schedule(f, CPU)
    for dims in dim_sets or ({},):
        check(f, s.func, **dims)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    return s.func


def loops(f: PrimFunc) -> list[For]:
    return [s for _, s in walk(f.body) if isinstance(s, For)]


def allocs(f: PrimFunc) -> dict[str, tuple[int | None, ...]]:
    """Every allocated buffer (root and tile scopes) -> its shape (None: symbolic)."""
    return {x.name: tuple(arith.as_int(d) for d in x.shape)
            for _, b in walk(f.body) if isinstance(b, BlockStmt) for x in b.alloc_buffers}


def readers(f: PrimFunc, name: str) -> set[str]:
    from mlc.ir.tir_visit import loads_in, stmt_exprs
    return {b.name for _, b in walk(f.body) if isinstance(b, BlockStmt) and b.name != "root" and not any(
        isinstance(x, BlockStmt) for _, x in walk(b.body))
        and any(ld.buffer.name == name for e in stmt_exprs(b.body) for ld in loads_in(e))}


def nt_matmul(rows: tuple[object, ...], k: int, m: int) -> PrimFunc:
    """C[*rows, j] = sum_k A[*rows, k] * W[j, k] (the data gradient dX = dY @ W^T's operand order)."""
    A, W = placeholder("A", (*rows, k)), placeholder("W", (m, k))
    r = reduce_axis(k, "k")
    C = compute("C", (*rows, m), lambda *ix: rsum(A[(*ix[:-1], r)] * W[ix[-1], r], r))
    return build("nt", [A, W], [C])


@pytest.mark.parametrize("n,k,m", [(24, 16, 32), (13, 7, 48), (5, 11, 17)])
def test_transposed_operand_is_packed_into_contiguous_panels(n: int, k: int, m: int) -> None:
    f = scheduled(nt_matmul((n,), k, m))
    w = 2 * CPU.lanes
    if m % w == 0:
        # the lanes run over W's rows, a row stride apart: W is packed Wp[j // w, k, j % w]
        assert allocs(f)["W_packed"] == (m // w, k, w)
        assert readers(f, "W") == {"W_pack"}
    assert any(lp.kind == "vectorized" for lp in loops(f)) and any(lp.kind == "parallel" for lp in loops(f))


@pytest.mark.parametrize("m", [128, 48, 20])
def test_symbolic_rows_get_a_wide_register_tile_in_registers(m: int) -> None:
    orig = nt_matmul((B, T), 32, m)
    f = scheduled(orig, {"B": 3, "T": 5}, {"B": 2, "T": 1}, {"B": 1, "T": 7})
    # a 4-row tile over the symbolic T (guarded in block form) x one vector pair of columns, kept in
    # a 4 x 16 accumulator tile; lower-tir's loop partition runs the rows of whole tiles without the
    # guard, so the reduction of the main part has none and its accumulators can stay in registers.
    # 20 columns, no multiple of the vector: one row, one 20-lane tile (not gcd(20, 16) = 4 lanes)
    cols, rows = {128: (16, 4), 48: (16, 4), 20: (20, 1)}[m]
    assert [s for n, s in allocs(f).items() if n.endswith("_tile")] == [(1, rows, cols)]
    assert any(lp.kind == "vectorized" and arith.as_int(lp.extent) == cols for lp in loops(f))
    low = lower_tir_func(f)
    red = [lp for lp in loops(low) if lp.var.name == "k_0"]
    assert len(red) == (2 if rows > 1 else 1)
    assert not any(isinstance(x, IfStmt) for _, x in walk(red[0].body))
    for dims in ({"B": 3, "T": 5}, {"B": 2, "T": 1}, {"B": 1, "T": 9}, {"B": 2, "T": 8}):
        check(orig, low, **dims)
    if m % (2 * CPU.lanes) == 0 and m > 2 * CPU.lanes:
        assert "W_packed" in allocs(f)


def test_batched_transposed_matmuls_of_attention_backward() -> None:
    # dQ[b, i, d] = sum_j dS[b, i, j] * K[b, j, d] and dK[b, d, j] = sum_i Q[b, i, d] * dS[b, i, j]
    # (T symbolic: the contiguous axis of dK is symbolic, no register tile; the reduction over T
    # runs outside a vector loop over j)
    dS, K = placeholder("dS", (B, T, T)), placeholder("K", (B, T, 8))
    r = reduce_axis(T, "k")
    dQ = compute("dQ", (B, T, 8), lambda b, i, d: rsum(dS[b, i, r] * K[b, r, d], r))
    check_f = build("dq", [dS, K], [dQ])
    scheduled(check_f, {"B": 2, "T": 5}, {"B": 3, "T": 17})
    Q = placeholder("Q", (B, T, 8))
    r2 = reduce_axis(T, "k")
    dK = compute("dK", (B, 8, T), lambda b, d, j: rsum(Q[b, r2, d] * dS[b, r2, j], r2))
    f = scheduled(build("dk", [Q, dS], [dK]), {"B": 2, "T": 5}, {"B": 3, "T": 17})
    vec = [lp for lp in loops(f) if lp.kind == "vectorized" and arith.as_int(lp.extent) is None]
    red = [lp for lp in loops(f) if lp.var.name.startswith("k")]
    assert vec and red and any(v is x for r in red for _, x in walk(r.body) for v in vec)
    assert not any(isinstance(x, IfStmt) for _, x in walk(f.body))


@pytest.mark.parametrize("shape,axes", [((B, 7, 48), 1), ((B, T, 37), 2), ((B, T, 128), 2), ((B, 5, T), 1)])
def test_sums_over_leading_rows_vectorize_down_the_columns(shape: tuple[object, ...], axes: int) -> None:
    # weight gradients summed over the batch, bias gradients over batch x time: each output vector
    # is accumulated over the rows with contiguous loads, the reduce loops outside the vector loop
    X = placeholder("X", shape)
    rs = [reduce_axis(shape[d], f"k{d}") for d in range(axes)]
    out = compute("S", shape[axes:], lambda *ix: rsum(X[(*[r for r in rs], *ix)], rs))
    f = scheduled(build("colsum", [X], [out]), {"B": 3, "T": 5}, {"B": 1, "T": 2}, {"B": 4, "T": 19})
    red = [lp for lp in loops(f) if lp.var.name.startswith("k")]
    vec = [x for r in red for _, x in walk(r.body) if isinstance(x, For) and x.kind == "vectorized"]
    assert vec and all(not any(v.name.startswith("k") for v in free_vars(x.extent)) for x in vec)
    if len(shape) - axes > 1 or arith.as_int(shape[-1]) is not None:
        assert any(lp.kind == "parallel" for lp in loops(f))


@pytest.mark.parametrize("keys_minor", [True, False])
def test_short_reduction_stays_inside_a_symbolic_vector_loop(keys_minor: bool) -> None:
    # attention scores S[b, i, j] = sum_{d<8} Q[b, i, d] * K[b, j, d] (or K^T[b, d, j]): the key
    # loop is vectorized whole (the codegen strip-mines it, no lane masks) around the unrolled d
    Q = placeholder("Q", (B, T, 8))
    K = placeholder("K", (B, T, 8) if keys_minor else (B, 8, T))
    d = reduce_axis(8, "d")
    S = compute("S", (B, T, T), lambda b, i, j: rsum(Q[b, i, d] * (K[b, j, d] if keys_minor else K[b, d, j]), d))
    f = scheduled(build("scores", [Q, K], [S]), {"B": 2, "T": 5}, {"B": 3, "T": 17}, {"B": 1, "T": 1})
    vec = [lp for lp in loops(f) if lp.kind == "vectorized" and arith.as_int(lp.extent) is None]
    assert any(x.kind == "unrolled" and arith.as_int(x.extent) == 8 for v in vec for _, x in walk(v.body)
               if isinstance(x, For))
    assert not any(isinstance(x, IfStmt) for _, x in walk(f.body))
    assert ("K_packed" in allocs(f)) == keys_minor  # keys a row apart per lane are packed key-minor


def test_symbolic_elementwise_loop_is_vectorized_whole() -> None:
    X = placeholder("X", (B, T))
    Y = compute("Y", (B, T), lambda b, t: exp(X[b, t]))
    f = scheduled(build("ew", [X], [Y]), {"B": 2, "T": 5}, {"B": 3, "T": 19})
    assert any(lp.kind == "vectorized" and arith.as_int(lp.extent) is None for lp in loops(f))
    assert not any(isinstance(x, IfStmt) for _, x in walk(f.body))


@pytest.mark.parametrize("heads,d", [(4, 8), (3, 8), (5, 12)])
def test_narrow_products_tile_rows_over_the_heads(heads: int, d: int) -> None:
    # P @ V of attention (and its gradients): [B, heads, T, T] x [B, heads, T, d] with d one vector
    # wide and the rows symbolic: the register tile's rows run over the heads (constant), so several
    # accumulators chain their FMAs; V, already one panel wide, is not copied
    P, V = placeholder("P", (B, heads, T, T)), placeholder("V", (B, heads, T, d))
    r = reduce_axis(T, "k")
    Out = compute("O", (B, heads, T, d), lambda b, h, i, j: rsum(P[b, h, i, r] * V[b, h, r, j], r))
    f = scheduled(build("pv", [P, V], [Out]), {"B": 2, "T": 5}, {"B": 1, "T": 13}, {"B": 3, "T": 1})
    tiles = [s for n, s in allocs(f).items() if n.endswith("_tile")]
    rows = math.gcd(heads, 4)
    assert tiles == [(1, rows, 1, d)]  # d = 12: one 12-lane tile
    if rows > 1:
        assert any(lp.kind == "unrolled" and arith.as_int(lp.extent) == rows for lp in loops(f))
    assert "V_packed" not in allocs(f)
    assert not any(isinstance(x, IfStmt) for _, x in walk(f.body))


def test_concat_of_head_pieces_unrolls_its_few_vectors_per_row() -> None:
    # the q/k/v cotangent concat of attention's backward ([B, 4, T, 8] pieces, one of them [B, 4, 8, T])
    # into [B, T, 96]: the 12 vectors of a row run unrolled, so each copy's floordiv(j, 8) and branch
    # tests are constants and its loads contiguous (gathers before: 423 -> 60 us at B=32, T=64)
    from mlc.ir.tir_builder import cmp, maximum, minimum, select
    from mlc.runtime.cpu import compile_module

    Q, K, V = placeholder("Q", (B, 4, T, 8)), placeholder("K", (B, 4, 8, T)), placeholder("V", (B, 4, T, 8))

    def head(j: object, lo: int) -> object:  # clamped: the arm not taken must stay in bounds
        return minimum(maximum((j - lo) // 8, 0), 3)

    def piece(b: object, t: object, j: object) -> object:
        return select(cmp("lt", j, 32), Q[b, head(j, 0), t, j % 8],
                      select(cmp("lt", j, 64), K[b, head(j, 32), (j - 32) % 8, t], V[b, head(j, 64), t, (j - 64) % 8]))

    C = compute("C", (B, T, 96), piece)
    orig = build("concat", [Q, K, V], [C])
    f = scheduled(orig, {"B": 2, "T": 5}, {"B": 1, "T": 3})
    vec = [lp for lp in loops(f) if lp.kind == "vectorized"]
    assert [arith.as_int(v.extent) for v in vec] == [8]
    assert any(lp.kind == "unrolled" and arith.as_int(lp.extent) == 12 and vec[0] in [x for _, x in walk(lp.body)]
               for lp in loops(f))
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((3, 4, 7, 8), (3, 4, 8, 7), (3, 4, 7, 8)))
    out = np.empty((3, 7, 96), np.float32)
    compile_module([f]).kernel(f.name)([q, k, v, out])
    ref = np.concatenate([x.transpose(0, 2, 1, 3).reshape(3, 7, 32) for x in (q, k.transpose(0, 1, 3, 2), v)], -1)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("heads", [4, 3])
def test_operand_read_down_its_columns_is_packed_transposed(heads: int) -> None:
    # dV[b, h, i, d] = sum_k P[b, h, k, i] * dO[b, h, k, d]: P's reduction runs a row apart (T
    # floats, a power of two in practice: the rows fall into few cache sets); the packed copy has
    # P's last two axes swapped, so each row's reduction reads it contiguously
    P, dO = placeholder("P", (B, heads, T, T)), placeholder("dO", (B, heads, T, 8))
    r = reduce_axis(T, "k")
    dV = compute("dV", (B, heads, T, 8), lambda b, h, i, d: rsum(P[b, h, r, i] * dO[b, h, r, d], r))
    f = scheduled(build("dv", [P, dO], [dV]), {"B": 2, "T": 5}, {"B": 1, "T": 11}, {"B": 2, "T": 1})
    assert allocs(f)["P_packed"] == (None, heads, None, None)
    assert readers(f, "P") == {"P_pack"} and "dO_packed" not in allocs(f)
    pack = [b for _, b in walk(f.body) if isinstance(b, BlockStmt) and b.name == "P_pack"][0]
    from mlc.ir.tir import Store
    st = [x for _, x in walk(pack.body) if isinstance(x, Store)][0]
    src = [ld for ld in loads_in(st.value) if ld.buffer.name == "P"][0]
    assert list(src.indices) == [st.indices[0], st.indices[1], st.indices[3], st.indices[2]]


@pytest.mark.parametrize("m", [10, 3, 21])
def test_narrow_output_row_is_one_vector_tile(m: int) -> None:
    # mlp's logits (N x 64 @ 64 x 10, N symbolic): the 10 columns are one vector tile (the codegen
    # splits <10 x f32>), not gcd(10, 16) = 2 lanes with 5 tiles per row; one row (4 rows of odd
    # vectors: LLVM scalarizes the accumulators)
    N = Var("N", "i64")
    A, W = placeholder("A", (N, 64)), placeholder("W", (64, m))
    r = reduce_axis(64, "k")
    C = compute("C", (N, m), lambda i, j: rsum(A[i, r] * W[r, j], r))
    f = scheduled(build("logits", [A, W], [C]), {"N": 1}, {"N": 7})
    assert [s for n, s in allocs(f).items() if n.endswith("_tile")] == [(1, m)]
    assert "W_packed" not in allocs(f)
    assert any(lp.kind == "vectorized" and arith.as_int(lp.extent) == m for lp in loops(f))
    from mlc.runtime.cpu import compile_module

    rng = np.random.default_rng(m)
    a, w = rng.standard_normal((9, 64)).astype(np.float32), rng.standard_normal((64, m)).astype(np.float32)
    out = np.empty((9, m), np.float32)
    compile_module([lower_tir_func(f)]).kernel(f.name)([a, w, out])
    np.testing.assert_allclose(out, a.astype(np.float64) @ w, rtol=1e-4, atol=1e-4)


def test_row_statistics_read_once_are_not_transposed() -> None:
    # layer-norm statistics of [B, T, 32] rows, computed under their consumer's batch loop: vectorizing
    # across the T rows would need X transposed (a row apart per lane), a copy read only once; the
    # rows reduce in place instead (gpt_block's layer norms: 83 -> 37-45 us at B=32, T=64)
    X = placeholder("X", (B, T, 32))
    c = reduce_axis(32, "c")
    S = compute("S", (B, T), lambda b, t: rsum(X[b, t, c], c))
    Y = compute("Y", (B, T, 32), lambda b, t, j: X[b, t, j] - S[b, t] * 0.03125)
    f = scheduled(build("center", [X], [Y]), {"B": 2, "T": 5}, {"B": 3, "T": 17})
    assert "X_packed" not in allocs(f) and readers(f, "X") == {"S", "Y"}
    assert any(lp.kind == "vectorized" for lp in loops(f)) and any(lp.kind == "parallel" for lp in loops(f))
