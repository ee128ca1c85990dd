"""Training benchmarks of issue 16 (`make bench-train`), CPU, one run.

1. digits: the zoo's resnext-style CNN trained with `mlc train` on scikit-learn's bundled digits
   (8x8 upsampled to 16x16 nearest, 3 channels, standardized; a fixed split), cross-entropy, Adam
   in two stages (lr 3e-3, then 3e-4 from the first stage's weights); goal >= 97% test accuracy
   after the last epoch. Batch norm stays in the zoo's inference form (fixed statistics).
2. charlm: embedding -> gpt_block layers -> linear head, trained with `mlc train` on the characters
   of the Python standard library's docstrings (next-character cross-entropy); the loss goes down.
3. seq2seq reversal: the zoo's seq2seq (bidirectional LSTM encoder, a GRU decoder step, attention)
   trained with `mlc train` to reverse sequences of distinct tokens (teacher forcing: the previous
   output token in, the next one out); goal >= 95% token accuracy on held-out sequences. Needs
   gradients through the graph `Loop` (the section probes for them and says so when missing).
4. speed: one training step (forward, backward, Adam) of gpt_block and resnext at batch 32,
   mlc's compiled @train_step vs jax.jit of the same computation: benchmarks/bench_train_step.py
   (the IR evaluated op by op with jax.numpy by tests/jax_graph.py, jax.value_and_grad, the same
   Adam update, results compared before timing), run from here.

    python benchmarks/bench_train.py [digits] [charlm] [seq2seq] [speed]   (no argument: all)
    options: --digits-epochs N --lm-epochs N --lm-chars N --runs N --keep DIR
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import GraphBuilder, build, gpt_layer
from mlc.ir.autodiff import Provenance, differentiable_constants
from mlc.ir.graph import Function
from onnx import TensorProto

HERE = Path(__file__).resolve().parent
MLC = [sys.executable, "-m", "mlc.cli"]
SECTIONS = ("digits", "charlm", "seq2seq", "speed")

# ---- data -----------------------------------------------------------------------------------

DIGITS_TEST = 352  # 11 batches of 32: `mlc train --val` evaluates full batches, so every test row counts


def digits_data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, test) arrays `image` (n x 3 x 16 x 16 f32) and `labels` (n, i64): the 1797 digits,
    each pixel repeated 2x2 and over 3 channels, standardized with the training set's mean and
    std; the split is a fixed permutation (seed 0), the first 352 rows for test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32).repeat(2, axis=1).repeat(2, axis=2)[:, None].repeat(3, axis=1)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    te, tr = perm[:DIGITS_TEST], perm[DIGITS_TEST:]
    mu, sd = x[tr].mean(), x[tr].std()
    x = ((x - mu) / sd).astype(np.float32)
    return {"image": x[tr], "labels": y[tr]}, {"image": x[te], "labels": y[te]}


# Modules whose docstrings make the character corpus (a fixed list, in this order).
CORPUS_MODULES = (
    "abc", "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "enum", "fractions", "functools", "glob", "heapq", "hmac", "html",
    "inspect", "ipaddress", "itertools", "json", "logging", "operator", "os", "pathlib", "pickle", "pprint",
    "queue", "random", "re", "shlex", "shutil", "statistics", "string", "subprocess", "tempfile", "textwrap",
    "threading", "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
)
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))  # newline + printable ASCII: 96 symbols


def stdlib_corpus(limit: int | None = None) -> str:
    """The docstrings of CORPUS_MODULES: each module's, then those of its public classes, functions
    and methods (sorted by name, each object once), joined by blank lines; characters outside VOCAB
    are dropped and runs of spaces squeezed. The same Python version gives the same text."""
    seen: set[int] = set()
    docs: list[str] = []

    def add(obj: Any) -> None:
        doc = getattr(obj, "__doc__", None)
        if id(obj) in seen or not isinstance(doc, str) or not doc.strip():
            return
        seen.add(id(obj))
        docs.append(_clean(doc))

    for name in CORPUS_MODULES:
        mod = importlib.import_module(name)
        if name == "typing":  # its deprecated io/re aliases warn when touched
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=__name__)
        add(mod)
        for attr in sorted(vars(mod)):
            obj = vars(mod)[attr]
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            add(obj)
            if isinstance(obj, type):
                for meth in sorted(vars(obj)):
                    if not meth.startswith("_"):
                        add(vars(obj)[meth])
    text = "\n\n".join(docs)
    return text[:limit] if limit else text


def _clean(doc: str) -> str:
    import inspect

    keep = set(VOCAB)
    lines = [" ".join(line.split()) for line in inspect.cleandoc(doc).splitlines()]
    return "".join(c for c in "\n".join(lines) if c in keep)


def char_sequences(text: str, t: int) -> dict[str, np.ndarray]:
    """`tokens` (n x t) and `labels` (n x t, the next character of each) from `text` cut into
    non-overlapping windows of t + 1 characters (stride t)."""
    ids = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64)
    table = np.full(256, -1, np.int64)
    table[np.frombuffer(VOCAB.encode("ascii"), np.uint8)] = np.arange(len(VOCAB))
    ids = table[ids]
    assert (ids >= 0).all()
    n = (len(ids) - 1) // t
    starts = np.arange(n) * t
    win = ids[starts[:, None] + np.arange(t + 1)]
    return {"tokens": win[:, :-1].copy(), "labels": win[:, 1:].copy()}


# ---- models ---------------------------------------------------------------------------------


def char_lm(t: int, d: int = 64, heads: int = 4, layers: int = 2, seed: int = 7) -> onnx.ModelProto:
    """tokens (B x t, i64) -> embedding (Gather) + learned positions -> `layers` gpt layers ->
    LayerNorm -> linear head: logits (B x t x |VOCAB|)."""
    v = len(VOCAB)
    b = GraphBuilder("char_lm", seed=seed)
    tok = b.input("tokens", ["B", t], TensorProto.INT64)
    x = b.n("Gather", b.weight((v, d), "embedding", scale=0.3), tok, axis=0)
    x = b.n("Add", x, b.weight((t, d), "positions", scale=0.1))
    for _ in range(layers):
        x = gpt_layer(b, x, d, heads, t, random_norm=False)
    x = b.n("LayerNormalization", x, b.const(np.ones(d, np.float32), "ln_g"), b.const(np.zeros(d, np.float32), "ln_b"),
            axis=-1, epsilon=1e-5)
    b.node("Add", [b.n("MatMul", x, b.weight((d, v))), b.weight((v,), scale=0.0)], out="logits")
    b.output("logits", ["B", t, v])
    return b.model()


def trainable(fn: Function, prov: Provenance) -> list[str]:
    """The constants training updates: what `--wrt all` would (folded weights as the initializers
    they came from) but batch norm's running statistics (the zoo's BatchNormalization is the
    inference form; its mean and var stay as initialized)."""
    return [k for k in differentiable_constants(fn, prov) if not k.startswith(("mean_", "var_"))]


# ---- runs -----------------------------------------------------------------------------------


def write_model(model: onnx.ModelProto, path: Path) -> tuple[Function, Provenance]:
    """Import `model` and write it as `path` (+ side file), as `mlc import` would; its @main and
    the importer's record of folded initializers."""
    from mlc.cli.io import write_module

    module, consts = import_onnx(model)
    write_module(module, str(path), new_constants=consts)
    main = module.get("main")
    assert isinstance(main, Function)
    return main, Provenance.of(module.meta, consts)


def mlc_train(model: Path, data: Path, val: Path | None, out: Path, epochs: int, batch: int, lr: float,
              wrt: list[str]) -> tuple[list[dict[str, Any]], float]:
    """`mlc train` in a subprocess: its per-epoch metrics and the wall time (compilation included)."""
    cmd = [*MLC, "train", str(model), "--data", str(data), "--epochs", str(epochs), "--batch", str(batch),
           "--lr", str(lr), "--optimizer", "adam", "--wrt", ",".join(wrt), "--no-progress", "-o", str(out)]
    if val is not None:
        cmd += ["--val", str(val)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"mlc train failed ({p.returncode}):\n{p.stderr}")
    lines = (out.parent / f"{out.name}.train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], wall


def train_stages(model: Path, data: Path, val: Path, epochs: list[int], lrs: list[float], wrt: list[str],
                 unit: str) -> tuple[list[dict[str, Any]], float]:
    """`mlc train` in stages (a step-wise learning-rate schedule): each stage trains the module the
    previous one wrote, with a fresh Adam state. Prints each epoch; all epochs' metrics, total wall."""
    metrics: list[dict[str, Any]] = []
    wall, done = 0.0, 0
    for i, (e, lr) in enumerate(zip(epochs, lrs)):
        out = model.parent / f"{model.stem}.stage{i + 1}.ir"
        ms, w = mlc_train(model, data, val, out, e, 32, lr, wrt)
        for m in ms:
            print(f"  epoch {done + m['epoch']:3d} (lr {lr})  train loss {m['loss']:.4f}  test loss {m['val_loss']:.4f}"
                  f"  test accuracy {m['val_accuracy']:.4f}  {m['samples_per_s']:.0f} {unit}/s", flush=True)
        metrics += ms
        model, wall, done = out, wall + w, done + e
    return metrics, wall


def _plan(epochs: list[int], lrs: list[float]) -> str:
    return ", ".join(f"{e} epochs at lr {lr}" for e, lr in zip(epochs, lrs))


def run_digits(work: Path, epochs: list[int], lrs: list[float]) -> dict[str, Any]:
    """resnext on the digits, in learning-rate stages (train_stages)."""
    train, test = digits_data()
    np.savez(work / "digits_train.npz", **train)
    np.savez(work / "digits_test.npz", **test)
    main, prov = write_model(build("resnext"), work / "resnext.ir")
    print(f"digits: resnext, {len(train['labels'])} train / {len(test['labels'])} test images, batch 32, "
          f"Adam, {_plan(epochs, lrs)} (mlc train)", flush=True)
    metrics, wall = train_stages(work / "resnext.ir", work / "digits_train.npz", work / "digits_test.npz", epochs,
                                 lrs, trainable(main, prov), "images")
    done = len(metrics)
    acc = metrics[-1]["val_accuracy"]
    first = next((i + 1 for i, m in enumerate(metrics) if m["val_accuracy"] >= 0.97), None)
    print(f"digits: test accuracy {acc:.4f} ({round(acc * len(test['labels']))}/{len(test['labels'])}) after "
          f"{done} epochs (goal >= 0.97: {'met' if acc >= 0.97 else 'MISSED'}; first epoch at >= 0.97: {first}); "
          f"wall {wall:.1f} s (compilation included)", flush=True)
    return {"accuracy": acc, "epochs": done, "first_epoch_97": first, "wall_s": wall}


def run_charlm(work: Path, epochs: int, lr: float, chars: int, t: int = 32) -> dict[str, Any]:
    text = stdlib_corpus()
    used = text[:chars] if chars else text
    data = char_sequences(used, t)
    np.savez(work / "chars.npz", **data)
    write_model(char_lm(t), work / "char_lm.ir")
    n = len(data["tokens"])
    print(f"charlm: {len(CORPUS_MODULES)} stdlib modules' docstrings, {len(text)} characters ({len(used)} used), "
          f"{n} windows of {t}, vocabulary {len(VOCAB)}; embedding -> 2 gpt layers (d 64, 4 heads) -> head; "
          f"batch 32, Adam lr {lr}, {epochs} epochs (mlc train)", flush=True)
    metrics, wall = mlc_train(work / "char_lm.ir", work / "chars.npz", None, work / "char_lm.trained.ir", epochs, 32,
                              lr, ["all"])
    for m in metrics:
        print(f"  epoch {m['epoch']:3d}  loss {m['loss']:.4f} ({m['loss'] / math.log(2):.3f} bits/char)  "
              f"{m['samples_per_s'] * t:.0f} chars/s", flush=True)
    first, last = metrics[0]["loss"], metrics[-1]["loss"]
    print(f"charlm: mean loss per epoch {first:.4f} (epoch 1) -> {last:.4f} (epoch {len(metrics)}) nats/char; "
          f"uniform would be {math.log(len(VOCAB)):.4f}; loss went {'down' if last < first else 'NOT down'}; "
          f"wall {wall:.1f} s", flush=True)
    return {"first": first, "last": last, "epochs": len(metrics), "wall_s": wall}


REV_LEN, REV_VOCAB, BOS = 6, 40, 0  # the zoo seq2seq's vocabulary is 40; token 0 starts the output


def reversal_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Teacher-forced steps of reversing `n` sequences of REV_LEN distinct tokens (1..39): for each
    sequence and each output position t, `src_rows` (the sequence, rows first), `prev_token` (BOS at
    t = 0, else the reversed sequence's token t - 1) and `labels` (its token t)."""
    rng = np.random.default_rng(seed)
    seqs = np.stack([rng.choice(np.arange(1, REV_VOCAB), REV_LEN, replace=False) for _ in range(n)])
    rev = seqs[:, ::-1]
    prev = np.concatenate([np.full((n, 1), BOS), rev[:, :-1]], axis=1)
    return {"src_rows": np.repeat(seqs, REV_LEN, axis=0).astype(np.int64),
            "prev_token": prev.reshape(-1).astype(np.int64), "labels": rev.reshape(-1).astype(np.int64)}


def seq2seq_rows() -> onnx.ModelProto:
    """The zoo's seq2seq (bidirectional LSTM encoder, GRU decoder step, attention) with its source
    taken rows first (`src_rows`: N x S, transposed to the model's S x N) so `mlc train` can cut
    batches, and only the log-probabilities as result (the attention output dropped)."""
    from onnx import helper

    m = build("seq2seq")
    g = m.graph
    (src,) = [i for i in g.input if i.name == "src"]
    g.input.remove(src)
    g.input.insert(0, helper.make_tensor_value_info("src_rows", TensorProto.INT64, ["N", "S"]))
    g.node.insert(0, helper.make_node("Transpose", ["src_rows"], ["src"], name="src_rows_T", perm=[1, 0]))
    for o in [o for o in g.output if o.name != "log_probs"]:
        g.output.remove(o)
    onnx.checker.check_model(m)
    return m


def run_seq2seq(work: Path, epochs: list[int], lrs: list[float], seqs: int) -> dict[str, Any]:
    """The zoo seq2seq learns to reverse token sequences (needs gradients through the LSTM's graph
    Loop); token accuracy of the teacher-forced decoder steps on held-out sequences."""
    from mlc.ir.autodiff import Spec, grad_function
    from mlc.ir.diagnostics import MlcError

    module, _ = import_onnx(build("seq2seq"))
    main = module.get("main")
    assert isinstance(main, Function)
    try:
        grad_function(main, Spec(None, (), None))  # a VJP: the zoo model has two results
    except MlcError as e:
        print(f"seq2seq reversal: skipped: autodiff cannot differentiate the LSTM yet ({e.message})", flush=True)
        return {"skipped": str(e.message)}
    train, test = reversal_data(seqs, 1), reversal_data(192, 2)
    np.savez(work / "rev_train.npz", **train)
    np.savez(work / "rev_test.npz", **test)
    write_model(seq2seq_rows(), work / "seq2seq.ir")
    print(f"seq2seq reversal: zoo seq2seq (bi-LSTM encoder, GRU step, attention), sequences of {REV_LEN} distinct "
          f"tokens of {REV_VOCAB - 1}; {len(train['labels'])} train / {len(test['labels'])} test decoder steps "
          f"(teacher forcing), batch 32, Adam, {_plan(epochs, lrs)} (mlc train)", flush=True)
    metrics, wall = train_stages(work / "seq2seq.ir", work / "rev_train.npz", work / "rev_test.npz", epochs, lrs,
                                 ["all"], "steps")
    acc = metrics[-1]["val_accuracy"]
    print(f"seq2seq reversal: test token accuracy {acc:.4f} after {len(metrics)} epochs (goal >= 0.95: "
          f"{'met' if acc >= 0.95 else 'MISSED'}); wall {wall:.1f} s", flush=True)
    return {"accuracy": acc, "epochs": len(metrics), "wall_s": wall}


def run_speed(runs: int, seq: int) -> None:
    """benchmarks/bench_train_step.py on gpt_block and resnext at batch 32, one model per process
    (both sides of a model in the same run); a model that fails is reported and the next one runs."""
    for name in ("gpt_block", "resnext"):
        cmd = [sys.executable, str(HERE / "bench_train_step.py"), "--models", name, "--batch", "32",
               "--seq", str(seq), "--runs", str(runs)]
        print(f"speed: one Adam step, mlc @train_step vs jax.jit: {' '.join(cmd[1:])}", flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        print(p.stdout, end="", flush=True)
        if p.returncode != 0:
            last = [line for line in p.stderr.splitlines() if line.strip()][-1:] or ["?"]
            print(f"speed: {name} FAILED (exit {p.returncode}): {last[0]}", flush=True)


def _stages(epochs: str, lrs: str) -> tuple[list[int], list[float]]:
    e, r = [int(x) for x in epochs.split(",")], [float(x) for x in lrs.split(",")]
    if len(e) != len(r):
        raise SystemExit(f"epochs {epochs} and learning rates {lrs}: one of each per stage")
    return e, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=[])
    ap.add_argument("--digits-epochs", default="15,5", help="epochs per stage (comma-separated)")
    ap.add_argument("--digits-lr", default="0.003,0.0003", help="learning rate per stage")
    ap.add_argument("--lm-epochs", type=int, default=4)
    ap.add_argument("--lm-lr", type=float, default=0.003)
    ap.add_argument("--lm-chars", type=int, default=120_000, help="train on the corpus' first N characters (0: all)")
    ap.add_argument("--s2s-epochs", default="6,3", help="epochs per stage (comma-separated)")
    ap.add_argument("--s2s-seqs", type=int, default=12000, help="training sequences (each gives REV_LEN steps)")
    ap.add_argument("--s2s-lr", default="0.01,0.001", help="learning rate per stage")
    ap.add_argument("--runs", type=int, default=20, help="timed steps per side (speed)")
    ap.add_argument("--seq", type=int, default=64, help="gpt_block's sequence length (speed)")
    ap.add_argument("--keep", default=None, help="write the data, models and runs here (default: a temp dir)")
    a = ap.parse_args()
    todo = a.sections or list(SECTIONS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "digits" in todo:
            run_digits(work, *_stages(a.digits_epochs, a.digits_lr))
        if "charlm" in todo:
            run_charlm(work, a.lm_epochs, a.lm_lr, a.lm_chars)
        if "seq2seq" in todo:
            run_seq2seq(work, *_stages(a.s2s_epochs, a.s2s_lr), a.s2s_seqs)
        if "speed" in todo:
            run_speed(a.runs, a.seq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
