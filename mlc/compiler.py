"""The build driver shared by `mlc build` and the Python API `mlc.compile`.

One function takes an imported (or parsed) module through a build pipeline to an artifact, so the
command line and Python callers cannot drift apart; `compile` adds the ONNX import in front and
loads the artifact from memory behind (no files are written).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlc.ir.diagnostics import MlcError
from mlc.ir.module import ConstantsRef, Module
from mlc.ir.target import Target

if TYPE_CHECKING:
    from mlc.passes.pipeline import PipelineReport
    from mlc.runtime.build import BuildResult


def default_pipeline(name: str) -> Path:
    """A pipeline shipped as package data (configs/pipelines/NAME.yaml), editable install or wheel alike."""
    return Path(str(resources.files("mlc.configs").joinpath("pipelines", f"{name}.yaml")))


@dataclass
class Built:
    """What a build produced: the scheduled module, the artifact and the pass timings."""

    module: Module
    result: BuildResult
    report: PipelineReport


def with_memory_constants(module: Module, consts: dict[str, np.ndarray]) -> Module:
    """Name in-memory constants in the module, as a side file would be (the verifier wants a reference)."""
    from mlc.runtime.artifact import pack_params

    digest = hashlib.sha256(pack_params(consts)).hexdigest()
    return dataclasses.replace(module, constants=ConstantsRef("<memory>", digest))


def build_module(module: Module, constants: dict[str, np.ndarray], target: str | Target = "cpu",
                 pipeline: str | Path | None = None, db: str | None = None,
                 search_dirs: Sequence[Path] = (), emit: tuple[str, ...] = (), *, verify_each: bool = True,
                 print_after: Callable[[str, Module], None] | None = None, dump_dir: Path | None = None) -> Built:
    """Run the build pipeline of `target` (or `pipeline`) over `module`, then compile it to an artifact.

    `verify_each`, `print_after` and `dump_dir` are the pass manager's instrumentation, as in
    `passes.pipeline.run_pipeline` (`mlc build --no-verify-each / --print-after-all / --ir-dump-dir`)."""
    from mlc.passes.pipeline import load_pipeline, run_pipeline
    from mlc.passes.registry import PassContext
    from mlc.runtime.build import build_artifact

    target = Target.parse(target)
    if pipeline is None:
        pipeline = default_pipeline(f"build-{target.kind}")
    ctx = PassContext(constants=constants, search_dirs=list(search_dirs) or [Path.cwd()], target=str(target))
    steps = load_pipeline(pipeline)
    if db is not None:
        for s in steps:
            if "db" in {o.name for o in s.info.options}:
                s.options["db"] = db
    module, report = run_pipeline(module, steps, ctx, verify_each, print_after, dump_dir)
    return Built(module, build_artifact(module, ctx.constants or {}, target, emit), report)


def compile(model: Any, target: str | Target = "cpu", dims: dict[str, str] | None = None,  # noqa: A001 - the API's name
            db: str | None = None) -> Any:
    """ONNX model (a path, bytes or an `onnx.ModelProto`) -> a callable `Model`, with no files left behind.

    `dims` names dynamic axes (dim_param or `input:axis` -> symbol or integer), as `mlc build --dim`."""
    from mlc.frontend.onnx_import import import_onnx
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    module, consts = import_onnx(model, _dim_names(dims))
    built = build_module(with_memory_constants(module, consts), consts, target, db=db)
    return model_from_artifact(loads(built.result.data), "<mlc.compile>")


def _dim_names(dims: dict[str, Any] | None) -> dict[str, str] | None:
    """`compile(dims=...)` values as the importer takes them: a symbol, or a positive integer (int or digits)."""
    if not dims:
        return None
    out: dict[str, str] = {}
    for k, v in dims.items():
        s = str(v).strip()
        if isinstance(v, bool) or not (s.isidentifier() or (s.isdigit() and int(s) > 0)):
            raise MlcError(f"dims[{k!r}]: expected a symbol or a positive integer, got {v!r}")
        out[str(k)] = str(int(s)) if s.isdigit() else s
    return out
