"""Running a sequence of passes, as LLVM's and MLIR's pass managers do.

Verification after each pass (`verify_each`), the module after each pass printed
(`print_after_all`) or dumped to files (`ir_dump_dir`), and wall time per pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlc.ir.diagnostics import Loc, MlcError
from mlc.ir.module import Module

from .registry import PassContext, PassInfo, get_pass


@dataclass(frozen=True)
class Step:
    info: PassInfo
    options: dict[str, Any]


@dataclass
class PipelineReport:
    timings: list[tuple[str, float]] = field(default_factory=list)


def parse_pipeline(text: str, filename: str) -> list[Step]:
    """A pipeline YAML: `passes:` a list of names or one-key maps `{name: {option: value}}`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is None:
            raise MlcError(f"{filename}: invalid YAML: {e}") from None
        lines = text.splitlines()
        src = lines[mark.line] if 0 <= mark.line < len(lines) else None
        raise MlcError(f"invalid YAML: {getattr(e, 'problem', e)}", Loc(filename, mark.line + 1, mark.column + 1),
                       src) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("passes"), list):
        raise MlcError(f"{filename}: a pipeline is a mapping with a 'passes:' list")
    steps: list[Step] = []
    for i, item in enumerate(doc["passes"]):
        if isinstance(item, str):
            name, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, opts = next(iter(item.items()))
            opts = opts or {}
            if not isinstance(opts, dict):
                raise MlcError(f"{filename}: pass #{i + 1} '{name}': options must be a mapping")
        else:
            raise MlcError(f"{filename}: pass #{i + 1}: expected a pass name or {{name: {{options}}}}")
        info = get_pass(str(name))
        if info is None:
            raise MlcError(f"{filename}: pass #{i + 1}: unknown pass '{name}'")
        try:
            steps.append(Step(info, info.validate_options(opts)))
        except MlcError as e:
            raise MlcError(f"{filename}: pass #{i + 1}: {e.message}") from None
    return steps


def load_pipeline(path: str | Path) -> list[Step]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise MlcError(f"cannot read pipeline '{path}': {e.strerror}") from None
    except UnicodeDecodeError:
        raise MlcError(f"cannot read pipeline '{path}': not a UTF-8 text file") from None
    return parse_pipeline(text, str(path))


def run_pipeline(
    module: Module,
    steps: list[Step],
    ctx: PassContext,
    verify_each: bool = True,
    print_after: Callable[[str, Module], None] | None = None,
    dump_dir: Path | None = None,
) -> tuple[Module, PipelineReport]:
    from mlc.ir.printer import print_module
    from mlc.ir.verify import verify_module

    report = PipelineReport()
    for i, step in enumerate(steps):
        t0 = time.perf_counter()
        module = step.info.fn(module, ctx, **step.options)
        report.timings.append((step.info.name, time.perf_counter() - t0))
        if print_after is not None:
            print_after(step.info.name, module)
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)
            (dump_dir / f"{i + 1:02d}-{step.info.name}.ir").write_text(print_module(module))
        if verify_each:
            try:
                verify_module(module)
            except MlcError as e:
                raise MlcError(f"module does not verify after pass '{step.info.name}': {e.message}", e.loc,
                               e.source_line) from None
    return module, report
