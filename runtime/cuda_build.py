"""Artifacts for target cuda: CUDA C, its cubin and launch metadata beside the program and params.

`build_cuda_artifact` mirrors `build.build_artifact` for the GPU (default GPU schedules are applied
to tensor programs that have no thread bindings). `CudaModel` is `mlc.load` for such artifacts.
Without pycuda or a GPU both raise one clear MlcError.
"""

from __future__ import annotations

import json

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Function
from mlc.ir.module import Module
from mlc.ir.target import Target

from mlc import __version__

from .artifact import Artifact, dumps, pack_params
from .build import BuildResult, used_constants

CUDA_SECTIONS = ("cuda_source", "cubin", "cuda_meta")


def build_cuda_artifact(module: Module, constants: dict[str, np.ndarray], target: Target,
                        emit: tuple[str, ...] = ()) -> BuildResult:
    from mlc.codegen.cuda_jit import build_cuda
    from mlc.ir.printer import print_module

    prims = module.prim_functions()
    src, cubin = build_cuda(prims, target.nvcc_arch) if prims else (None, b"")
    used = used_constants(module)
    missing = sorted(used - set(constants))
    if missing:
        raise MlcError(f"constants missing from the side file: {', '.join(missing[:5])}")
    program = Module(module.functions, module.meta, None, module.loc)
    sections = {
        "program": print_module(program).encode(),
        "cuda_source": src.source.encode() if src else b"",
        "cubin": cubin,
        "cuda_meta": src.metadata().encode() if src else b'{"version": 1, "kernels": []}',
        "params": pack_params({k: constants[k] for k in sorted(used)}),
        "kernels": json.dumps(sorted(p.name for p in prims)).encode(),
    }
    meta = {"mlc_version": __version__, "target": "cuda", "arch": src.arch if src else "",
            "source": dict(module.meta).get("source", "")}
    res = BuildResult(dumps(Artifact(sections, meta)), kernels=[p.name for p in prims])
    if src is not None and ("llvm" in emit or "asm" in emit or "cuda" in emit):
        res.asm = src.source  # the CUDA C is this target's "assembly" listing
    return res


class CudaModel:
    """`outputs = model(x=array, ...)` on the GPU (inputs/outputs are host arrays)."""

    def __init__(self, art: Artifact, name: str = "<artifact>"):
        from mlc.codegen.cuda_jit import CudaLibrary
        from mlc.ir.parser import parse_module

        from .cuda_vm import CudaVM

        if art.meta.get("target") != "cuda" or "cubin" not in art.sections:
            raise MlcError(f"{name}: not a cuda artifact (target {art.meta.get('target', '?')}); rebuild with --target cuda")
        try:
            program = art.sections["program"].decode()
            meta = art.sections["cuda_meta"].decode()
        except (KeyError, UnicodeDecodeError):
            raise MlcError(f"{name}: artifact has no readable program/cuda_meta section") from None
        self.module = parse_module(program, f"{name}:program")
        self.meta = art.meta
        cubin = art.sections["cubin"]
        self.library = CudaLibrary(cubin, meta, art.sections.get("cuda_source", b"").decode()) if cubin else None
        self.params = art.params()
        self.vm = CudaVM(self.module, self.params, self.library)

    @property
    def input_names(self) -> list[str]:
        fn = self.module.get("main")
        assert isinstance(fn, Function)
        return [p.name for p in fn.params]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self.vm.run(inputs)
