"""The training loop of `mlc train`: a compiled `@train_step` called over shuffled batches.

Everything a step changes (weights, optimizer state) goes in and out of `@train_step` as arrays
(ir/autodiff.py), so this loop holds the whole training state in one `TrainState` and a checkpoint
is that state written as one file by the atomic writer. Batch order depends only on (seed, epoch),
so a run resumed from a checkpoint takes the same batches, in the same order, with the same
weights as the run that was interrupted: its result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ir.arith import as_int
from .ir.constants import read_npz
from .ir.diagnostics import MlcError
from .ir.dtype import to_numpy
from .ir.files import atomic_write_bytes
from .ir.graph import Function
from .ir.printer import print_type
from .ir.types import TensorType

CHECKPOINT = "checkpoint.npz"
FORMAT = 1  # the checkpoint layout; a newer one is refused, not misread

Arrays = dict[str, np.ndarray]
StepFn = Callable[[Arrays, Arrays, Arrays], tuple[float, Arrays, Arrays]]  # (batch, weights, state) -> ...
EvalFn = Callable[[Arrays, Arrays], dict[str, float]]  # (val data, weights) -> metrics


@dataclass
class TrainState:
    """Where a run stands: `epoch` epochs are done and `batch` batches of the next one."""

    weights: Arrays
    opt_state: Arrays
    epoch: int = 0
    batch: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)  # one per step: the loss curve
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one per epoch: the JSON lines


def batch_order(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Row indices of each batch of `epoch`: a permutation seeded by (seed, epoch), cut into full
    batches (the last partial batch is dropped, so every call has the shapes compiled for)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i:i + batch] for i in range(0, n - batch + 1, batch)]


# ---- data -----------------------------------------------------------------------------------


def load_dataset(path: str, needs: Mapping[str, TensorType], batch: int | None) -> Arrays:
    """The arrays of `path` (.npz) that `needs` names, checked against their types (rows first).

    A dim of the type that is a constant must match; the rows dim is where batches are cut, so it
    must be symbolic or, when `batch` is given, equal to it."""
    arrays = read_npz(path, f"dataset '{path}'")
    missing = [k for k in needs if k not in arrays]
    if missing:
        raise MlcError(f"{path}: no array '{missing[0]}' (the training step needs {', '.join(needs)}; "
                       f"the file has {', '.join(arrays) or 'none'})")
    rows = {k: arrays[k].shape[0] if arrays[k].ndim else -1 for k in needs}
    if len(set(rows.values())) != 1 or -1 in rows.values():
        raise MlcError(f"{path}: arrays disagree on the number of rows ({', '.join(f'{k}: {r}' for k, r in rows.items())})")
    out: Arrays = {}
    for k, t in needs.items():
        a, ts = arrays[k], print_type(t)
        shape = t.shape or ()
        if a.ndim != len(shape):
            raise MlcError(f"{path}: '{k}' has rank {a.ndim}, the model's input has rank {len(shape)} ({ts})")
        for i, d in enumerate(shape):
            want = as_int(d)
            if i == 0:
                if want is not None and batch is not None and want != batch:
                    raise MlcError(f"{path}: '{k}': the model's input has {want} rows per call; use --batch {want}")
            elif want is not None and a.shape[i] != want:
                raise MlcError(f"{path}: '{k}' has shape {a.shape}, the model's input is {ts}")
        want_dt = to_numpy(t.dtype)
        if a.dtype.kind != want_dt.kind and not (a.dtype.kind in "iu" and want_dt.kind in "iu"):
            raise MlcError(f"{path}: '{k}' is {a.dtype}, the model's input is {t.dtype}")
        out[k] = np.ascontiguousarray(a.astype(want_dt, copy=False))
    return out


def data_inputs(step: Function, weights: list[str], state: list[str]) -> dict[str, TensorType]:
    """The inputs of `@train_step` that come from the dataset: all but the weights and the state."""
    skip = set(weights) | set(state)
    out: dict[str, TensorType] = {}
    for p in step.params:
        if p.name not in skip:
            if not isinstance(p.type, TensorType):
                raise MlcError(f"@{step.name}: input '{p.name}' is not a tensor", p.loc)
            out[p.name] = p.type
    return out


def refold(prov: Any, arrays: Arrays, fn: Function) -> Arrays:
    """The constants the importer folded from initializers (a transposed Gemm weight), recomputed
    from the trained initializers with the ops' numpy references, so `@main` reads trained values."""
    from .ir.graph import Constant
    from .ir.ops.registry import get

    types = {b.node.key: b.var.type for b in fn.body.bindings if isinstance(b.node, Constant)}
    out: Arrays = {}

    def value(k: str) -> np.ndarray:
        if k in out:
            return out[k]
        if k not in prov.recipes:
            return arrays[k]
        op, args, attrs = prov.recipes[k]
        opdef = get(op)
        assert opdef is not None and opdef.ref is not None, op
        out[k] = np.asarray(opdef.ref([value(a) for a in args], dict(attrs), types.get(k), {}))
        return out[k]

    for k in prov.recipes:
        value(k)
    return out


# ---- checkpoints ----------------------------------------------------------------------------


def fingerprint(*parts: bytes | str) -> str:
    """What a checkpoint belongs to: the training program and the run's options."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def save_checkpoint(directory: Path, st: TrainState, fp: str) -> None:
    """The whole state as one .npz, replacing the previous one in one rename (no torn checkpoint)."""
    meta = {"format": FORMAT, "fingerprint": fp, "epoch": st.epoch, "batch": st.batch, "step": st.step,
            "metrics": st.metrics}
    arrays = {f"weight/{k}": v for k, v in st.weights.items()} | {f"state/{k}": v for k, v in st.opt_state.items()}
    arrays["losses"] = np.asarray(st.losses, np.float64)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(directory / CHECKPOINT, buf.getvalue())


def load_checkpoint(directory: Path, fp: str, like: TrainState) -> TrainState | None:
    """The state saved in `directory`, or None when there is none; a checkpoint of another run,
    or one whose arrays do not fit the model, is an error (never silently restarted or mixed)."""
    path = directory / CHECKPOINT
    if not path.exists():
        return None
    what = f"checkpoint '{path}'"
    z = read_npz(path, what)
    try:
        meta = json.loads(bytes(z.pop("meta")).decode())
        if meta.get("format") != FORMAT:
            raise MlcError(f"{what}: format {meta.get('format')} is not {FORMAT} (written by another mlc version)")
        if meta["fingerprint"] != fp:
            raise MlcError(f"{what} belongs to another training run (other model, data or options): "
                           "use another --checkpoint directory, or delete it to start over")
        st = TrainState({}, {}, int(meta["epoch"]), int(meta["batch"]), int(meta["step"]),
                        [float(x) for x in z.pop("losses")], list(meta["metrics"]))
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise MlcError(f"{what} is corrupt: {e}") from None
    for group, target, ref in (("weight", st.weights, like.weights), ("state", st.opt_state, like.opt_state)):
        for k, v in ref.items():
            a = z.get(f"{group}/{k}")
            if a is None or a.shape != v.shape or a.dtype != v.dtype:
                raise MlcError(f"{what}: {group} '{k}' is missing or has the wrong shape or type")
            target[k] = a
    return st


# ---- the loop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch: int
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end of each epoch only


def train(step: StepFn, data: Arrays, st: TrainState, sched: Schedule, *, evaluate: EvalFn | None = None,
          val: Arrays | None = None, save: Callable[[TrainState], None] | None = None,
          on_step: Callable[[TrainState, float], None] | None = None) -> TrainState:
    """Run `st` to `sched.epochs` epochs. A KeyboardInterrupt saves the state of the last finished
    step before it propagates (a step is one call: it finished or it did not happen)."""
    n = len(next(iter(data.values())))
    batches_per_epoch = len(batch_order(n, sched.batch, sched.seed, 0))
    if batches_per_epoch == 0:
        raise MlcError(f"the dataset has {n} rows, fewer than one batch of {sched.batch}")
    try:
        while st.epoch < sched.epochs:
            order = batch_order(n, sched.batch, sched.seed, st.epoch)
            t0, first = time.perf_counter(), st.batch
            for idx in order[st.batch:]:
                loss, weights, opt_state = step({k: v[idx] for k, v in data.items()}, st.weights, st.opt_state)
                if not np.isfinite(loss):
                    raise MlcError(f"the loss is {loss} at step {st.step + 1} (epoch {st.epoch + 1}): "
                                   "lower --lr, or check the data")
                st.weights, st.opt_state = weights, opt_state
                st.batch, st.step = st.batch + 1, st.step + 1
                st.losses.append(float(loss))
                if on_step is not None:
                    on_step(st, float(loss))
                if save is not None and sched.checkpoint_every and st.step % sched.checkpoint_every == 0 \
                        and st.batch < len(order):
                    save(st)
            seconds = time.perf_counter() - t0
            done = len(order) - first
            rec: dict[str, Any] = {"epoch": st.epoch + 1, "step": st.step,
                                   "loss": float(np.mean(st.losses[-len(order):])),
                                   "samples_per_s": done * sched.batch / seconds if seconds > 0 else None}
            if evaluate is not None and val is not None:
                rec.update({f"val_{k}": v for k, v in evaluate(val, st.weights).items()})
            st.metrics.append(rec)
            st.epoch, st.batch = st.epoch + 1, 0
            if save is not None:
                save(st)
    except KeyboardInterrupt:
        if save is not None:
            save(st)
        raise
    return st


def iterate_batches(arrays: Arrays, batch: int) -> Iterator[Arrays]:
    """`arrays` in order, in full batches and then the remainder (evaluation sees every row)."""
    n = len(next(iter(arrays.values())))
    for i in range(0, n, batch):
        yield {k: v[i:i + batch] for k, v in arrays.items()}
