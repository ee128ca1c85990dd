"""Quantizers: encode/decode round trips, beam vs greedy, training quality against simple oracles."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ann.additive import beam_encode, sq_error
from mlc.ann.kmeans import assign, kmeans, pca_kmeans
from mlc.ann.quantizer import quantizer_class
from mlc.ir.diagnostics import MlcError


def _data(n: int = 1200, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((d, d)) * np.linspace(3, 0.3, d)[:, None]
    return (rng.standard_normal((n, d)) @ basis).astype(np.float32)


@pytest.mark.parametrize("method,opts", [("pq", {}), ("pq", {"rotate": True}), ("rvq", {"beam": 1}),
                                         ("irvq", {"beam": 4}), ("da", {"beam": 4, "sweeps": 2})])
def test_round_trip_and_error(method: str, opts: dict) -> None:
    x = _data()
    q = quantizer_class(method)(16, 4, 16, **opts)
    q.train(x)
    codes = q.encode(x)
    assert codes.shape == (len(x), 4) and codes.dtype == np.uint8 and codes.max() < 16
    rec = q.decode(codes)
    err = float(((x.astype(np.float64) - rec) ** 2).sum(1).mean())
    assert err == pytest.approx(q.quantization_error(x), rel=1e-6)
    assert err < 0.5 * float(((x - x.mean(0)) ** 2).sum(1).mean())
    # decode is the sum of the chosen codewords (additive) or their concatenation, rotated back (PQ)
    if method == "pq":
        manual = np.concatenate([q.codebooks[m][codes[:, m]] for m in range(4)], 1) @ q.rotation.T
    else:
        manual = sum(q.codebooks[m][codes[:, m]].astype(np.float64) for m in range(4))
    assert np.allclose(rec, manual, atol=1e-4)
    # the ADC tables reproduce |q - decode(c)|^2
    qs = _data(5, seed=3)
    luts = q.luts(qs)
    adc = luts[:, np.arange(4), codes[:50]].sum(-1) + q.query_bias(qs)[:, None]
    vb = q.vector_bias(codes[:50])
    if vb is not None:
        adc += vb[None, :]
    exact = ((qs[:, None, :].astype(np.float64) - rec[None, :50]) ** 2).sum(-1)
    assert np.allclose(adc, exact, rtol=1e-4, atol=1e-3 * exact.mean())


def test_pq_exact_round_trip_of_codes() -> None:
    x = _data()
    q = quantizer_class("pq")(16, 4, 16)
    q.train(x)
    codes = q.encode(x)
    assert np.array_equal(q.encode(q.decode(codes)), codes)


def test_beam_never_worse_than_greedy() -> None:
    x = _data(800)
    q = quantizer_class("rvq")(16, 5, 16, beam=1)
    q.train(x)
    greedy = sq_error(x, q.codebooks, beam_encode(x, q.codebooks, 1))
    # greedy equals the plain residual encoding
    r, codes = x.astype(np.float32).copy(), []
    for m in range(5):
        c = assign(r, q.codebooks[m])[0]
        codes.append(c)
        r -= q.codebooks[m][c]
    assert np.array_equal(beam_encode(x, q.codebooks, 1), np.stack(codes, 1))
    for beam in (2, 4, 16):
        multi = sq_error(x, q.codebooks, beam_encode(x, q.codebooks, beam))
        assert (multi <= greedy + 1e-9).all()
        assert multi.mean() < greedy.mean()


def test_beam_full_width_is_exhaustive() -> None:
    """With a beam as wide as all code combinations, beam encoding finds the optimum (brute force)."""
    x = _data(50, d=6)
    cbs = np.random.default_rng(5).standard_normal((3, 4, 6)).astype(np.float32)
    allc = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    errs = np.stack([sq_error(x, cbs, np.broadcast_to(c, (50, 3))) for c in allc], 1)
    got = sq_error(x, cbs, beam_encode(x, cbs, 64))
    assert np.allclose(got, errs.min(1))


def test_kmeans_beats_random_codebook_and_pca_kmeans_matches_dim() -> None:
    x = _data(1000)
    c = kmeans(x, 16)
    rnd = x[np.random.default_rng(0).choice(len(x), 16, replace=False)]
    assert assign(x, c)[1].mean() < assign(x, rnd)[1].mean()
    pc = pca_kmeans(x, 16)
    assert pc.shape == (16, 16)
    assert assign(x, pc)[1].mean() < assign(x, rnd)[1].mean()


def test_irvq_and_da_below_rvq_on_held_out() -> None:
    x = _data(2400, seed=7)
    tr, te = x[:2000], x[2000:]
    errs = {}
    for method, opts in (("rvq", {"beam": 1}), ("irvq", {"beam": 4}), ("da", {"beam": 4, "sweeps": 2})):
        q = quantizer_class(method)(16, 4, 32, **opts)
        q.train(tr)
        errs[method] = q.quantization_error(te)
    assert errs["irvq"] < errs["rvq"]
    assert errs["da"] < errs["rvq"]


def test_bad_shapes() -> None:
    with pytest.raises(MlcError, match="not divisible"):
        quantizer_class("pq")(10, 3, 16)
    with pytest.raises(MlcError, match="unknown quantization method"):
        quantizer_class("lsq")
    q = quantizer_class("rvq")(4, 2, 4)
    with pytest.raises(MlcError, match="codes must have shape"):
        q.decode(np.zeros((3, 5), np.uint8))


def test_da_on_training_data_never_above_irvq_start() -> None:
    """With holdout=0 DA judges steps on its training vectors, so it can only lower IRVQ's error there."""
    x = _data(1500, seed=11)
    irvq = quantizer_class("irvq")(16, 4, 16, beam=4)
    irvq.train(x)
    da = quantizer_class("da")(16, 4, 16, beam=4, sweeps=2, holdout=0.0)
    da.train(x)
    assert da.quantization_error(x) <= irvq.quantization_error(x) + 1e-9
    # each codebook is IRVQ's, its offsets from the mean contribution scaled by the kept factor
    codes = beam_encode(x, irvq.codebooks, 4)
    for m in range(4):
        mu = irvq.codebooks[m][codes[:, m]].astype(np.float64).mean(0)
        if da.scales[m] == 1.0:
            assert np.array_equal(da.codebooks[m], irvq.codebooks[m])
        assert np.allclose(da.codebooks[m], mu + da.scales[m] * (irvq.codebooks[m] - mu), atol=1e-4)
    assert (da.scales != 1.0).any()


def test_da_sweeps_keep_decode_encode_and_luts_consistent() -> None:
    x = _data(1500, seed=12)
    da = quantizer_class("da")(16, 4, 16, beam=4, sweeps=2)
    qs = _data(7, seed=13)
    stale = da.luts(qs)  # tables of the untrained (zero) codebooks must not survive training
    da.train(x)
    codes = da.encode(x)
    rec = da.decode(codes)
    assert np.allclose(rec, sum(da.codebooks[m][codes[:, m]].astype(np.float64) for m in range(4)), atol=1e-4)
    assert np.array_equal(codes, beam_encode(x, da.codebooks, 4).astype(np.uint8))
    assert np.allclose(sq_error(x, da.codebooks, codes), ((x.astype(np.float64) - rec) ** 2).sum(1), rtol=1e-5)
    want = -2.0 * np.einsum("qd,mkd->qmk", qs.astype(np.float64), da.codebooks.astype(np.float64))
    assert not np.allclose(stale, want) and np.allclose(da.luts(qs), want, rtol=1e-4, atol=1e-3)
