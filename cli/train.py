"""`mlc train M.ir --data D.npz --epochs E --batch B [--val V.npz] -o TRAINED.ir`.

Builds `@train_step` and `@eval` from `@main` (ir/autodiff.py), compiles them for the target, and
runs the loop of mlc/training.py. The run's directory (`--checkpoint`, default TRAINED.ir.train/)
holds `checkpoint.npz` (the whole training state, replaced in one rename), `metrics.jsonl` (one line
per epoch) and `loss.png`; rerunning the same command resumes from the checkpoint, so a run stopped
by SIGINT or SIGKILL loses nothing and ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from mlc.ir.diagnostics import MlcError

from .io import read_module, write_module
from .main import handle_errors, target_option

SCALARS = ("step", "loss_scale", "good_steps")  # optimizer state that is one f32 number
START_SCALE = 2.0**15


@click.command("train")
@click.argument("model", metavar="M.ir")
@click.option("--data", "data_path", required=True, help="Training set (.npz): one array per input of @main, "
              "plus the loss's target/labels, rows first.")
@click.option("--val", "val_path", default=None, help="Validation set (.npz, same arrays), evaluated after each epoch.")
@click.option("--epochs", type=click.IntRange(1, 10**6), default=1, show_default=True)
@click.option("--batch", type=click.IntRange(1, 10**7), default=32, show_default=True)
@click.option("--loss", default="cross-entropy:labels", show_default=True,
              help="sum | mean | mse:TARGET | cross-entropy:LABELS (TARGET/LABELS: the dataset's array).")
@click.option("--optimizer", type=click.Choice(["sgd", "momentum", "adam"]), default="adam", show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1e6, min_open=True), default=1e-3, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0, 1e6), default=0.0, show_default=True)
@click.option("--wrt", default="all", show_default=True, help="Constants to train: all, or NAME,...")
@click.option("--loss-scale/--no-loss-scale", default=False, show_default=True,
              help="Dynamic loss scaling (for a model after `mlc amp`): a step with inf/nan gradients is skipped.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Batch order.")
@click.option("--checkpoint", "ckpt_dir", default=None,
              help="Run directory: checkpoint, metrics.jsonl, loss.png (default: OUTPUT.train/).")
@click.option("--checkpoint-every", type=click.IntRange(0, 10**9), default=0, show_default=True,
              help="Also checkpoint every N steps (0: after each epoch only).")
@click.option("--progress/--no-progress", default=None, help="Show progress (default: on a terminal).")
@target_option
@click.option("-o", "--output", required=True, help="Module with the trained weights (TRAINED.ir + side file).")
@handle_errors
def train_cmd(model: str, data_path: str, val_path: str | None, epochs: int, batch: int, loss: str, optimizer: str,
              lr: float, weight_decay: float, wrt: str, loss_scale: bool, seed: int, ckpt_dir: str | None, checkpoint_every: int,
              progress: bool | None, target: str, output: str) -> None:
    """Train @main's constants on a dataset with a compiled training step; resumable."""
    from mlc.ir.autodiff import (
        Loss,
        Optimizer,
        Provenance,
        Spec,
        differentiable_constants,
        eval_function,
        train_step_function,
    )
    from mlc.ir.constants import pack_constants, sha256_file
    from mlc.ir.graph import Function
    from mlc.ir.printer import print_module
    from mlc.passes.registry import PassContext
    from mlc.passes.shape_infer import ShapeInfer

    from mlc.training import (
        Schedule,
        TrainState,
        data_inputs,
        fingerprint,
        load_checkpoint,
        load_dataset,
        refold,
        train,
    )

    out = Path(output)
    if not out.resolve().parent.is_dir():
        raise MlcError(f"{output}: cannot write the trained module: directory {out.resolve().parent} does not exist")
    run_dir = Path(ckpt_dir) if ckpt_dir else Path(f"{output}.train")
    src = read_module(model, verify=True)
    consts = src.constants()
    module = ShapeInfer().apply(src.module, PassContext(constants=consts))
    main = module.get("main")
    if not isinstance(main, Function):
        raise MlcError(f"{model}: no graph function @main")
    names = tuple(n.strip() for n in wrt.split(",") if n.strip())
    spec = Spec(None if wrt == "all" else names, (), Loss.parse(loss))
    opt = Optimizer(optimizer, lr, weight_decay=weight_decay, loss_scale=loss_scale)
    prov = Provenance.of(module.meta, consts)  # folded weights train as the initializers they came from
    step_fn = train_step_function(main, spec, opt, prov=prov)
    keys = differentiable_constants(main, prov) if spec.wrt is None else list(spec.wrt)
    data_names = {p.name for p in main.params} | ({spec.loss.arg} if spec.loss.arg else set())
    state_names = [p.name for p in step_fn.params if p.name not in data_names and p.name not in keys]
    needs = data_inputs(step_fn, keys, state_names)
    data = load_dataset(data_path, needs, batch)
    val = load_dataset(val_path, needs, batch) if val_path else None
    train_mod = ShapeInfer().apply(module.with_function(step_fn).with_function(eval_function(main, spec, prov=prov)),
                                   PassContext(constants=consts))
    fp = fingerprint(print_module(train_mod), pack_constants(consts), sha256_file(data_path), str(batch), str(seed))

    weights = {k: np.ascontiguousarray(consts[k]) for k in keys}
    opt_state = {s: np.array(START_SCALE if s == "loss_scale" else 0, np.float32) if s in SCALARS
                 else np.zeros_like(weights[s[2:]]) for s in state_names}
    st = TrainState(weights, opt_state)
    resumed = load_checkpoint(run_dir, fp, st)
    if resumed is not None:
        st = resumed
        click.echo(f"mlc train: resuming from {run_dir / 'checkpoint.npz'} (epoch {st.epoch + 1}, step {st.step})",
                   err=True)
    if st.epoch >= epochs:
        click.echo(f"mlc train: the checkpoint has {st.epoch} epochs done already", err=True)

    vm = _compile(train_mod, consts, target)

    def step(b: dict[str, np.ndarray], w: dict[str, np.ndarray], s: dict[str, np.ndarray]) \
            -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        r = vm.run({**b, **w, **s}, "train_step")
        return float(r["loss"]), {k: r[f"new_{k}"] for k in w}, {k: r[f"new_{k}"] for k in s}

    def evaluate(v: dict[str, np.ndarray], w: dict[str, np.ndarray]) -> dict[str, float]:
        return _evaluate(vm, v, w, batch, spec.loss.kind, spec.loss.arg)

    def save(s: TrainState) -> None:
        _save_run(run_dir, s, fp)

    run_dir.mkdir(parents=True, exist_ok=True)
    sched = Schedule(epochs, batch, seed, checkpoint_every)
    with _progress(progress, epochs, len(next(iter(data.values()))) // batch) as on_step:
        st = train(step, data, st, sched, evaluate=evaluate, val=val, save=save, on_step=on_step)
    _save_run(run_dir, st, fp)
    trained = {**consts, **st.weights}
    # folds of the trained initializers, but a folded constant named in --wrt trained as itself: keep it
    refolded = {k: v for k, v in refold(prov, trained, main).items() if k not in st.weights}
    write_module(module, output, src, new_constants={**trained, **refolded})
    last = st.metrics[-1] if st.metrics else {}
    click.echo(f"{output}: {st.epoch} epochs, {st.step} steps; " +
               ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float)), err=True)


def _compile(module: Any, consts: dict[str, np.ndarray], target: str) -> Any:
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module, with_memory_constants

    built = build_module(with_memory_constants(module, consts), consts, target)
    return model_from_artifact(loads(built.result.data), "<mlc train>").vm


def _evaluate(vm: Any, val: dict[str, np.ndarray], w: dict[str, np.ndarray], batch: int, kind: str,
              arg: str | None) -> dict[str, float]:
    """Mean loss over every full batch of `val`, and the accuracy for cross-entropy."""
    n = len(next(iter(val.values())))
    total, correct, rows = 0.0, 0, 0
    for i in range(0, n - batch + 1, batch):
        b = {k: v[i:i + batch] for k, v in val.items()}
        r = vm.run({**b, **w}, "eval")
        total += float(r["loss"]) * batch
        rows += batch
        if kind == "cross-entropy" and arg is not None:
            correct += int((np.argmax(r["output"], axis=-1) == b[arg]).sum())
    if rows == 0:
        raise MlcError(f"the validation set has {n} rows, fewer than one batch of {batch}")
    out = {"loss": total / rows}
    if kind == "cross-entropy":
        out["accuracy"] = correct / (rows * int(np.prod(val[arg].shape[1:]) if arg else 1))
    return out


def _save_run(run_dir: Path, st: Any, fp: str) -> None:
    """Checkpoint, then the metrics and the curve it includes (each file replaced in one rename)."""
    from mlc.ir.files import atomic_write_bytes

    from mlc.plot import loss_curve
    from mlc.training import save_checkpoint

    save_checkpoint(run_dir, st, fp)
    atomic_write_bytes(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in st.metrics).encode())
    atomic_write_bytes(run_dir / "loss.png", loss_curve(st.losses))


class _progress:
    """rich progress on stderr (loss, throughput, ETA); `enabled=None`: only on a terminal."""

    def __init__(self, enabled: bool | None, epochs: int, per_epoch: int):
        import sys

        self.on = sys.stderr.isatty() if enabled is None else enabled
        self.total = epochs * per_epoch
        self.p: Any = None
        self.t0 = time.perf_counter()
        self.first: int | None = None

    def __enter__(self) -> Any:
        if not self.on:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]:.4g}  {task.fields[rate]:.0f} steps/s"),
                          TimeRemainingColumn(), console=Console(stderr=True))
        self.p.start()
        self.task = self.p.add_task("train", total=self.total, epoch=1, loss=float("nan"), rate=0.0)
        return self.update

    def update(self, st: Any, loss: float) -> None:
        if self.first is None:
            self.first, self.t0 = st.step - 1, time.perf_counter()
        rate = (st.step - self.first) / max(time.perf_counter() - self.t0, 1e-9)
        self.p.update(self.task, completed=st.step, epoch=st.epoch + 1, loss=loss, rate=rate)

    def __exit__(self, *exc: Any) -> None:
        if self.p is not None:
            self.p.stop()
