"""Shared by the CUDA tests and benchmarks: zoo models lowered to tensor programs, small GEMMs."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from mlc.ir.expr import Expr
from mlc.ir.module import ConstantsRef, Module
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rsum
from mlc.passes.pipeline import load_pipeline, run_pipeline
from mlc.passes.registry import PassContext
from mlc.runtime.artifact import pack_params


def lowered_zoo(name: str) -> tuple[Module, dict[str, np.ndarray]]:
    """A zoo model imported and run through the build pipeline up to fusion (lowered, unscheduled)."""
    from mlc.frontend import zoo
    from mlc.frontend.onnx_import import import_onnx

    mod, consts = import_onnx(zoo.build(name))
    mod = dataclasses.replace(mod, constants=ConstantsRef("<memory>", hashlib.sha256(pack_params(consts)).hexdigest()))
    ctx = PassContext(constants=consts, search_dirs=[], target="cpu")
    steps = load_pipeline("configs/pipelines/lower.yaml")  # up to fusion: block form, unscheduled
    mod, _ = run_pipeline(mod, steps, ctx, verify_each=True)
    return mod, ctx.constants or consts


def row_op_func(op: str, shape: tuple[Expr | int, ...], dtype: str = "f32", name: str | None = None) -> PrimFunc:
    """The fused program of one graph op along the last axis (softmax, log_softmax, layer_norm: then
    with scale and shift params of the last dim), through the build pipeline up to fusion."""
    from mlc.ir import Binding, Block, Const, Function, OpCall, TensorType, UnknownType, Value, attrs_of
    from mlc.ir.expr import Var

    dims = tuple(Const(d) if isinstance(d, int) else d for d in shape)
    assert all(isinstance(d, Const | Var) for d in dims)
    params = [Value("x", TensorType(dims, dtype))]
    if op == "layer_norm":
        params += [Value("g", TensorType(dims[-1:], dtype)), Value("beta", TensorType(dims[-1:], dtype))]
    y = Value("y", UnknownType())
    m = Module((Function("main", tuple(params), Block((Binding(y, OpCall(op, tuple(params), attrs_of({"axis": -1}))),),
                                                      (y,))),))
    m, _ = run_pipeline(m, load_pipeline("configs/pipelines/lower.yaml"), PassContext(constants={}, search_dirs=[]),
                        verify_each=True)
    (f,) = m.prim_functions()
    return dataclasses.replace(f, name=name) if name else f


def matmul(name: str, m: int | Expr, n: int, k: int, dtype: str) -> PrimFunc:
    a, b = placeholder("A", (m, k), dtype), placeholder("B", (k, n), dtype)
    r = reduce_axis(k, "k")
    c = compute("C", (m, n), lambda i, j: rsum(a[i, r] * b[r, j], r))
    return build(name, [a, b], [c])


# ---- fixtures for machines without onnx/onnxruntime (the GPU machine) ---------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "build" / "cuda_zoo"
SETTINGS = ({"N": 2, "S": 5, "B": 2, "T": 7, "V": 6}, {"N": 3, "S": 1, "B": 1, "T": 12, "V": 11},
            {"N": 33, "S": 9, "B": 3, "T": 64, "V": 40})


def have_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def zoo_case(name: str, k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs by graph param name, onnxruntime's outputs by graph result name) for setting k."""
    if not have_onnx():
        data = np.load(FIXTURES / f"{name}.case{k}.npz", allow_pickle=False)
        return ({n[3:]: data[n] for n in data.files if n.startswith("in_")},
                {n[4:]: data[n] for n in data.files if n.startswith("out_")})
    import onnx
    import onnxruntime as ort
    from mlc.frontend import zoo
    from mlc.frontend.onnx_import import sanitize

    model = zoo.build(name)
    rng = np.random.default_rng(k)
    feeds = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else SETTINGS[k][d.dim_param] for d in tt.shape.dim]
        feeds[vi.name] = (rng.integers(0, 40, shape).astype(np.int64) if tt.elem_type == onnx.TensorProto.INT64
                          else rng.standard_normal(shape).astype(np.float32))
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return ({sanitize(n): v for n, v in feeds.items()},
            {sanitize(o.name): w for o, w in zip(model.graph.output, want)})


def zoo_names() -> list[str]:
    if have_onnx():
        from mlc.frontend import zoo

        return [n for n in zoo.NAMES if n != "default"]
    return sorted(p.name[:-3] for p in FIXTURES.glob("*.ir"))


def zoo_module(name: str) -> tuple[Module, dict[str, np.ndarray]]:
    """`lowered_zoo`, or its saved text and constants where onnx is not installed."""
    if have_onnx():
        return lowered_zoo(name)
    from mlc.ir.parser import parse_module

    consts = np.load(FIXTURES / f"{name}.consts.npz", allow_pickle=False)
    return parse_module((FIXTURES / f"{name}.ir").read_text()), {k: consts[k] for k in consts.files}


def export_fixtures() -> None:
    """Write every zoo model's lowered IR, constants and onnxruntime cases under build/cuda_zoo/."""
    from mlc.ir.printer import print_module

    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in zoo_names():
        mod, consts = lowered_zoo(name)
        (FIXTURES / f"{name}.ir").write_text(print_module(mod))
        np.savez(FIXTURES / f"{name}.consts.npz", **consts)
        for k in range(len(SETTINGS)):
            ins, outs = zoo_case(name, k)
            np.savez(FIXTURES / f"{name}.case{k}.npz", **{f"in_{n}": v for n, v in ins.items()},
                     **{f"out_{n}": v for n, v in outs.items()})


if __name__ == "__main__":
    export_fixtures()
