"""On an NVIDIA GPU: compiled CUDA kernels and whole zoo models against independent oracles
(numpy, the TIR interpreter, onnxruntime). Skipped with the reason when pycuda or a GPU is absent."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import SETTINGS, matmul, zoo_case, zoo_module, zoo_names
from mlc.ir import arith
from mlc.ir.expr import Var
from mlc.ir.tir_interp import run_prim
from mlc.passes.schedule.gpu_rules import default_gpu_schedule
from mlc.runtime.cuda import cuda_unavailable

_WHY = cuda_unavailable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")]


@pytest.mark.parametrize("name", zoo_names())
def test_zoo_model_on_gpu_matches_onnxruntime(name: str) -> None:
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM

    mod, consts = zoo_module(name)
    vm = CudaVM(mod, consts, compile_cuda([default_gpu_schedule(f) for f in mod.prim_functions()]))
    for k in range(len(SETTINGS)):
        feeds, want = zoo_case(name, k)
        got = vm.run(feeds)
        again = vm.run(feeds)  # a replay of the recorded launches where the function is straight-line
        for o, w in want.items():
            assert got[o].shape == w.shape
            np.testing.assert_allclose(got[o], w, rtol=1e-4, atol=1e-5, err_msg=f"{name}:{o} {SETTINGS[k]}")
            np.testing.assert_array_equal(again[o], got[o])


def test_zoo_artifact_roundtrip_on_gpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlc.runtime.artifact import read
    from mlc.runtime.build import build_artifact
    from mlc.runtime.model import Model

    mod, consts = zoo_module("gpt_block")
    for f in mod.prim_functions():
        mod = mod.with_function(default_gpu_schedule(f))
    (tmp_path / "g.mlc").write_bytes(build_artifact(mod, consts, "cuda").data)
    model = Model(read(tmp_path / "g.mlc"))
    feeds, want = zoo_case("gpt_block", 0)
    got = model(**feeds)
    for o, w in want.items():
        np.testing.assert_allclose(got[o], w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("m,n,k", [(300, 256, 128), (128, 264, 40), (2048, 512, 1024)])
def test_f16_gemm_on_tensor_cores(m: int, n: int, k: int) -> None:
    from mlc.runtime.cuda import compile_cuda

    lib = compile_cuda([default_gpu_schedule(matmul("h", Var("m"), n, k, "f16"))])
    assert "mlc_wmma_gemm" in lib.source
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float16)
    b = rng.standard_normal((k, n)).astype(np.float16)
    c = np.zeros((m, n), np.float16)
    lib.kernel("h")([a, b, c])
    want = a.astype(np.float32) @ b.astype(np.float32)
    np.testing.assert_allclose(c.astype(np.float32), want, rtol=2e-2, atol=2e-2 * np.sqrt(k))


@pytest.mark.parametrize("m,n,k", [(300, 256, 128), (1024, 1024, 1024)])
def test_f32_gemm_register_tiles(m: int, n: int, k: int) -> None:
    from mlc.runtime.cuda import compile_cuda

    lib = compile_cuda([default_gpu_schedule(matmul("s", Var("m"), n, k, "f32"))])
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    lib.kernel("s")([a, b, c])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-3)


def test_every_gpt_kernel_matches_the_interpreter() -> None:
    from mlc.runtime.cuda import compile_cuda

    mod, _ = zoo_module("gpt_block")
    prims = mod.prim_functions()
    lib = compile_cuda([default_gpu_schedule(f) for f in prims])
    rng = np.random.default_rng(4)
    env = {"B": 3, "T": 37}
    for f in prims:
        arrays = []
        for b in f.params:
            shape = tuple(arith.evaluate(d, env) for d in b.shape)
            arrays.append(rng.standard_normal(shape).astype(np.float32) if b.dtype == "f32"
                          else rng.integers(0, 2, shape).astype(bool))
        ins = arrays[: len(arrays) - f.num_outputs]
        want = [np.zeros_like(a) for a in arrays[len(ins):]]
        got = [np.zeros_like(a) for a in arrays[len(ins):]]
        run_prim(f, ins + want)
        lib.kernel(f.name)(ins + got)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f.name)


def test_device_memory_is_planned_and_reused() -> None:
    """Arenas persist across calls; a repeated call with the same dims replays the recorded launches
    (new input values, checked against the reference interpreter)."""
    from mlc.ir.interp import run_function
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM

    mod, consts = zoo_module("gpt_block")
    vm = CudaVM(mod, consts, compile_cuda([default_gpu_schedule(f) for f in mod.prim_functions()]))
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 9, 32)).astype(np.float32) for _ in range(3)]
    first = vm.run({"x": xs[0]})  # allocates the arenas (a moving arena voids a recording)
    arenas = dict(vm._arenas)
    assert not vm._tapes
    np.testing.assert_array_equal(vm.run({"x": xs[0]})["y"], first["y"])  # records
    assert len(vm._tapes) == 1
    for x in xs[1:]:
        got = vm.run({"x": x})
        want = run_function(mod, {"x": x}, consts)
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-4, atol=1e-5)
    assert vm._arenas == arenas and len(vm._tapes) == 1
    np.testing.assert_array_equal(vm.run({"x": xs[0]})["y"], first["y"])


@pytest.mark.parametrize("name", ["gpt_block", "resnext"])
def test_cuda_build_pipeline_schedules_match_onnxruntime(name: str) -> None:
    # what `mlc build --target cuda` runs: the schedule pass (GPU design space's default point)
    # before codegen, instead of codegen's own defaults
    from mlc.passes.pipeline import parse_pipeline, run_pipeline
    from mlc.passes.registry import PassContext
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM

    mod, consts = zoo_module(name)
    mod, _ = run_pipeline(mod, parse_pipeline("passes: [schedule]", "t"), PassContext(constants=consts, target="cuda"),
                          verify_each=True)
    vm = CudaVM(mod, consts, compile_cuda([default_gpu_schedule(f) for f in mod.prim_functions()]))
    feeds, want = zoo_case(name, 0)
    got = vm.run(feeds)
    for o, w in want.items():
        np.testing.assert_allclose(got[o], w, rtol=1e-4, atol=1e-5, err_msg=f"{name}:{o}")


@pytest.mark.parametrize("op,dtype", [("min", "i16"), ("max", "u8"), ("max", "i64"), ("min", "u32")])
def test_integer_row_reductions_and_pow_on_gpu(op: str, dtype: str) -> None:
    """Cross-thread reductions start from the type's identity (the CUDA table once gave 127 for min
    over i16 and 128 for max over u8), and integer pow is exact square-and-multiply, as on the CPU."""
    from mlc.ir.expr import Bin
    from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rmax, rmin
    from mlc.passes.schedule.gpu_rules import default_gpu_schedule
    from mlc.runtime.cuda import compile_cuda

    n = Var("n")
    x = placeholder("x", (n, 300), dtype)
    e = placeholder("e", (n, 300), dtype)
    r = reduce_axis(300, "r")
    red = compute("m", (n,), lambda i: (rmin if op == "min" else rmax)(x[i, r], r))
    pw = compute("p", (n, 300), lambda i, j: Bin("pow", x[i, j], e[i, j]))
    prims = [default_gpu_schedule(build("red", [x], [red])), default_gpu_schedule(build("pw", [x, e], [pw]))]
    lib = compile_cuda(prims)
    info = np.iinfo(np.dtype({"i16": "int16", "u8": "uint8", "i64": "int64", "u32": "uint32"}[dtype]))
    rng = np.random.default_rng(0)
    xs = rng.integers(max(info.min, -9), min(info.max, 9), (5, 300)).astype(info.dtype)
    xs[0] = info.max if op == "min" else info.min  # a row that is all the identity's neighbour
    es = rng.integers(0, min(info.max, 40), (5, 300)).astype(info.dtype)
    got = np.zeros(5, info.dtype)
    lib.kernel("red")([xs, got])
    np.testing.assert_array_equal(got, xs.min(axis=1) if op == "min" else xs.max(axis=1))
    p = np.zeros_like(xs)
    lib.kernel("pw")([xs, es, p])
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(p, np.power(xs, es))


@pytest.mark.parametrize("n", [64, 256])
def test_f16_matmul_model_through_the_cuda_build(n: int) -> None:
    """An f16 MatMul + Add model through `mlc.compile(target="cuda")`: the GEMM accumulates in f32 (the
    lowering's f16 sums do) and its result is rounded once, as onnxruntime's."""
    import onnx
    from onnx import helper, numpy_helper

    import mlc

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float16)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, ["b", n])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, ["b", n])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "bias"], ["y"])],
                          "g", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")])
    model = mlc.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), target="cuda")
    xs = rng.standard_normal((96, n)).astype(np.float16)
    want = (xs.astype(np.float32) @ w.astype(np.float32) + bias.astype(np.float32)).astype(np.float16)
    got = model(x=xs)["y"]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
