"""A-Tree search: exhaustive at full beam (any depth, compiled or numpy), the nodes a narrow beam
keeps match an independent float64 oracle, and the IR program's interpreter agrees with its
compiled code."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ann import program
from mlc.ann.atree import DECODE_BEAM, KERNEL_SELECT, ATree
from mlc.ann.index import AnnIndex
from mlc.ann.search import add_biases, table_sum, topk
from scipy.spatial.distance import cdist


@pytest.fixture(scope="module", params=["pq", "rvq"])
def index(request: pytest.FixtureRequest) -> AnnIndex:
    rng = np.random.default_rng(1)
    # the last dimensions carry the most variance, so the tree must reorder PQ's sub-codebooks
    x = (rng.standard_normal((2500, 12)) * np.linspace(0.5, 2, 12)).astype(np.float32)
    x[50:120] = x[7]  # identical codes: distance ties broken by id
    return AnnIndex.build(x, request.param, 4, 16, beam=2)


def _queries(n: int = 25) -> np.ndarray:
    return (np.random.default_rng(5).standard_normal((n, 12)) * np.linspace(0.5, 2, 12)).astype(np.float32)


def _exhaustive(index: AnnIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qz = index.quantizer
    full = add_biases(table_sum(qz.luts(q), index.codes), qz.query_bias(q), index.vector_bias)
    return (*topk(full, k), full)


@pytest.mark.parametrize("min_fanin", [8, 2, 1])
def test_full_beam_equals_exhaustive_at_any_depth(index: AnnIndex, min_fanin: int) -> None:
    qz = index.quantizer
    q = _queries()
    at = ATree.build(index.codes, qz.codebooks, index.vector_bias, additive=qz.method != "pq", min_fanin=min_fanin)
    assert at.depth >= (1 if min_fanin == 8 else 2)
    luts, qb = qz.luts(q), qz.query_bias(q)
    want_i, want_d, _ = _exhaustive(index, q, 40)
    assert (want_d[:, :-1] == want_d[:, 1:]).any()  # the duplicates do tie
    for compiled in (True, False):
        ids, d = at.search(luts, qb, 40, at.max_width(), compiled=compiled)
        assert np.array_equal(ids, want_i) and np.array_equal(d, want_d)


@pytest.mark.parametrize("min_fanin", [8, 2])
def test_compiled_equals_numpy_and_scores_are_exact(index: AnnIndex, min_fanin: int) -> None:
    qz = index.quantizer
    q = _queries()
    at = ATree.build(index.codes, qz.codebooks, index.vector_bias, additive=qz.method != "pq", min_fanin=min_fanin)
    luts, qb = qz.luts(q), qz.query_bias(q)
    _, _, full = _exhaustive(index, q, 1)
    for beam in (1, 2, KERNEL_SELECT, KERNEL_SELECT + 1, 13):
        a = at.search(luts, qb, 12, beam, compiled=True)
        b = at.search(luts, qb, 12, beam, compiled=False)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        ok = a[0] >= 0
        assert np.array_equal(a[1][ok], np.take_along_axis(full, np.where(ok, a[0], 0), 1)[ok])


def test_tree_levels_follow_codebook_variance(index: AnnIndex) -> None:
    qz = index.quantizer
    at = index.atree()
    var = [np.var(qz.codebooks[m][index.codes[:, m]], axis=0).sum() for m in range(qz.M)]
    assert list(at.tree.books) == list(np.argsort(-np.asarray(var), kind="stable"))
    if qz.method == "pq":
        assert at.tree.books[0] == qz.M - 1  # the high-variance dimensions come last in this data


def test_narrow_beam_keeps_the_oracle_nodes() -> None:
    """Depth 1 over RVQ: the kept nodes are the `beam` codewords of the first tree codebook nearest
    the query (float64 cdist oracle), and the result is the exact top-k of the vectors under them,
    by the table path (bit-exact ADC) and by the decoded path (ADC up to float rounding)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    index = AnnIndex.build(x, "rvq", 3, 32)
    qz, at = index.quantizer, index.atree()
    assert at.depth == 1
    q = rng.standard_normal((40, 16)).astype(np.float32)
    luts, qb = qz.luts(q), qz.query_bias(q)
    b0 = at.tree.books[0]
    used = np.unique(index.codes[:, b0])
    oracle = cdist(q.astype(np.float64), qz.codebooks[b0][used].astype(np.float64), "sqeuclidean")
    _, _, full = _exhaustive(index, q, 1)
    checked = 0
    for beam in (1, 3, DECODE_BEAM, 6, 11):
        ids, d = at.search(luts, qb, 10, beam)
        dec = at.search_decoded(q, qb, 10, beam)
        assert dec is not None
        assert np.array_equal(index.search(q, 10, "atree", beam=beam)[0], dec[0] if beam <= DECODE_BEAM else ids)
        order = np.sort(oracle, 1)
        for r in range(len(q)):
            if order[r, beam] - order[r, beam - 1] < 1e-3 * order[r, beam]:
                continue  # a near tie at the beam's edge: float32 may keep either node
            keep = used[np.argsort(oracle[r])[:beam]]
            under = np.isin(index.codes[:, b0], keep)
            want_i, want_d = topk(np.where(under, full[r], np.inf)[None], 10)
            assert np.array_equal(ids[r], want_i[0]) and np.array_equal(d[r], want_d[0])
            gap = np.diff(want_d[0])
            if (gap[np.isfinite(gap)] > 1e-4 * np.abs(want_d[0]).max()).all():  # no near ties in distance
                assert np.array_equal(dec[0][r], want_i[0])
            ok = want_i[0] >= 0
            assert np.allclose(dec[1][r][ok], want_d[0][ok], rtol=1e-5, atol=1e-4)
            checked += 1
    assert checked > 150
    full_d = _exhaustive(index, q, 10)[1]
    assert at.search_decoded(q, qb, 10, at.max_width()) is None  # the full beam stays on the exact tables
    assert np.array_equal(index.search(q, 10, "atree")[1], full_d)


def test_atree_program_interpreted_equals_compiled(index: AnnIndex) -> None:
    """The emitted `ann_search_atree` IR: the reference interpreter agrees with the native code."""
    from mlc.ir.module import Module
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module
    from mlc.ir.tir_interp import run_prim

    qz, at = index.quantizer, index.atree()
    q = _queries(4)
    luts, qb = qz.luts(q), qz.query_bias(q)
    t = at.tree
    last, beam, k = at.depth - 1, 3, 5
    f = program.atree_func(qz.M, qz.K, k, t.books[last])
    text = print_module(Module((f,)))
    assert parse_module(text).get("ann_search_atree") == f
    par, part = at.frontier(luts, beam)
    args = [luts, at.codes, at.vector_bias, t.order, t.row_start[last], qb, par, part, at.child_start(last),
            t.codes[last], at.node_bias[last]]
    outs = [np.empty((4, beam), np.float32), np.empty((4, beam), np.int64), np.empty((4, k), np.float32),
            np.empty((4, k), np.int64)]
    run_prim(f, [*args, *outs])
    want = at.search(luts, qb, k, beam, compiled=False)
    assert np.array_equal(outs[3], want[0]) and np.array_equal(outs[2], want[1])


def test_decoded_program_interpreted_equals_compiled(index: AnnIndex) -> None:
    """`ann_search_atree_decoded` (rows scored from the codewords, in vector lanes): the reference
    interpreter and the native code agree, and both agree with the table sums up to rounding."""
    from mlc.ir.tir_interp import run_prim

    qz, at = index.quantizer, index.atree()
    if qz.method == "pq":
        assert at.search_decoded(_queries(2), np.zeros(2, np.float32), 5, 1) is None
        return
    q = _queries(4)
    qb, luts = qz.query_bias(q), qz.luts(q)
    t, b0, beam, k = at.tree, at.tree.books[0], 3, 5
    lut0 = np.ascontiguousarray(luts[:, b0])
    rows = (at.codes, at.vector_bias, t.order, t.row_start[0])
    nodes = (at.child_start(0), t.codes[0], at.node_bias[0])
    got = program.run_atree_decoded(lut0, q, qz.codebooks, qb, k, beam, b0, rows, nodes)
    if got is None:
        pytest.skip("no native codegen on this machine")
    f = program.atree_func(qz.M, qz.K, k, b0, "u8", True, qz.dim)
    outs = [np.empty((4, beam), np.float32), np.empty((4, beam), np.int64), np.empty(program._lanes(qz.dim), np.float32),
            np.empty((4, k), np.float32), np.empty((4, k), np.int64)]
    run_prim(f, [lut0[:, None], *rows, qb, np.zeros((4, 1), np.int64), np.zeros((4, 1), np.float32), *nodes, q,
                 qz.codebooks, *outs])
    assert np.allclose(outs[3], got[1], rtol=1e-5, atol=1e-4)
    _, _, full = _exhaustive(index, q, 1)
    ok = got[0] >= 0
    assert ok.any() and np.allclose(got[1][ok], np.take_along_axis(full, np.where(ok, got[0], 0), 1)[ok],
                                    rtol=1e-5, atol=1e-4)
