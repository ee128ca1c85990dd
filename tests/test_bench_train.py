"""The data of `make bench-train` (benchmarks/bench_train.py): the char corpus and the digits split are
deterministic and what the benchmark says they are; the char LM model imports and runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_train as bt  # noqa: E402


def test_char_corpus_is_deterministic_and_windows_predict_the_next_character() -> None:
    text = bt.stdlib_corpus()
    assert text == bt.stdlib_corpus() and len(text) > 100_000
    assert set(text) <= set(bt.VOCAB)
    assert bt.stdlib_corpus(1000) == text[:1000]
    t = 16
    d = bt.char_sequences(text[:5001], t)
    n = 5000 // t
    assert d["tokens"].shape == d["labels"].shape == (n, t)
    decode = np.array(list(bt.VOCAB))
    for i in (0, 7, n - 1):  # window i is text[i*t : i*t + t], its labels the same shifted by one
        assert "".join(decode[d["tokens"][i]]) == text[i * t:i * t + t]
        assert "".join(decode[d["labels"][i]]) == text[i * t + 1:i * t + t + 1]


def test_digits_split_is_fixed_disjoint_and_standardized() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    train, test = bt.digits_data()
    again = bt.digits_data()[1]
    np.testing.assert_array_equal(test["image"], again["image"])
    assert train["image"].shape == (1797 - bt.DIGITS_TEST, 3, 16, 16) and test["image"].shape == (bt.DIGITS_TEST, 3, 16, 16)
    assert train["image"].dtype == np.float32 and train["labels"].dtype == np.int64
    assert abs(train["image"].mean()) < 1e-4 and abs(train["image"].std() - 1) < 1e-4
    # each image is an original digit, nearest-upsampled and on 3 channels; train and test partition the set
    raw = load_digits()
    images = np.concatenate([train["image"], test["image"]])
    labels = np.concatenate([train["labels"], test["labels"]])
    small = images[:, 0, ::2, ::2]
    np.testing.assert_array_equal(images[:, 1], images[:, 0])
    np.testing.assert_array_equal(images[:, 0, 1::2, 1::2], small)
    key = {tuple(np.round(x, 4).ravel()) for x in (small - small.min()) / (small.max() - small.min())}
    assert len(key) == len({tuple(x.ravel()) for x in raw.images})  # same distinct images, none twice
    assert np.bincount(labels).tolist() == np.bincount(raw.target).tolist()


def test_char_lm_runs_and_gives_logits() -> None:
    from mlc.frontend.onnx_import import import_onnx
    from mlc.ir.interp import run_function

    module, consts = import_onnx(bt.char_lm(8, d=16, heads=2, layers=1))
    tokens = np.random.default_rng(0).integers(0, len(bt.VOCAB), (2, 8))
    (logits,) = run_function(module, {"tokens": tokens}, consts).values()
    assert logits.shape == (2, 8, len(bt.VOCAB)) and np.isfinite(logits).all()
    # causal: changing the last token leaves the logits of the earlier positions as they were
    t2 = tokens.copy()
    t2[:, -1] = (t2[:, -1] + 1) % len(bt.VOCAB)
    (l2,) = run_function(module, {"tokens": t2}, consts).values()
    np.testing.assert_allclose(l2[:, :-1], logits[:, :-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(l2[:, -1], logits[:, -1])


def test_reversal_steps_are_the_reversed_sequence_with_the_previous_token_fed() -> None:
    d = bt.reversal_data(5, 0)
    n, s = 5, bt.REV_LEN
    assert d["src_rows"].shape == (n * s, s) and d["prev_token"].shape == d["labels"].shape == (n * s,)
    for i in range(n):
        src = d["src_rows"][i * s]
        assert len(set(src.tolist())) == s and bt.BOS not in src  # distinct, BOS never a source token
        assert (d["src_rows"][i * s:(i + 1) * s] == src).all()
        assert d["labels"][i * s:(i + 1) * s].tolist() == src[::-1].tolist()
        assert d["prev_token"][i * s:(i + 1) * s].tolist() == [bt.BOS, *src[::-1][:-1].tolist()]
