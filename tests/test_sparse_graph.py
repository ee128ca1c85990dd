"""Graph-level sparsity (issue 15, item 5): the sparse_matmul op, `mlc sparsify`, ONNX sparse_initializers.

Oracles: numpy dense matmul by the (pruned) weight; the interpreter (op reference) against the
compiled kernels (fuse -> sparse-lower -> schedule -> lower-tir -> LLVM).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from mlc.frontend import zoo
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import Binding, Block, Const, Function, Module, OpCall, TensorType, UnknownType, Value, Var
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Constant
from mlc.ir.interp import run_function
from mlc.ir.rewrite import walk_bindings
from mlc.passes.registry import PassContext, get_pass
from mlc.passes.sparsify import csr_of_transpose, prune_blocks, prune_threshold
from mlc.runtime.artifact import loads
from mlc.runtime.model import model_from_artifact

from mlc.compiler import build_module, with_memory_constants


def _weight(k: int, m: int, seed: int, density: float = 0.3) -> np.ndarray:
    """A random K x M weight whose W^T has empty rows (zero columns of W) and one dense row."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, m)).astype(np.float32)
    w[rng.random((k, m)) > density] = 0
    w[:, 0] = 0
    if m > 2:
        w[:, m // 2] = 0
        w[:, -1] = rng.standard_normal(k)
    return w


def _op_module(w: np.ndarray, batch: Any) -> tuple[Module, dict[str, np.ndarray]]:
    """main(x: batch x K) = sparse_matmul(x, CSR of w^T) with the CSR arrays as constants."""
    arrays = dict(zip(("indptr", "indices", "data"), csr_of_transpose(w)))
    x = Value("x", TensorType((batch, Const(w.shape[0])), "f32"))
    binds = [Binding(Value(k, TensorType((Const(len(a)),), "i32" if a.dtype == np.int32 else "f32")), Constant(k))
             for k, a in arrays.items()]
    y = Value("y", UnknownType())
    binds.append(Binding(y, OpCall("sparse_matmul", (x, *(b.var for b in binds)), ())))
    m = Module((Function("main", (x,), Block(tuple(binds), (y,)), (("entry", True),)),))
    return _pass("shape-infer", m, arrays), arrays


def _pass(name: str, m: Module, consts: dict[str, np.ndarray], **opts: Any) -> Module:
    info = get_pass(name)
    assert info is not None
    return info.fn(m, PassContext(constants=consts, sink=None), **info.validate_options(opts))


def _compiled(m: Module, consts: dict[str, np.ndarray]) -> Any:
    built = build_module(with_memory_constants(m, consts), consts, "cpu")
    return model_from_artifact(loads(built.result.data), "<sparse graph>"), built.module


def test_reference_matches_dense_numpy() -> None:
    w = _weight(13, 9, 0)
    m, arrays = _op_module(w, Var("N"))
    x = np.random.default_rng(1).standard_normal((4, 13)).astype(np.float32)
    got = run_function(m, {"x": x}, arrays)["y"]
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)


def test_reference_rejects_bad_csr() -> None:
    w = _weight(6, 5, 2)
    m, arrays = _op_module(w, Const(2))
    bad = dict(arrays, indices=np.where(arrays["indices"] == arrays["indices"].max(), 6, arrays["indices"]).astype(np.int32))
    with pytest.raises(MlcError, match=r"sparse_matmul: indices\[\d+\] = 6 is out of range \[0, 6\)"):
        run_function(m, {"x": np.ones((2, 6), np.float32)}, bad)


def test_shape_rule_errors_are_located() -> None:
    x = Value("x", TensorType((Const(2), Const(3), Const(4)), "f32"))
    p, i, d = (Value(n, TensorType((Const(3),), t)) for n, t in (("p", "i32"), ("i", "i32"), ("d", "f32")))
    y = Value("y", UnknownType())
    m = Module((Function("main", (x, p, i, d), Block((Binding(y, OpCall("sparse_matmul", (x, p, i, d), ())),), (y,))),))
    with pytest.raises(MlcError, match="x must have rank 2"):
        _pass("shape-infer", m, {})


@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_matches_interpreter_symbolic_batch(seed: int) -> None:
    """Random sparsity with empty rows and one dense row of W^T; the batch is a symbol fed 1, 3 and 40
    (the kernel pads it to chunks of 16)."""
    w = _weight(37, 21, seed, density=0.25)
    m, arrays = _op_module(w, Var("N"))
    model, built = _compiled(m, arrays)
    assert any(f.attrs and dict(f.attrs).get("schedule") == "sparse" for f in built.prim_functions())
    for n in (1, 3, 40):
        x = np.random.default_rng(seed + n).standard_normal((n, 37)).astype(np.float32)
        want = run_function(m, {"x": x}, arrays)["y"]
        got = model(x=x)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)


# ---- sparsify -----------------------------------------------------------------------------------
def _sparse_calls(m: Module) -> int:
    return sum(1 for f in m.graph_functions() for b in walk_bindings(f.body)
               if isinstance(b.node, OpCall) and b.node.op == "sparse_matmul")


def _matmul_weights(m: Module) -> list[str]:
    consts = {b.var.name: b.node.key for f in m.graph_functions() for b in walk_bindings(f.body) if isinstance(b.node, Constant)}
    return [consts[b.node.args[1].name] for f in m.graph_functions() for b in walk_bindings(f.body)
            if isinstance(b.node, OpCall) and b.node.op == "matmul" and b.node.args[1].name in consts]


def test_sparsify_zoo_mlp_equals_dense_with_pruned_weights() -> None:
    m, consts = import_onnx(zoo.build("mlp"))
    m = _pass("shape-infer", m, consts)
    names = _matmul_weights(m)
    ctx = PassContext(constants=dict(consts), sink=None)
    info = get_pass("sparsify")
    assert info is not None
    sm = info.fn(m, ctx, **info.validate_options({"threshold": 0.12, "max_density": 0.5}))
    msgs = [d.message for d in ctx.diagnostics]
    assert any("sparse kernel" in s for s in msgs) and msgs[-1].startswith("sparsify: ")
    assert _sparse_calls(sm) >= 1 and ctx.constants is not None
    pruned = dict(consts, **{k: prune_threshold(consts[k], 0.12) for k in names})
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    want = run_function(m, {"x": x}, pruned)["probs"]
    dense = run_function(m, {"x": x}, consts)["probs"]
    assert not np.allclose(want, dense, atol=1e-4)  # pruning changed the model: the check below can fail
    np.testing.assert_allclose(run_function(sm, {"x": x}, ctx.constants)["probs"], want, rtol=1e-5, atol=1e-6)
    model, _ = _compiled(sm, ctx.constants)
    np.testing.assert_allclose(model(x=x)["probs"], want, rtol=1e-4, atol=1e-6)


def _linear_model(k: int, m: int, w: np.ndarray) -> onnx.ModelProto:
    b = zoo.GraphBuilder("linear", seed=0)
    x = b.input("x", ["N", k])
    b.node("MatMul", [x, b.const(w, "w")], out="y")
    b.output("y", ["N", m])
    return b.model()


def test_sparsify_block_sparse_1024x4096() -> None:
    """The pruned-transformer layer: 90% block sparsity (32 x 32 blocks), batch 32, compiled."""
    w = np.random.default_rng(3).standard_normal((1024, 4096)).astype(np.float32) / 32
    m, consts = import_onnx(_linear_model(1024, 4096, w))
    m = _pass("shape-infer", m, consts)
    ctx = PassContext(constants=dict(consts), sink=None)
    info = get_pass("sparsify")
    assert info is not None
    sm = info.fn(m, ctx, **info.validate_options({"block": 32, "density": 0.1}))
    assert _sparse_calls(sm) == 1 and ctx.constants is not None
    pw = prune_blocks(w, 32, 0.1)
    assert np.count_nonzero(pw.reshape(32, 32, 128, 32).any(axis=(1, 3))) == 410  # ceil(0.1 * 4096) blocks
    x = np.random.default_rng(4).standard_normal((32, 1024)).astype(np.float32)
    model, _ = _compiled(sm, ctx.constants)
    np.testing.assert_allclose(model(x=x)["y"], x @ pw, rtol=1e-4, atol=1e-4)


def test_prune_blocks_keeps_largest_blocks() -> None:
    w = np.zeros((4, 6), np.float32)
    w[0:2, 2:4] = 3
    w[2:4, 4:6] = 1
    w[0, 0] = 0.5
    np.testing.assert_array_equal(prune_blocks(w, 2, 1 / 6), np.where(np.arange(6) // 2 == 1, w, 0) * (np.arange(4) < 2)[:, None])
    assert np.count_nonzero(prune_blocks(w, 2, 0.5)) == 9  # three blocks: the 3s, the 1s and the 0.5


@pytest.mark.parametrize("opts, message", [
    ({"threshold": -1.0}, "--threshold must be a finite number >= 0, got -1.0"),
    ({"block": 4, "density": 0.0}, r"--density must be in \(0, 1\], got 0.0"),
    ({"block": 4, "density": 1.5}, r"--density must be in \(0, 1\], got 1.5"),
    ({"block": 5, "density": 0.5}, "--block 5 does not divide the weight's shape 64 x 128"),
])
def test_sparsify_bad_options(opts: dict[str, Any], message: str) -> None:
    m, consts = import_onnx(zoo.build("mlp"))
    with pytest.raises(MlcError, match=message) as e:
        _pass("sparsify", m, dict(consts), **opts)
    if "block 5" in message:
        assert e.value.loc is not None and e.value.loc.file == "<onnx model mlp>"


# ---- ONNX sparse_initializer ----------------------------------------------------------------------
def _sparse_init_model(w: np.ndarray, coords: bool, gemm: bool = False) -> onnx.ModelProto:
    """x @ w (MatMul, or Gemm with transB of w^T) with the weight stored as a sparse_initializer."""
    from onnx import TensorProto, helper, numpy_helper

    stored = np.ascontiguousarray(w.T) if gemm else w
    nz = np.flatnonzero(stored)
    idx = np.stack(np.unravel_index(nz, stored.shape), axis=1) if coords else nz
    sp = helper.make_sparse_tensor(numpy_helper.from_array(stored.reshape(-1)[nz], "w"),
                                   numpy_helper.from_array(idx.astype(np.int64), "w_idx"), list(stored.shape))
    node = (helper.make_node("Gemm", ["x", "w"], ["y"], transB=1) if gemm else helper.make_node("MatMul", ["x", "w"], ["y"]))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])], sparse_initializer=[sp])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("coords, gemm", [(False, False), (True, False), (False, True)])
def test_sparse_initializer_runs_through_the_sparse_kernel(coords: bool, gemm: bool) -> None:
    import onnxruntime as ort

    w = _weight(24, 10, 5, density=0.2)
    model = _sparse_init_model(w, coords, gemm)
    m, consts = import_onnx(model)
    assert _sparse_calls(m) == 1 and not any(v.shape == w.shape or v.shape == w.T.shape for v in consts.values())
    x = np.random.default_rng(6).standard_normal((5, 24)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(want, x @ w, rtol=1e-5, atol=1e-5)  # onnxruntime reads sparse initializers
    np.testing.assert_allclose(run_function(m, {"x": x}, consts)["y"], want, rtol=1e-5, atol=1e-5)
    compiled, _ = _compiled(_pass("shape-infer", m, consts), consts)
    np.testing.assert_allclose(compiled(x=x)["y"], want, rtol=1e-5, atol=1e-5)


def test_sparse_initializer_with_bad_indices_is_one_error() -> None:
    model = _sparse_init_model(_weight(6, 4, 7), coords=False)
    from onnx import numpy_helper

    ind = model.graph.sparse_initializer[0].indices
    bad = numpy_helper.to_array(ind).copy()
    bad[-1] = 24  # one past 6 x 4
    ind.CopyFrom(numpy_helper.from_array(bad, ind.name))
    with pytest.raises(MlcError, match=r"w_idx\) index value at position \[7\] out of range"):  # the ONNX checker's
        import_onnx(model)


def test_cli_sparsify_reports_and_bad_input_leaves_no_output(tmp_path: Any) -> None:
    from click.testing import CliRunner
    from mlc.cli import commands  # noqa: F401  (registers subcommands)
    from mlc.cli.main import cli

    onnx.save(zoo.build("mlp"), tmp_path / "mlp.onnx")
    run = CliRunner().invoke
    assert run(cli, ["import", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "m.ir")]).exit_code == 0
    r = run(cli, ["-v", "sparsify", str(tmp_path / "m.ir"), "--threshold", "0.12", "-o", str(tmp_path / "s.ir")])
    assert r.exit_code == 0, r.output
    assert "sparse kernel" in r.output and "sparse_matmul(" in (tmp_path / "s.ir").read_text()
    r = run(cli, ["sparsify", str(tmp_path / "m.ir"), "--block", "5", "--density", "0.5", "-o", str(tmp_path / "bad.ir")])
    assert r.exit_code == 1 and "m.ir:7:3: error: sparsify: --block 5 does not divide" in r.output
    assert not (tmp_path / "bad.ir").exists()


SMALL = """mlc.module v1

graph @main(%x: tensor<n x 4 x f32>, %p: tensor<4 x i32>, %i: tensor<5 x i32>, %d: tensor<5 x f32>) {
  %y: tensor<n x 3 x f32> = sparse_matmul(%x, %p, %i, %d)
  return %y
}
"""


def test_fuse_emits_the_stage_one_program() -> None:
    """shape-infer | fuse: one program declaring the sparse axes, a padded transpose in, the sparse
    iteration (chunk, output feature, nonzeros, lane) and the transpose out."""
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module

    text = print_module(_pass("fuse", _pass("shape-infer", parse_module(SMALL, "small.ir"), {}), {}))
    want = [
        "%y: tensor<n x 3 x f32> = call_tensor @sparse_matmul(%x, %p, %i, %d)",
        "prim @sparse_matmul(%in: buffer<n x 4 x f32>, %in_1: buffer<4 x i32>, %in_2: buffer<5 x i32>, "
        "%in_3: buffer<5 x f32>, %out: buffer<n x 3 x f32>) outputs 1 {",
        "axis I = dense_fixed(3)",
        "axis J = sparse_variable(I, 4, 5, %in_1, %in_2)",
        "axis NB = dense_fixed(floordiv(n + 15, 16))",
        "axis L = dense_fixed(16)",
        "sparse %A: (I, J) = %in_3",
        "alloc %xT: buffer<floordiv(n + 15, 16) x 4 x 16 x f32>",
        "%xT[v_i_1, v_i_2, v_i_3] = select(v_i_1 * 16 + v_i_3 < n, %in[min(16 * v_i_1 + v_i_3, n - 1), v_i_2], 0.0)",
        'sp_iter "sparse_matmul"(S nb in NB, S m in I, R j in J, S lane in L) {',
        "%cT[nb, m, lane] = 0.0",
        "%cT[nb, m, lane] = %cT[nb, m, lane] + %A[m, j] * %xT[nb, j, lane]",
        "%out[v_i_4, v_i_5] = %cT[floordiv(v_i_4, 16), v_i_5, floormod(v_i_4, 16)]",
    ]
    lines = [ln.strip() for ln in text.splitlines()]
    pos = 0
    for w in want:
        assert w in lines[pos:], f"{w!r} not found after line {pos}:\n{text}"
        pos = lines.index(w, pos) + 1


def test_sparsify_before_after_text() -> None:
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module

    src = """mlc.module v1

graph @main(%x: tensor<n x 4 x f32>) {
  %w: tensor<4 x 3 x f32> = const "w"
  %y: tensor<n x 3 x f32> = matmul(%x, %w)
  return %y
}
"""
    w = np.array([[0, 2, 0], [0, 0, 0], [0.5, 0, 0], [0, 0, -1]], np.float32)
    ctx = PassContext(constants={"w": w}, sink=None)
    info = get_pass("sparsify")
    assert info is not None
    text = print_module(info.fn(parse_module(src, "m.ir"), ctx, **info.validate_options({"max_density": 0.5})))
    assert text.split("graph @main", 1)[1] == """(%x: tensor<n x 4 x f32>) {
  %w_indptr: tensor<4 x i32> = const "w.sparse.indptr"
  %w_indices: tensor<3 x i32> = const "w.sparse.indices"
  %w_data: tensor<3 x f32> = const "w.sparse.data"
  %y: tensor<n x 3 x f32> = sparse_matmul(%x, %w_indptr, %w_indices, %w_data)
  return %y
}
"""
    c = ctx.constants or {}
    assert sorted(c) == ["w.sparse.data", "w.sparse.indices", "w.sparse.indptr"]  # the dense weight is gone
    np.testing.assert_array_equal(c["w.sparse.indptr"], [0, 1, 2, 3])  # W^T's rows: columns of W
    np.testing.assert_array_equal(c["w.sparse.indices"], [2, 0, 3])
    np.testing.assert_array_equal(c["w.sparse.data"], [0.5, 2, -1])


def test_sparsify_rank3_activation_is_reshaped_to_rows() -> None:
    w = _weight(16, 8, 9, density=0.2)
    b = zoo.GraphBuilder("seq", seed=0)
    b.node("MatMul", [b.input("x", ["B", "T", 16]), b.const(w, "w")], out="y")
    b.output("y", ["B", "T", 8])
    m, consts = import_onnx(b.model())
    ctx = PassContext(constants=dict(consts), sink=None)
    info = get_pass("sparsify")
    assert info is not None
    sm = info.fn(m, ctx, **info.validate_options({}))
    assert _sparse_calls(sm) == 1 and ctx.constants is not None
    model, _ = _compiled(sm, ctx.constants)
    for shape in ((2, 3, 16), (1, 17, 16)):
        x = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run_function(sm, {"x": x}, ctx.constants)["y"], x @ w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(model(x=x)["y"], x @ w, rtol=1e-5, atol=1e-5)
