"""From a module to an artifact: compile its tensor programs and pack program, code and params."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.module import Module
from mlc.ir.target import Target

from mlc import __version__

from .artifact import Artifact, dumps, pack_params


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
    if target.gpu:
        from .cuda_build import build_cuda_artifact

        return build_cuda_artifact(module, constants, target, emit)
    from mlc.codegen.cpu import host_target
    from mlc.codegen.jit import compile_module

    prims = module.prim_functions()
    host = host_target()
    lib = compile_module(prims, host, opt_level) if prims else None
    program = Module(module.functions, module.meta, None, module.loc)
    used = used_constants(module)
    missing = sorted(used - set(constants))
    if missing:
        raise MlcError(f"constants missing from the side file: {', '.join(missing[:5])}")
    sections = {
        "program": print_module(program).encode(),
        "object": lib.object_code if lib else b"",
        "params": pack_params({k: constants[k] for k in sorted(used)}),
        "kernels": json.dumps(sorted(p.name for p in prims)).encode(),
    }
    meta = {"mlc_version": __version__, "target": target.kind, "source": dict(module.meta).get("source", ""),
            "triple": host.triple, "cpu": host.cpu, "cpu_features": sorted(host.feature_set)}
    res = BuildResult(dumps(Artifact(sections, meta)), kernels=[p.name for p in prims])
    if lib is not None and "llvm" in emit:
        res.llvm_ir = lib.llvm_ir()
    if lib is not None and "asm" in emit:
        res.asm = lib.emit_asm()
    return res


def used_constants(module: Module) -> set[str]:
    from mlc.ir.graph import Constant
    from mlc.ir.rewrite import walk_bindings

    return {b.node.key for f in module.graph_functions() for b in walk_bindings(f.body) if isinstance(b.node, Constant)}
