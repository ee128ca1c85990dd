"""Recurrent models end to end on the CPU (issue 17, compiled loops): mlc against onnxruntime, same run.

    python benchmarks/bench_native_replay.py [--runs 30] [--batch 1 8] [--seq 8 64]

The torch LSTM encoder exports (tests/models/lstm_encoder.*.onnx: 2-layer LSTM, 7 steps, batch
dynamic) at each --batch, and the zoo's seq2seq (LSTM encoder + GRU decoder step + attention) at each
--seq with N = 8. Per row the median latency of mlc and of onnxruntime (timed in alternating blocks,
runtime.bench.block_medians) and the ratio onnxruntime / mlc (above 1: mlc faster). Both agree to
1e-4 before timing. To time another runtime (a baseline), put a tree whose `mlc` package maps to it
first on PYTHONPATH: the script only imports `mlc`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from mlc.frontend import zoo
from mlc.runtime.bench import block_medians

import mlc

MODELS = Path(__file__).resolve().parent.parent / "tests" / "models"


def measure(name: str, path: Path, feeds: dict[str, np.ndarray], runs: int) -> None:
    model = mlc.compile(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, want = list(model(**feeds).values()), sess.run(None, feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    ours, peer = block_medians([lambda: model(**feeds), lambda: sess.run(None, feeds)], runs=runs)
    print(f"{name:28s} {ours * 1e3:10.3f} {peer * 1e3:10.3f} {peer / ours:8.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--seq", type=int, nargs="*", default=[8, 64])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'model':28s} {'mlc ms':>10s} {'ort ms':>10s} {'ort/mlc':>8s}")
    for src in sorted(MODELS.glob("lstm_encoder.*.onnx")):
        for b in args.batch:
            measure(f"{src.stem} B={b}", src, {"ids": rng.integers(0, 100, (b, 7)).astype(np.int64)}, args.runs)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "seq2seq.onnx"
        onnx.save(zoo.build("seq2seq"), path)
        for s in args.seq:
            feeds = {"src": rng.integers(0, 40, (s, 8)).astype(np.int64),
                     "prev_token": rng.integers(0, 40, (8,)).astype(np.int64)}
            measure(f"seq2seq S={s} N=8", path, feeds, args.runs)


if __name__ == "__main__":
    main()
