"""Subcommands of `mlc`. Stage subcommands are generated from the pass registry."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import click
import numpy as np
from mlc.ir.diagnostics import Loc, MlcError
from mlc.ir.files import atomic_write_bytes, check_regular, read_bytes, write_output_set
from mlc.ir.limits import max_bytes

from .dims import dims_option
from .io import read_module, write_module
from .main import (
    Instrumentation,
    cli,
    handle_errors,
    input_argument,
    output_option,
    parse_target,
    pipeline_options,
    run_stage,
    target_option,
)

DIM_HELP = "Name a dynamic ONNX axis (a dim_param, or INPUT:AXIS) with a symbol, or fix it to an integer; repeatable."


@cli.command("import")
@click.argument("model")
@output_option
@dims_option("--dim", "dims", kind="symbol", help=DIM_HELP)
@handle_errors
def import_cmd(model: str, output: str | None, dims: dict[str, str]) -> None:
    """Import an ONNX model into graph IR (weights go to a side file next to the output)."""
    from mlc.frontend.onnx_import import import_onnx

    from mlc.compiler import with_memory_constants

    module, consts = import_onnx(_existing_file(model), dims or None)
    from mlc.ir.verify import verify_module

    verify_module(with_memory_constants(module, consts))
    write_module(module, output, None, consts, stem=Path(model).stem)


@cli.command("verify")
@input_argument
@handle_errors
def verify_cmd(input: str) -> None:
    """Parse and verify a module; prints nothing and exits 0 when it is well formed."""
    from mlc.ir.verify import verify_module

    src = read_module(input)
    verify_module(src.module, source=src.text)
    src.constants()  # a module is only as good as the side file it names: present, unaltered, matching


@cli.command("opt")
@input_argument
@output_option
@click.option("--pipeline", "-p", required=True, help="Pipeline YAML (configs/pipelines/*.yaml).")
@pipeline_options
@handle_errors
def opt_cmd(input: str, output: str | None, pipeline: str, instrument: Instrumentation) -> None:
    """Run a pipeline of passes from YAML."""
    from mlc.passes.pipeline import load_pipeline, run_pipeline
    from mlc.passes.registry import PassContext

    steps = load_pipeline(_existing_file(pipeline, "pipeline", regular=True))
    src = read_module(input, verify=instrument.verify_each)
    ctx = PassContext(search_dirs=src.search_dirs)
    if any(s.info.needs_constants for s in steps):
        ctx.constants = src.constants()
    module, report = run_pipeline(src.module, steps, ctx, **instrument.run_kwargs())
    instrument.report(report.timings)
    write_module(module, output, src, ctx.constants if ctx.constants_changed else None)


@cli.command("run")
@click.argument("module")
@click.option("--inputs", "-i", "inputs", default=None, help="Inputs as .npz keyed by parameter name.")
@output_option
@click.option("--func", default="main", show_default=True, help="Graph function to run.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Where to run an artifact (default: the target it was built for).")
@handle_errors
def run_cmd(module: str, inputs: str | None, output: str | None, func: str, device: str | None) -> None:
    """Run a compiled artifact (.mlc), or a text module with the numpy reference interpreter.

    Outputs go to an .npz keyed by result name (or are printed).
    """
    feeds = load_npz(inputs) if inputs else {}
    if _is_artifact(module):
        from mlc.runtime.model import load

        model = load(module, device)
        funcs = [f.name for f in model.module.graph_functions()]
        if func not in funcs:
            raise MlcError(f"{module}: no graph function '{func}' (it has {', '.join(funcs)})")
        outs = model.vm.run(feeds, func) if func != "main" else model(**feeds)
    else:
        from mlc.ir.interp import run_function

        src = read_module(module)
        outs = run_function(src.module, feeds, src.constants(), func)
    save_npz(output, outs)


def _is_artifact(path: str) -> bool:
    """By content, or by name: a damaged `.mlc` is reported as a damaged artifact, not as bad text IR."""
    from mlc.runtime.artifact import MAGIC

    if path.endswith(".mlc"):
        return True
    if not Path(path).is_file():  # a FIFO or device: sniffing would block or eat its bytes
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _emit_option(fn: Any) -> Any:
    return click.option("--emit", default="", help="Also write kernels' LLVM IR / assembly: llvm,asm (next to -o).")(fn)


def _write_build(res: Any, output: str, emit: str) -> None:
    base = Path(output)  # the artifact and its listings are one set (ir/files.write_output_set)
    write_output_set([(base, res.data),
                      (base.with_suffix(".ll"), res.llvm_ir.encode() if "llvm" in emit else None),
                      (base.with_suffix(".s"), res.asm.encode() if "asm" in emit else None),
                      # the CUDA build keeps its source where the CPU build keeps assembly
                      (base.with_suffix(".cu"), res.asm.encode() if "cuda" in emit else None)])


def _emit_set(emit: str) -> tuple[str, ...]:
    kinds = tuple(e for e in emit.split(",") if e)
    bad = [e for e in kinds if e not in ("llvm", "asm", "cuda")]
    if bad:
        raise click.BadParameter(f"unknown kind(s) {', '.join(bad)}; use llvm, asm (cpu) or cuda", param_hint="--emit")
    return kinds


@cli.command("codegen")
@input_argument
@click.option("-o", "--output", "output", required=True, help="Artifact to write (.mlc).")
@target_option
@_emit_option
@handle_errors
def codegen_cmd(input: str, output: str, target: str, emit: str) -> None:
    """Compile a module's tensor programs to native code and write the artifact."""
    from mlc.runtime.build import build_artifact

    kinds = _emit_set(emit)
    src = read_module(input, verify=True)
    _write_build(build_artifact(src.module, src.constants(), parse_target(target), kinds), output, emit)


@cli.command("build")
@click.argument("model")
@click.option("-o", "--output", "output", required=True, help="Artifact to write (.mlc).")
@target_option
@click.option("--pipeline", "-p", default=None, help="Pipeline YAML (default: configs/pipelines/build-<kind>.yaml).")
@click.option("--db", default=None, help="Tuning database (JSON lines) whose best records schedule the kernels.")
@dims_option("--dim", "dims", kind="symbol", help=DIM_HELP)
@dims_option("--dim-bound", "bounds", kind="int",
             help="Upper bound of a symbolic dim, to report the memory plan's static upper bound; repeatable.")
@_emit_option
@pipeline_options
@handle_errors
def build_cmd(model: str, output: str, target: str, pipeline: str | None, db: str | None, dims: dict[str, str],
              bounds: dict[str, int], emit: str, instrument: Instrumentation) -> None:
    """ONNX or IR -> import, shape-infer, fuse, schedule, codegen -> one artifact.

    The pipeline flags (--print-after-all, --ir-dump-dir, --verify-each, --timing) are those of `mlc opt`."""
    from mlc.compiler import build_module, with_memory_constants

    kinds = _emit_set(emit)
    if db is not None:
        _existing_file(db, "tuning database", regular=True)
    if pipeline is not None:
        _existing_file(pipeline, "pipeline", regular=True)
    if model.endswith(".onnx"):
        from mlc.frontend.onnx_import import import_onnx

        module, consts = import_onnx(_existing_file(model), dims or None)
        module, search_dirs = with_memory_constants(module, consts), [Path.cwd()]
    else:
        src = read_module(model, verify=instrument.verify_each)
        module, consts, search_dirs = src.module, src.constants(), src.search_dirs
    built = build_module(module, consts, parse_target(target), pipeline, db, search_dirs, kinds, **instrument.run_kwargs())
    instrument.report(built.report.timings)
    report_line = _plan_report(built.module, built.result, bounds)  # may fail: before anything is written
    _write_build(built.result, output, emit)
    click.echo(report_line, err=True)


def _plan_report(module: Any, res: Any, bounds: dict[str, int]) -> str:
    """One line for stderr: kernels, and the memory plan as an expression of the symbolic dims."""
    from mlc.ir.graph import Function
    from mlc.ir.memory_plan import plan_function
    from mlc.ir.printer import print_expr

    main = next((f for f in module.functions if isinstance(f, Function) and f.name == "main"), None)
    msg = f"mlc build: {len(res.kernels)} kernels"
    if main is not None:
        plan = plan_function(main)
        msg += (f"; memory plan {print_expr(plan.total_bytes)} bytes in {len(plan.token_bytes)} buffers"
                f" (without reuse {print_expr(plan.naive_bytes)})")
        if bounds:
            try:
                hi, naive = plan.evaluate(bounds)
                msg += f"; at most {hi / 1024:.1f} KiB for {', '.join(f'{k}<={v}' for k, v in bounds.items())}"
                msg += f" ({naive / 1024:.1f} KiB without reuse)"
            except ValueError as e:
                raise MlcError(f"--dim-bound: {e}") from None
    for f in module.functions:  # a training module's other functions (@grad, @train_step, @eval)
        if isinstance(f, Function) and f.name != "main":
            plan = plan_function(f)
            msg += f"; @{f.name}: memory plan {print_expr(plan.total_bytes)} bytes"
            if bounds:
                try:
                    msg += f" (at most {plan.evaluate(bounds)[0] / 1024:.1f} KiB)"
                except ValueError:
                    pass  # a dim of its own that --dim-bound does not give
    return msg


@cli.command("bench")
@click.argument("artifact")
@dims_option("--dim", "--shape", "dims", kind="int", help="Value of a symbolic dim of the inputs; repeatable.")
@click.option("--onnx", "onnx_path", default=None, help="ONNX model to time with onnxruntime (default: the source).")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed runs (after 3 warm-up runs).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Where to run (default: the target the artifact was built for).")
@click.option("--profile", is_flag=True, help="Also print each kernel's time inside the runs (CPU).")
@handle_errors
def bench_cmd(artifact: str, dims: dict[str, int], onnx_path: str | None, runs: int, device: str | None,
              profile: bool) -> None:
    """Median latency of a compiled model, beside onnxruntime's on the same inputs."""
    from mlc.runtime.bench import random_inputs, time_fn
    from mlc.runtime.model import load

    if onnx_path:  # before loading anything
        _existing_file(onnx_path, regular=True)
    model = load(artifact, device)
    if profile and not hasattr(model, "profile"):
        raise MlcError("bench --profile: per-kernel profiles are for CPU artifacts")
    main = model.module.get("main")
    feeds = random_inputs(main, dims)  # type: ignore[arg-type]
    src = onnx_path or str(model.meta.get("source") or "")
    sess, ort_names = _ort_session(src, list(feeds)) if src and Path(src).is_file() else (None, {})  # before any output
    ours = time_fn(lambda: model(**feeds), runs=runs)  # includes host<->device copies on cuda
    from mlc.ir.interp import bind_dims

    if hasattr(model, "memory_plan"):
        planned, naive = model.memory_plan(bind_dims(main, feeds))  # type: ignore[arg-type]
        click.echo(f"memory plan  {planned / 1024:.1f} KiB of intermediates ({naive / 1024:.1f} KiB without reuse)")
    click.echo(f"mlc          median {ours.median_ms:9.3f} ms  (min {ours.min_ms:.3f}, {ours.runs} runs)")
    if sess is not None:
        ort_feeds = {ort_names[k]: v for k, v in feeds.items()}
        peer = time_fn(lambda: sess.run(None, ort_feeds), runs=runs)
        click.echo(f"onnxruntime  median {peer.median_ms:9.3f} ms  (min {peer.min_ms:.3f}, {peer.runs} runs)")
        click.echo(f"speed ratio (onnxruntime / mlc): {peer.median_ms / ours.median_ms:.2f}x")
    if profile:
        _print_profile(model.profile(runs, **feeds))


def _print_profile(times: list[Any]) -> None:
    """Kernel, calls per run, median microseconds per call, share of the kernels' time."""
    total = sum(t.per_run for t in times) or 1.0
    click.echo(f"{'kernel':40s} {'calls':>6s} {'us/call':>9s} {'ms/run':>8s} {'share':>6s}")
    for t in times:
        click.echo(f"{t.func[:40]:40s} {t.calls:6.3g} {t.median * 1e6:9.1f} {t.per_run * 1e3:8.3f} "
                   f"{100 * t.per_run / total:5.1f}%")
    click.echo(f"{'all kernels':40s} {'':6s} {'':9s} {total * 1e3:8.3f}")


def _ort_session(path: str, inputs: list[str]) -> tuple[Any, dict[str, str]]:
    """An onnxruntime session on `path`, checked (by mlc's ONNX loader), and the artifact's input names
    mapped to the model's.

    The importer turns ONNX names into IR identifiers (`gpu_0/data_0` -> `gpu_0_data_0`, a clash gets
    `_1`) and keeps the graph inputs' order, so inputs pair up by position; each pair must agree
    under that renaming."""
    import re

    import onnxruntime as ort
    from mlc.frontend.onnx_import import load_model, sanitize

    model, _ = load_model(path)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs) or not all(re.fullmatch(re.escape(sanitize(n)) + r"(_\d+)?", p)
                                             for n, p in zip(names, inputs)):
        raise MlcError(f"onnx model inputs {names} differ from the artifact's {inputs}", Loc(path))
    return sess, dict(zip(inputs, names))


def load_npz(path: str) -> dict[str, np.ndarray]:
    from mlc.ir.constants import read_npz

    what = f"inputs '{path}'"  # read bounded first: /dev/zero or an endless FIFO is an error, not a hang
    return read_npz(read_bytes(_existing_file(path, "inputs"), what, max_bytes()), what)


def _existing_file(path: str, what: str = "", regular: bool = False) -> str:
    """`path`, or an MlcError saying why it cannot be read (before any work is done); `regular`: for a
    path another library opens itself, a FIFO or device is refused before its open could block."""
    p = Path(path)
    if p.is_dir() or not p.exists():
        why = "is a directory" if p.is_dir() else "no such file"
        raise MlcError(f"cannot read {what + ' ' if what else ''}'{path}': {why}")
    if regular:
        check_regular(path, f"{what + ' ' if what else ''}'{path}'")
    return path


def save_npz(output: str | None, arrays: dict[str, np.ndarray]) -> None:
    import io

    if output is None:
        for k, v in arrays.items():
            click.echo(f"{k}: {v.dtype}{list(v.shape)}\n{np.array2string(v, threshold=20)}")
        return
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(output, buf.getvalue())


@cli.command("zoo")
@click.argument("name")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Directory to write NAME.onnx into.")
@handle_errors
def zoo_cmd(name: str, output: str) -> None:
    """Write a model of the built-in zoo as ONNX."""
    from mlc.frontend import zoo

    if name not in zoo.NAMES:
        raise MlcError(f"unknown zoo model '{name}' (available: {', '.join(zoo.NAMES)})")
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MlcError(f"cannot create directory '{output}': {e.strerror}") from None
    atomic_write_bytes(Path(output) / f"{name}.onnx", zoo.build(name).SerializeToString())
    click.echo(str(Path(output) / f"{name}.onnx"))


@cli.command("doctor")
@handle_errors
def doctor_cmd() -> None:
    """Report versions, the host CPU's features, and whether CUDA is usable."""
    import llvmlite
    import llvmlite.binding as llvm
    from rich.console import Console
    from rich.table import Table

    from mlc import __version__

    t = Table(show_header=False)
    t.add_row("mlc", __version__)
    t.add_row("python", platform.python_version())
    t.add_row("numpy", np.__version__)
    t.add_row("llvmlite / LLVM", f"{llvmlite.__version__} / {'.'.join(map(str, llvm.llvm_version_info))}")
    t.add_row("host triple", llvm.get_process_triple())
    t.add_row("host cpu", llvm.get_host_cpu_name())
    feats = llvm.get_host_cpu_features()
    want = ["sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "neon"]
    t.add_row("cpu features", " ".join(f for f in want if feats.get(f, False)) or "(none of the SIMD ones)")
    t.add_row("cpu cores", str(_cores()))
    t.add_row("cuda / pycuda", _cuda_status())
    Console().print(t)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cuda_status() -> str:
    try:
        import pycuda.driver as drv  # type: ignore[import-not-found]
    except ImportError:
        return "pycuda not installed (pip install 'mlc\\[cuda]')"
    try:
        drv.init()
        n = drv.Device.count()
        if n == 0:
            return "pycuda installed, no CUDA device"
        d = drv.Device(0)
        return f"usable: {n} device(s), {d.name()} (sm_{''.join(map(str, d.compute_capability()))})"
    except Exception as e:  # pycuda raises its own error types when the driver is missing
        return f"pycuda installed, CUDA unusable: {e}"


def _make_stage_command(name: str) -> None:
    """`mlc NAME IN -o OUT --option ...` for a registered pass."""
    from mlc.passes.registry import get_pass

    info = get_pass(name)
    assert info is not None

    @handle_errors
    def cmd(input: str, output: str | None, no_verify: bool, timing: bool, **opts: Any) -> None:
        run_stage(name, input, output, opts, verify=not no_verify, timing=timing)

    params: list[click.Parameter] = [
        click.Argument(["input"], default="-", required=False),
        click.Option(["-o", "--output", "output"], default=None, help="Output file (default: stdout)."),
        click.Option(["--no-verify"], is_flag=True, help="Skip verification of the result."),
        click.Option(["--timing"], is_flag=True, help="Print the pass's wall time."),
    ]
    for o in info.options:
        flag = "--" + o.name.replace("_", "-")
        if o.type is bool:
            params.append(click.Option([f"{flag}/--no-{flag[2:]}", o.name], default=o.default, help=o.help))
        else:
            typ: Any = click.Choice(o.choices) if o.choices else o.type
            params.append(click.Option([flag, o.name], type=typ, default=o.default, show_default=True, help=o.help))
    cli.add_command(click.Command(name, callback=cmd, params=params, help=info.doc or f"Run the {name} pass.",
                                  short_help=(info.doc.splitlines()[0] if info.doc else None)))


def _register_stages() -> None:
    from mlc.passes.registry import all_passes

    for name in all_passes():
        if name not in cli.commands:
            _make_stage_command(name)


def _register_groups() -> None:
    from .ann import ann_index
    from .export import export_cmd
    from .sparse import sparse_inputs_cmd, sparse_kernel_cmd
    from .train import train_cmd
    from .tune import tune_cmd

    cli.add_command(tune_cmd, "tune")
    cli.add_command(train_cmd, "train")
    cli.add_command(export_cmd, "export")
    cli.add_command(ann_index, "ann-index")
    cli.add_command(sparse_kernel_cmd, "sparse-kernel")
    cli.add_command(sparse_inputs_cmd, "sparse-inputs")


_register_stages()
_register_groups()
