"""Shared by the CUDA tests and benchmarks: zoo models lowered to tensor programs, small GEMMs."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from mlc.frontend import zoo
from mlc.frontend.onnx_import import import_onnx
from mlc.ir.expr import Expr
from mlc.ir.module import ConstantsRef, Module
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rsum
from mlc.passes.pipeline import load_pipeline, run_pipeline
from mlc.passes.registry import PassContext
from mlc.runtime.artifact import pack_params


def lowered_zoo(name: str) -> tuple[Module, dict[str, np.ndarray]]:
    """A zoo model imported and run through the build pipeline (fused, lowered, unscheduled)."""
    mod, consts = import_onnx(zoo.build(name))
    mod = dataclasses.replace(mod, constants=ConstantsRef("<memory>", hashlib.sha256(pack_params(consts)).hexdigest()))
    ctx = PassContext(constants=consts, search_dirs=[], target="cpu")
    mod, _ = run_pipeline(mod, load_pipeline("configs/pipelines/build-cpu.yaml"), ctx, verify_each=True)
    return mod, ctx.constants or consts


def matmul(name: str, m: int | Expr, n: int, k: int, dtype: str) -> PrimFunc:
    a, b = placeholder("A", (m, k), dtype), placeholder("B", (k, n), dtype)
    r = reduce_axis(k, "k")
    c = compute("C", (m, n), lambda i, j: rsum(a[i, r] * b[r, j], r))
    return build(name, [a, b], [c])
