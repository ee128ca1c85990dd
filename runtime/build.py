"""From a module to an artifact: one writer for every target kind.

The target's device (runtime/device.py) compiles the tensor programs into its sections; the graph
functions become the runtime program, and the constants they use the params.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.module import Module
from mlc.ir.target import Target

from mlc import __version__

from .artifact import Artifact, dumps, pack_params
from .device import device


@dataclass
class BuildResult:
    data: bytes
    llvm_ir: str = ""
    asm: str = ""
    kernels: list[str] = field(default_factory=list)


def build_artifact(module: Module, constants: dict[str, np.ndarray], target: str | Target = "cpu",
                   emit: tuple[str, ...] = (), opt_level: int = 3) -> BuildResult:
    """Compile every tensor program for `target`; the graph functions become the runtime program."""
    from mlc.ir.printer import print_module

    target = Target.parse(target)
    used = used_constants(module)
    missing = sorted(used - set(constants))
    if missing:
        raise MlcError(f"constants missing from the side file: {', '.join(missing[:5])}")
    prims = module.prim_functions()
    code = device(target.kind).compile(prims, target, emit, opt_level)
    program = Module(module.functions, module.meta, None, module.loc)
    sections = {
        "program": print_module(program).encode(),
        **code.sections,
        "params": pack_params({k: constants[k] for k in sorted(used)}),
        "kernels": json.dumps(sorted(p.name for p in prims)).encode(),
    }
    meta = {"mlc_version": __version__, "target": target.kind, "source": dict(module.meta).get("source", ""),
            **code.meta}
    return BuildResult(dumps(Artifact(sections, meta)), code.llvm_ir, code.asm, [p.name for p in prims])


def used_constants(module: Module) -> set[str]:
    from mlc.ir.graph import Constant
    from mlc.ir.rewrite import walk_bindings

    return {b.node.key for f in module.graph_functions() for b in walk_bindings(f.body) if isinstance(b.node, Constant)}
