"""Search: E-Tree/E-Forest identical to the flat scan, A-Tree at full beam equals exhaustive ADC,
the emitted IR program agrees with numpy, and `eval` recall matches a brute-force check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlc.ann import program
from mlc.ann.etree import EForest
from mlc.ann.index import AnnIndex
from mlc.ann.io import read_vectors, write_vectors
from mlc.ann.search import add_biases, table_sum, topk
from mlc.cli.ann import ann_index
from scipy.spatial.distance import cdist

DATA = Path(__file__).parent / "data" / "ann"


@pytest.fixture(scope="module")
def sift() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (read_vectors(DATA / "sift5k_base.fvecs"), read_vectors(DATA / "sift5k_query.fvecs"),
            read_vectors(DATA / "sift5k_groundtruth.ivecs"))


@pytest.fixture(scope="module", params=["pq", "rvq"])
def index(request: pytest.FixtureRequest) -> AnnIndex:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 12)) * np.linspace(2, 0.5, 12)).astype(np.float32)
    # duplicated and prefix-sharing vectors so the trees really share nodes and ties occur
    x[100:200] = x[0]
    return AnnIndex.build(x, request.param, 4, 8, beam=2, keep_base=True)


def _queries(n: int = 20, d: int = 12) -> np.ndarray:
    return np.random.default_rng(9).standard_normal((n, d)).astype(np.float32)


def test_etree_bit_identical_and_eforest_same_results(index: AnnIndex) -> None:
    q = _queries()
    luts = index.quantizer.luts(q)
    flat = table_sum(luts, index.codes)
    tree = index.forest(1)
    assert tree.nodes() < index.size * index.quantizer.M  # prefixes are shared
    assert np.array_equal(tree.table_sum(luts), flat)
    for groups in (2, 3, 4):
        assert np.allclose(index.forest(groups).table_sum(luts), flat, rtol=1e-6, atol=1e-5)
    ids_flat, d_flat = index.search(q, 50, "flat")
    for mode in ("etree", "eforest"):
        ids, d = index.search(q, 50, mode)
        assert np.array_equal(ids, ids_flat)
        assert np.allclose(d, d_flat, rtol=1e-6, atol=1e-5)


def test_flat_scan_matches_brute_force_on_reconstructions(index: AnnIndex) -> None:
    q = _queries()
    ids, d = index.search(q, 10, "flat")
    rec = index.quantizer.decode(index.codes).astype(np.float64)
    exact = cdist(q.astype(np.float64), rec, "sqeuclidean")
    assert np.allclose(d, np.take_along_axis(exact, ids, 1), rtol=1e-4, atol=1e-3)
    assert np.allclose(d[:, -1], np.sort(exact, 1)[:, 9], rtol=1e-4, atol=1e-3)


def test_atree_full_beam_equals_exhaustive(index: AnnIndex) -> None:
    q = _queries()
    ids_flat, d_flat = index.search(q, 30, "flat")
    ids, d = index.search(q, 30, "atree", beam=index.atree().max_width())
    assert np.array_equal(ids, ids_flat) and np.array_equal(d, d_flat)
    # a narrow beam returns a subset scored exactly, and recall of the flat top-10 grows with the beam
    hits = []
    for beam in (1, 4, 16, 64):
        ids_b, d_b = index.search(q, 10, "atree", beam=beam)
        ok = ids_b >= 0
        luts = index.quantizer.luts(q)
        full = add_biases(table_sum(luts, index.codes), index.quantizer.query_bias(q), index.vector_bias)
        assert np.array_equal(d_b[ok], np.take_along_axis(full, np.where(ok, ids_b, 0), 1)[ok])
        hits.append(np.mean([len(np.intersect1d(a[a >= 0], b)) for a, b in zip(ids_b, ids_flat[:, :10])]))
    assert hits == sorted(hits) and hits[-1] > hits[0]


def test_topk_ties_by_id() -> None:
    d = np.array([[3, 1, 1, 2, 1, 0]], np.float32)
    ids, dist = topk(d, 4)
    assert ids.tolist() == [[5, 1, 2, 4]] and dist.tolist() == [[0, 1, 1, 1]]
    ids, _ = topk(d, 8)
    assert ids.tolist() == [[5, 1, 2, 4, 3, 0, -1, -1]]


def test_eforest_builds_groups() -> None:
    codes = np.random.default_rng(0).integers(0, 4, (500, 6)).astype(np.uint8)
    f = EForest.build(codes, 3)
    assert [t.books for t in f.trees] == [(0, 1), (2, 3), (4, 5)]
    assert all(t.node_counts[-1] <= 16 for t in f.trees)


def test_ir_program_matches_numpy(index: AnnIndex) -> None:
    q = _queries()
    qz = index.quantizer
    luts = qz.luts(q)
    ref = add_biases(table_sum(luts, index.codes), qz.query_bias(q), index.vector_bias)
    vb = index.vector_bias
    got = program.run_scan(luts, index.codes, vb, qz.query_bias(q), backend="interp")
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-4)
    if program._compiled(qz.M, qz.K, "u8") is not None:
        got = program.run_scan(luts, index.codes, vb, qz.query_bias(q), backend="jit")
        assert np.allclose(got, ref, rtol=1e-5, atol=1e-4)
    qr = q @ qz.rotation if getattr(qz, "rotate", False) else q
    assert np.allclose(program.run_lut(qz.method, qr, qz.codebooks), luts, rtol=1e-4, atol=1e-3)
    text = program.search_ir_text(qz.method, qz.dim, qz.M, qz.K)
    assert "prim @ann_scan" in text and "prim @ann_lut" in text


def test_cli_eval_recall_matches_brute_force(tmp_path: Path, sift: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    base, queries, gt = sift
    exact = np.argsort(cdist(queries.astype(np.float64), base.astype(np.float64), "sqeuclidean"), 1, kind="stable")
    assert np.array_equal(exact[:, :100], gt)  # the shipped ground truth is the brute-force one
    r = CliRunner()
    idx = tmp_path / "sift.idx"
    res = r.invoke(ann_index, ["build", str(DATA / "sift5k_base.fvecs"), "--method", "pq", "-M", "8", "-K", "32",
                               "--train-size", "2000", "-o", str(idx)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sift.idx.ir").read_text().startswith("mlc.module")
    out = tmp_path / "res.ivecs"
    res = r.invoke(ann_index, ["search", str(idx), str(DATA / "sift5k_query.fvecs"), "--k", "100", "--mode", "flat",
                               "-o", str(out)])
    assert res.exit_code == 0, res.output
    ids = read_vectors(out)
    assert ids.shape == (100, 100)
    res = r.invoke(ann_index, ["eval", str(idx), str(DATA / "sift5k_query.fvecs"), str(DATA / "sift5k_groundtruth.ivecs"),
                               "--mode", "flat"])
    assert res.exit_code == 0, res.output
    got = dict(line.rsplit(None, 1) for line in res.output.strip().splitlines())
    for r_ in (1, 10, 100):
        want = np.mean([exact[i, 0] in ids[i, :r_] for i in range(len(ids))])
        assert float(got[f"recall@{r_}"]) == pytest.approx(want, abs=1e-4)
    want10 = np.mean([len(set(ids[i, :10]) & set(exact[i, :10])) / 10 for i in range(len(ids))])
    assert float(got["10-recall@10"]) == pytest.approx(want10, abs=1e-4)
    assert float(got["quant_error"]) > 0 and float(got["qps"]) > 0


def test_cli_errors(tmp_path: Path) -> None:
    r = CliRunner()
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    write_vectors(tmp_path / "b.npy", x)
    idx = tmp_path / "i.idx"
    assert r.invoke(ann_index, ["build", str(tmp_path / "b.npy"), "--method", "rvq", "-M", "2", "-K", "16",
                                "-o", str(idx)]).exit_code == 0
    write_vectors(tmp_path / "q.npy", np.zeros((3, 5), np.float32))
    res = r.invoke(ann_index, ["search", str(idx), str(tmp_path / "q.npy"), "-o", str(tmp_path / "o.npy")])
    assert res.exit_code == 1 and "dimension 5 does not match the index dimension 8" in res.output
    assert not (tmp_path / "o.npy").exists()
    (tmp_path / "junk.idx").write_bytes(b"hello world" * 10)
    res = r.invoke(ann_index, ["search", str(tmp_path / "junk.idx"), str(tmp_path / "q.npy"), "-o",
                               str(tmp_path / "o.npy")])
    assert res.exit_code == 1 and "corrupt or unsupported index file" in res.output
    res = r.invoke(ann_index, ["build", str(tmp_path / "b.npy"), "-K", "512", "-o", str(tmp_path / "j.idx")])
    assert res.exit_code == 1 and "at least --codewords=512" in res.output
    assert not (tmp_path / "j.idx").exists()


def test_search_ir_text_parses_back() -> None:
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module

    text = program.search_ir_text("pq", 16, 4, 8)
    mod = parse_module(text)
    assert print_module(mod) == text
    assert mod.get("ann_scan") == program.scan_func(4, 8)
    assert mod.get("ann_search") == program.search_func(4, 8, 10)


def test_fused_compiled_search_identical_to_flat(index: AnnIndex) -> None:
    q = _queries()
    qz = index.quantizer
    got = program.run_search(qz.luts(q), index.codes, index.vector_bias, qz.query_bias(q), 25)
    if got is None:
        pytest.skip("no native codegen on this machine")
    ids_flat, d_flat = index.search(q, 25, "flat")
    assert np.array_equal(got[0], ids_flat) and np.array_equal(got[1], d_flat)
    ids, d = index.search(q, 25, "ir")
    assert np.array_equal(ids, ids_flat)


def test_atree_compiled_scoring_matches_numpy(index: AnnIndex) -> None:
    q = _queries()
    qz = index.quantizer
    luts, qb = qz.luts(q), qz.query_bias(q)
    at = index.atree()
    for beam in (1, 3, at.max_width()):
        a = at.search(luts, qb, 12, beam, compiled=True)
        b = at.search(luts, qb, 12, beam, compiled=False)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
