"""conv-to-gemm (passes/conv_gemm.py) and the im2col op: convolutions as im2col + matmul in the CUDA build.

Oracles: the numpy reference interpreter (ir/interp.py; conv2d's reference is an einsum over windows,
independent of im2col's), a CPU build of the rewritten graph, the TIR interpreter on the CUDA-scheduled
programs, nvcc, and on a GPU the compiled kernels against numpy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mlc.codegen.cuda_jit import build_cuda
from mlc.ir import arith
from mlc.ir.expr import Const, Var
from mlc.ir.graph import Binding, Block, CallTensor, Constant, Function, OpCall, Value, attrs_of
from mlc.ir.interp import run_function
from mlc.ir.module import Module
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.tir import GemmCall
from mlc.ir.tir_visit import walk
from mlc.ir.types import TensorType, UnknownType
from mlc.passes.pipeline import load_pipeline, run_pipeline
from mlc.passes.registry import PassContext, get_pass
from mlc.passes.shape_infer import ShapeInfer
from mlc.runtime.artifact import loads
from mlc.runtime.cuda import cuda_unavailable
from mlc.runtime.model import model_from_artifact

from mlc.compiler import build_module, default_pipeline, with_memory_constants

NVCC = shutil.which("nvcc")
ROOT = Path(__file__).resolve().parents[1]


def conv_to_gemm(mod: Module, consts: dict[str, np.ndarray], **opts: int | bool) -> tuple[Module, dict[str, np.ndarray]]:
    info = get_pass("conv-to-gemm")
    assert info is not None
    ctx = PassContext(constants=dict(consts), sink=None)
    out = info.fn(mod, ctx, **info.validate_options(opts))
    return out, ctx.constants if ctx.constants is not None else consts


# ---- the pass, as text -------------------------------------------------------------------------------
BEFORE = """\
mlc.module v1

graph @main(%x: tensor<n x 3 x 9 x 7 x f32>, %w: tensor<8 x 3 x 3 x 3 x f32>) {
  %y: tensor<n x 8 x 5 x 7 x f32> = conv2d(%x, %w) {strides = (2, 1), pads = (1, 1, 1, 1)}
  %r: tensor<n x 8 x 5 x 7 x f32> = relu(%y)
  return %r
}
"""

AFTER = """\
mlc.module v1

graph @main(%x: tensor<n x 3 x 9 x 7 x f32>, %w: tensor<8 x 3 x 3 x 3 x f32>) {
  %y_cols: tensor<n x 35 x 32 x f32> = im2col(%x) {kernel_shape = (3, 3), pad_k = 5, pads = (1, 1, 1, 1), strides = (2, 1)}
  %y_w_hwio: tensor<3 x 3 x 3 x 8 x f32> = transpose(%w) {perm = (2, 3, 1, 0)}
  %y_w_kxco: tensor<27 x 8 x f32> = reshape(%y_w_hwio) {shape = (27, 8)}
  %y_wt: tensor<32 x 8 x f32> = pad(%y_w_kxco) {pads = (0, 0, 5, 0)}
  %y_gemm: tensor<n x 35 x 8 x f32> = matmul(%y_cols, %y_wt)
  %y_nchw: tensor<n x 8 x 35 x f32> = transpose(%y_gemm) {perm = (0, 2, 1)}
  %y: tensor<n x 8 x 5 x 7 x f32> = reshape(%y_nchw) {shape = (n, 8, 5, 7)}
  %r: tensor<n x 8 x 5 x 7 x f32> = relu(%y)
  return %r
}
"""


def test_pass_before_after_text() -> None:
    """A weight that is a parameter (with computed_weights): transposed to (kh, kw, C, CO), reshaped and
    padded by graph ops (K = 27 -> 32); the conv's value keeps its name and type, so its users do not change."""
    assert print_module(conv_to_gemm(parse_module(BEFORE), {})[0]) == BEFORE  # by default only constant weights
    mod, _ = conv_to_gemm(parse_module(BEFORE), {}, computed_weights=True, min_size=1, co_multiple=1)
    assert print_module(mod) == AFTER
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(run_function(mod, {"x": x, "w": w})["r"],
                               run_function(parse_module(BEFORE), {"x": x, "w": w})["r"], rtol=1e-5, atol=1e-5)


GROUPED = """\
mlc.module v1

graph @main(%x: tensor<n x 4 x 6 x 6 x f32>, %w: tensor<4 x 1 x 3 x 3 x f32>) {
  %y: tensor<n x 4 x 4 x 4 x f32> = conv2d(%x, %w) {groups = 4}
  return %y
}
"""


def test_grouped_convolutions_stay() -> None:
    mod, _ = conv_to_gemm(parse_module(GROUPED), {}, computed_weights=True, min_size=1, co_multiple=1)
    assert print_module(mod) == GROUPED


def _conv_module(n: Var | int, c: int, hw: tuple[int, int], co: int, k: tuple[int, int], attrs: dict,
                 bias: bool, weight_const: bool, dtype: str = "f32") -> tuple[Module, dict[str, np.ndarray]]:
    """x -> conv2d(x, w) [+ b] with w (and b) constants or parameters; results named `out`."""
    rng = np.random.default_rng(c * 131 + co)
    np_dt = np.float32 if dtype == "f32" else np.float16
    consts = {"w": rng.standard_normal((co, c) + k).astype(np_dt), "b": rng.standard_normal((1, co, 1, 1)).astype(np_dt)}
    dim = n if isinstance(n, Var) else Const(n)
    x = Value("x", TensorType((dim, Const(c), Const(hw[0]), Const(hw[1])), dtype))
    params, bindings = [x], []
    w = Value("w", TensorType(tuple(Const(d) for d in consts["w"].shape), dtype))
    b = Value("b", TensorType((Const(1), Const(co), Const(1), Const(1)), dtype))
    for v in (w, b) if bias else (w,):
        if weight_const:
            bindings.append(Binding(v, Constant(v.name)))
        else:
            params.append(v)
    y = Value("out" if not bias else "y", UnknownType())
    bindings.append(Binding(y, OpCall("conv2d", (x, w), attrs_of(attrs))))
    if bias:
        y2 = Value("out", UnknownType())
        bindings.append(Binding(y2, OpCall("add", (y, b))))
        y = y2
    mod = Module((Function("main", tuple(params), Block(tuple(bindings), (y,))),))
    used = {k: v for k, v in consts.items() if weight_const and (bias or k == "w")}
    return ShapeInfer().apply(with_memory_constants(mod, used), PassContext(sink=None)), used


def _ops(mod: Module) -> list[str]:
    return [b.node.op for f in mod.graph_functions() for b in f.body.bindings if isinstance(b.node, OpCall)]


def test_constant_weight_is_transposed_once() -> None:
    """A constant weight becomes one new constant in the GEMM layout (K padded with zero rows), where
    CO and padded K reach min_size and co_multiple divides CO; the old one leaves the constants; a cast
    of a constant (amp's f16 weight past fold-constants' size cap) is folded too."""
    mod, consts = _conv_module(Var("n"), 3, (8, 8), 16, (3, 3), {"pads": (1, 1, 1, 1)}, True, True)
    assert _ops(conv_to_gemm(mod, consts)[0]) == ["conv2d", "add"]  # CO 16, K 32: under min_size
    assert _ops(conv_to_gemm(mod, consts, min_size=16, co_multiple=32)[0]) == ["conv2d", "add"]
    out, new = conv_to_gemm(mod, consts, min_size=16)
    assert _ops(out) == ["im2col", "matmul", "transpose", "reshape", "add"]
    (key,) = set(new) - set(consts)
    assert "w" not in new and new["b"] is consts["b"]
    want = np.zeros((32, 16), np.float32)
    want[:27] = consts["w"].transpose(2, 3, 1, 0).reshape(27, 16)  # rows (kh, kw, c): im2col's columns
    np.testing.assert_array_equal(new[key], want)
    # a cast of the constant to f16 (amp's weight where fold-constants left it: over its size cap)
    m16 = with_memory_constants(parse_module(CAST16), {"w": consts["w"]})
    out16, new16 = conv_to_gemm(m16, {"w": consts["w"]}, k_multiple=1, min_size=1)
    (key16,) = set(new16)
    assert new16[key16].dtype == np.float16 and new16[key16].shape == (27, 16)
    np.testing.assert_array_equal(new16[key16], consts["w"].transpose(2, 3, 1, 0).reshape(27, 16).astype(np.float16))
    assert _ops(out16) == ["cast", "im2col", "matmul", "transpose", "reshape"]


CAST16 = """\
mlc.module v1

graph @main(%x: tensor<n x 3 x 8 x 8 x f32>) {
  %w: tensor<16 x 3 x 3 x 3 x f32> = const "w"
  %x16: tensor<n x 3 x 8 x 8 x f16> = cast(%x) {dtype = "f16"}
  %w16: tensor<16 x 3 x 3 x 3 x f16> = cast(%w) {dtype = "f16"}
  %y: tensor<n x 16 x 6 x 6 x f16> = conv2d(%x16, %w16)
  return %y
}
"""


# ---- the rewrite keeps the semantics -----------------------------------------------------------------
SIZES = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13])


@st.composite
def conv_cases(draw: st.DrawFn) -> tuple:
    k = (draw(st.sampled_from([1, 3, 5, 7])), draw(st.sampled_from([1, 3, 5, 7])))
    hw = (draw(SIZES), draw(SIZES))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = tuple(draw(st.integers(0, min(3, k[i % 2] - 1 + 1))) for i in range(4))
    for a in range(2):
        assume(hw[a] + p[a] + p[a + 2] - d[a] * (k[a] - 1) - 1 >= 0)
    attrs = {"strides": s, "pads": p, "dilations": d}
    return (draw(st.integers(1, 3)), draw(st.integers(1, 5)), hw, draw(st.integers(1, 9)), k, attrs,
            draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from([1, 8])))


def _inputs(mod: Module, consts: dict[str, np.ndarray], n: int, c: int, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n * 7 + c)
    ins = {"x": rng.standard_normal((n, c) + hw).astype(np.float32)}
    f = mod.get("main")
    assert isinstance(f, Function)
    for p in f.params[1:]:  # a weight or bias given as a parameter
        t = p.type
        assert isinstance(t, TensorType) and t.shape is not None
        ins[p.name] = np.random.default_rng(len(ins)).standard_normal(tuple(arith.as_int(s) for s in t.shape)).astype(np.float32)  # type: ignore[misc]
    return ins


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(conv_cases())
def test_rewrite_matches_conv2d_in_the_reference_interpreter(case: tuple) -> None:
    n, c, hw, co, k, attrs, bias, const, mult = case
    mod, consts = _conv_module(n, c, hw, co, k, attrs, bias, const)
    out, new = conv_to_gemm(mod, consts, k_multiple=mult, computed_weights=True, min_size=1, co_multiple=1)
    assert "conv2d" not in _ops(out) and "im2col" in _ops(out)
    ins = _inputs(mod, consts, n, c, hw)
    want = run_function(mod, ins, consts)["out"]
    np.testing.assert_allclose(run_function(out, ins, new)["out"], want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(conv_cases())
def test_rewrite_built_for_the_cpu_matches_conv2d(case: tuple) -> None:
    """The rewritten graph (symbolic batch) through the CPU build: im2col's lowering (a stored stage)
    and the GEMM, compiled, against the original through the reference interpreter."""
    n, c, hw, co, k, attrs, bias, const, mult = case
    mod, consts = _conv_module(Var("n"), c, hw, co, k, attrs, bias, const)
    out, new = conv_to_gemm(mod, consts, k_multiple=mult, computed_weights=True, min_size=1, co_multiple=1)
    model = model_from_artifact(loads(build_module(with_memory_constants(out, new), new, "cpu").result.data), "conv")
    for batch in sorted({1, n}):
        ins = _inputs(mod, consts, batch, c, hw)
        want = run_function(mod, ins, consts)["out"]
        np.testing.assert_allclose(model(**ins)["out"], want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_im2col_reference_against_a_loop() -> None:
    """im2col's numpy reference (the interpreter's oracle for the rewrite) against a plain loop."""
    from mlc.ir.ops.registry import get

    op = get("im2col")
    assert op is not None and op.ref is not None
    x = np.random.default_rng(5).standard_normal((2, 3, 7, 6)).astype(np.float32)
    s, p, d, k, extra = (2, 1), (1, 0, 2, 1), (1, 2), (3, 2), 3
    attrs = {"kernel_shape": k, "strides": s, "pads": p, "dilations": d, "pad_k": extra}
    t = op.infer([TensorType(tuple(Const(v) for v in x.shape), "f32")], attrs, None)
    assert isinstance(t, TensorType) and t.shape is not None
    ho = (7 + p[0] + p[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (6 + p[1] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    assert [arith.as_int(v) for v in t.shape] == [2, ho * wo, 3 * 6 + extra]
    want = np.zeros((2, ho * wo, 3 * 6 + extra), np.float32)
    for b in range(2):
        for oh in range(ho):
            for ow in range(wo):
                for ch in range(3):
                    for i in range(k[0]):
                        for j in range(k[1]):
                            h, w = oh * s[0] - p[0] + i * d[0], ow * s[1] - p[1] + j * d[1]
                            if 0 <= h < 7 and 0 <= w < 6:
                                want[b, oh * wo + ow, (i * k[1] + j) * 3 + ch] = x[b, ch, h, w]
    np.testing.assert_array_equal(op.ref([x], attrs, t, {}), want)


# ---- the CUDA build ---------------------------------------------------------------------------------
NET = """\
mlc.module v1

graph @main(%x: tensor<n x 8 x 7 x 6 x f32>, %x3: tensor<n x 3 x 7 x 6 x f32>) {
  %w1: tensor<64 x 8 x 3 x 3 x f32> = const "w1"
  %b1: tensor<1 x 64 x 1 x 1 x f32> = const "b1"
  %w2: tensor<64 x 64 x 1 x 1 x f32> = const "w2"
  %w3: tensor<64 x 3 x 7 x 7 x f32> = const "w3"
  %c1: tensor<n x 64 x 7 x 6 x f32> = conv2d(%x, %w1) {pads = (1, 1, 1, 1)}
  %a1: tensor<n x 64 x 7 x 6 x f32> = add(%c1, %b1)
  %r1: tensor<n x 64 x 7 x 6 x f32> = relu(%a1)
  %c2: tensor<n x 64 x 4 x 3 x f32> = conv2d(%r1, %w2) {strides = (2, 2)}
  %c3: tensor<n x 64 x 4 x 3 x f32> = conv2d(%x3, %w3) {strides = (2, 2), pads = (3, 3, 3, 3)}
  %s: tensor<n x 64 x 4 x 3 x f32> = add(%c2, %c3)
  %y: tensor<n x 64 x 4 x 3 x f32> = relu(%s)
  return %y
}
"""


def net() -> tuple[Module, dict[str, np.ndarray]]:
    """Three GEMM-sized convolutions: 3x3 padded (K 72), 1x1 stride 2 with a bias-relu prologue
    (K 64), a 7x7 stride-2 stem on a second, 3-channel input (K 147, padded to 152), a residual add."""
    rng = np.random.default_rng(17)
    consts = {"w1": rng.standard_normal((64, 8, 3, 3)), "b1": rng.standard_normal((1, 64, 1, 1)),
              "w2": rng.standard_normal((64, 64, 1, 1)) / 8, "w3": rng.standard_normal((64, 3, 7, 7)) / 8}
    consts = {k: v.astype(np.float32) for k, v in consts.items()}
    return with_memory_constants(parse_module(NET), consts), consts


def net_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {"x": rng.standard_normal((batch, 8, 7, 6)).astype(np.float32),
            "x3": rng.standard_normal((batch, 3, 7, 6)).astype(np.float32)}


def build_cuda_module(mod: Module, consts: dict[str, np.ndarray], f16: bool = False) -> tuple[Module, dict[str, np.ndarray]]:
    """The build-cuda pipeline (after `mlc amp` for f16) -> (lowered module, its constants)."""
    ctx = PassContext(constants=dict(consts), sink=None, target="cuda")
    if f16:
        info = get_pass("amp")
        assert info is not None
        mod = info.fn(mod, ctx, **info.validate_options({}))
    mod, _ = run_pipeline(mod, load_pipeline(default_pipeline("build-cuda")), ctx, verify_each=True)
    return mod, ctx.constants or consts


def gemm_calls(mod: Module) -> dict[str, int]:
    return {f.name: sum(isinstance(s, GemmCall) for _, s in walk(f.body)) for f in mod.prim_functions()}


def test_pipelines() -> None:
    """The CUDA build rewrites convolutions after the graph clean-ups, before fusion; the CPU build,
    whose convolution schedules are tuned separately (conv_tiling), does not."""
    cuda = [s.info.name for s in load_pipeline(default_pipeline("build-cuda"))]
    assert cuda.index("dce") < cuda.index("conv-to-gemm") < cuda.index("fuse")
    assert "conv-to-gemm" not in [s.info.name for s in load_pipeline(default_pipeline("build-cpu"))]


def test_cuda_build_tensorizes_and_keeps_semantics() -> None:
    """Each convolution of `net` is a GemmCall after lower-tir; the lowered CUDA programs run in the
    TIR interpreter (thread loops, the GEMM stage, the im2col stages) match the original graph."""
    mod, consts = net()
    built, bconsts = build_cuda_module(mod, consts)
    assert sum(gemm_calls(built).values()) == 3
    assert "check_range" not in print_module(built)  # the stem's pad_k columns read a clamped channel
    ins = net_inputs(2)
    want = run_function(mod, ins, consts)["y"]
    np.testing.assert_allclose(run_function(built, ins, bconsts)["y"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if NVCC is not None:
        build_cuda(built.prim_functions(), "sm_90a")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(conv_cases())
def test_cuda_build_of_gemm_sized_convolutions_in_the_tir_interpreter(case: tuple) -> None:
    """The shapes of the hypothesis cases with C and CO scaled up until the GEMM templates take them
    (K, CO >= 64): the CUDA build tensorizes the convolution and, interpreted, matches conv2d."""
    n, c, hw, co, k, attrs, bias, _, mult = case
    c = -(-64 // (k[0] * k[1])) + c - 1
    mod, consts = _conv_module(Var("n"), c, hw, 8 * (7 + co), k, attrs, bias, True)
    built, bconsts = build_cuda_module(mod, consts)
    assert sum(gemm_calls(built).values()) == 1
    ins = _inputs(mod, consts, n, c, hw)
    want = run_function(mod, ins, consts)["out"]
    np.testing.assert_allclose(run_function(built, ins, bconsts)["out"], want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


def resnet50() -> tuple[Module, dict[str, np.ndarray]]:
    """benchmarks/gpu_models' ResNet-50 (symbolic batch N) with its large weights as zeros (the
    tensorization and nvcc checks need their shapes, not their values)."""
    d = ROOT / "benchmarks" / "gpu_models"
    data = np.load(d / "resnet50.npz", allow_pickle=False)
    consts = {k[2:]: data[k] for k in data.files if k.startswith("c_")}
    for key, (shape, dtype, _, _) in json.loads((d / "resnet50.json").read_text())["large"].items():
        consts[key] = np.zeros(shape, dtype)
    return with_memory_constants(parse_module((d / "resnet50.ir").read_text()), consts), consts


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("f16", [False, True], ids=["f32", "f16"])
def test_resnet50_convolutions_are_gemms_and_compile(f16: bool) -> None:
    """All 53 convolutions of ResNet-50 become im2col + matmul (the stem's K 147 padded to 152), each a
    GemmCall (f32, and f16 after amp); the CUDA of every program compiles for sm_90a."""
    mod, consts = resnet50()
    ops = _ops(conv_to_gemm(mod, consts)[0])
    assert _ops(mod).count("conv2d") == 53 and ops.count("im2col") == 53 and "conv2d" not in ops
    built, bconsts = build_cuda_module(mod, consts, f16)
    assert not [f.name for f in built.prim_functions() if "conv2d" in f.name]
    stem = [v for k, v in bconsts.items() if k.endswith(".gemm_weight") and v.shape == (152, 64)]
    assert len(stem) == 1 and stem[0].dtype == (np.float16 if f16 else np.float32)
    calls = gemm_calls(built)  # f16: the f16f32 intrinsic (f16 operands, f32 accumulator), since 7086c35
    main = built.get("main")
    assert isinstance(main, Function) and max(calls.values()) == 1
    assert sum(calls[b.node.func] for b in main.body.bindings if isinstance(b.node, CallTensor)) >= 53
    build_cuda(built.prim_functions(), "sm_90a")


_WHY = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("mode", ["f32", "tf32", "f16"])
def test_conv_net_on_gpu_matches_numpy(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`net` built for CUDA (f16 after `mlc amp`; tf32: the f32 GEMMs on TF32 tensor cores, as
    bench_gpu's ResNet-50 'f32 tf32') at two batch sizes (ragged GEMM rows) against the original graph
    in the numpy reference interpreter."""
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM

    monkeypatch.setenv("MLC_CUDA_TF32", "1" if mode == "tf32" else "0")
    mod, consts = net()
    built, bconsts = build_cuda_module(mod, consts, mode == "f16")
    vm = CudaVM(built, bconsts, compile_cuda(built.prim_functions()))
    tol = {"f32": 1e-4, "tf32": 5e-3, "f16": 2e-2}[mode]
    for batch in (1, 5):
        ins = net_inputs(batch)
        want = run_function(mod, ins, consts)["y"]
        got = vm.run(ins)["y"].astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
