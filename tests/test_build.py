"""End to end: every zoo model built for the CPU matches onnxruntime; artifacts are tamper-evident."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from mlc.cli import commands  # noqa: F401  (registers subcommands)
from mlc.cli.main import cli
from mlc.frontend import zoo
from mlc.ir.diagnostics import MlcError

import mlc

ort = pytest.importorskip("onnxruntime")


def _feeds(model: onnx.ModelProto, dim_value: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dim_value for d in t.shape.dim]
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(np_dtype, np.integer):
            feeds[inp.name] = rng.integers(0, 4, shape).astype(np_dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np_dtype)
    return feeds


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("zoo")
    out = {}
    for name in zoo.NAMES:
        onnx_path = d / f"{name}.onnx"
        onnx.save(zoo.build(name), onnx_path)
        art = d / f"{name}.mlc"
        r = CliRunner().invoke(cli, ["build", str(onnx_path), "-o", str(art)])
        assert r.exit_code == 0, f"{name}: {r.output}"
        out[name] = (onnx_path, art)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.NAMES)
def test_zoo_model_matches_onnxruntime(built: dict[str, tuple[Path, Path]], name: str) -> None:
    onnx_path, art = built[name]
    model = mlc.load(art)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    proto = onnx.load(onnx_path)
    for dim, seed in ((2, 0), (5, 1)):
        feeds = _feeds(proto, dim, seed)
        want = sess.run(None, feeds)
        got = model(**feeds)
        for o, w in zip(proto.graph.output, want):
            key = next(k for k in got if k == o.name or k == o.name.replace(".", "_"))
            np.testing.assert_allclose(got[key], w, rtol=1e-4, atol=1e-5, err_msg=f"{name} output {o.name} dim={dim}")


def test_truncated_or_altered_artifact_is_rejected(tmp_path: Path) -> None:
    onnx.save(zoo.build("mlp"), tmp_path / "m.onnx")
    art = tmp_path / "m.mlc"
    assert CliRunner().invoke(cli, ["build", str(tmp_path / "m.onnx"), "-o", str(art)]).exit_code == 0
    data = art.read_bytes()
    (tmp_path / "t.mlc").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    (tmp_path / "f.mlc").write_bytes(bytes(flipped))
    for bad, why in (("t.mlc", "truncated"), ("f.mlc", "checksum")):
        with pytest.raises(mlc.ir.MlcError, match=why):
            mlc.load(tmp_path / bad)
        r = CliRunner().invoke(cli, ["run", str(tmp_path / bad)])
        assert r.exit_code == 1 and why in r.output


def test_emit_writes_llvm_and_asm(tmp_path: Path) -> None:
    onnx.save(zoo.build("mlp"), tmp_path / "m.onnx")
    r = CliRunner().invoke(cli, ["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.mlc"), "--emit", "llvm,asm"])
    assert r.exit_code == 0, r.output
    assert "define" in (tmp_path / "m.ll").read_text()
    assert (tmp_path / "m.s").read_text().strip()


@pytest.mark.slow
def test_repeated_calls_replay_correctly(built: dict[str, tuple[Path, Path]]) -> None:
    """Calls after the first reuse a recorded kernel tape; fresh inputs must still be read."""
    onnx_path, art = built["gpt_block"]
    model = mlc.load(art)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    proto = onnx.load(onnx_path)
    for dim, seed in ((3, 0), (3, 1), (4, 2), (3, 3)):
        feeds = _feeds(proto, dim, seed)
        want = sess.run(None, feeds)
        got = list(model(**feeds).values())
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    first = model(**_feeds(proto, 3, 0))
    model(**_feeds(proto, 3, 1))
    again = model(**_feeds(proto, 3, 0))
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])  # results are copies, not views of reused buffers


@pytest.mark.slow
def test_load_names_the_device(built: dict[str, tuple[Path, Path]]) -> None:
    _, art = built["mlp"]
    assert mlc.load(art, device="cpu") is not None
    with pytest.raises(MlcError, match="built for cpu, cannot run on cuda"):
        mlc.load(art, device="cuda")


@pytest.mark.parametrize("name", ["gpt_block", "seq2seq"])
def test_profile_counts_every_kernel_call(built: dict[str, tuple[Path, Path]], name: str) -> None:
    """The profile times the calls real runs make: replayed tapes (gpt_block) and interpreted
    control flow (seq2seq's time loop) alike; its call counts match the program's call sites."""
    from mlc.ir.graph import CallTensor
    from mlc.ir.rewrite import walk_bindings
    onnx_path, art = built[name]
    model = mlc.load(art)
    main = model.module.get("main")
    feeds = _feeds(onnx.load(onnx_path), 3, 0)
    static = {}
    for b in walk_bindings(main.body):
        if isinstance(b.node, CallTensor):
            static[b.node.func] = static.get(b.node.func, 0) + 1
    prof = model.profile(4, **feeds)
    assert {t.func for t in prof} == set(static)
    for t in prof:
        assert t.median > 0 and t.per_run > 0
        assert t.calls >= static[t.func] and t.calls == int(t.calls)
    assert [t.per_run for t in prof] == sorted((t.per_run for t in prof), reverse=True)
    if name == "gpt_block":
        assert all(t.calls == static[t.func] for t in prof)
    else:
        assert any(t.calls > static[t.func] for t in prof)  # the loop body runs once per step
    model(**feeds)  # profiling is off again: runs still work


def test_bench_profile_prints_each_kernel(built: dict[str, tuple[Path, Path]]) -> None:
    _, art = built["mlp"]
    r = CliRunner().invoke(cli, ["bench", str(art), "--shape", "N=2", "--runs", "2", "--profile"])
    assert r.exit_code == 0, r.output
    model = mlc.load(art)
    for f in model.module.prim_functions():
        assert f.name[:40] in r.output
    assert "all kernels" in r.output


def test_compiled_model_checks_input_dtypes_bf16_included() -> None:
    """bf16 inputs are carried as float32; an int8 or float64 array was accepted (garbage, or a
    segfault for a large int8 input). Every input's dtype, rank and shape is checked first."""
    import onnx
    from mlc.ir.diagnostics import MlcError
    from onnx import helper

    import mlc

    x = helper.make_tensor_value_info("x", onnx.TensorProto.BFLOAT16, ["n", 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.BFLOAT16, ["n", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    m = mlc.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    np.testing.assert_array_equal(m(x=np.full((3, 4), -1.5, np.float32))["y"], np.zeros((3, 4), np.float32))
    for bad in (np.zeros((3, 4), np.int8), np.zeros((3, 4), np.float64), np.zeros((3, 5), np.float32)):
        with pytest.raises(MlcError, match="argument %x of @main"):
            m(x=bad)


@pytest.mark.parametrize("change,message", [
    ({"triple": "aarch64-unknown-linux-gnu"}, "built for aarch64-unknown-linux-gnu"),
    ({"cpu_features": ["sse2", "zz-feature-of-a-future-cpu"]}, "features this one .* lacks: zz-feature-of-a-future-cpu"),
    ({"target": "tpu"}, "unknown target 'tpu'"),
])
def test_artifact_from_another_machine_is_refused_before_loading_code(change: dict, message: str) -> None:
    """An aarch64 artifact aborted inside LLVM; one built with AVX512-FP16 died with SIGILL; a 'tpu'
    header was accepted. The artifact records triple and CPU features, checked before anything loads."""
    from mlc.frontend import zoo
    from mlc.frontend.onnx_import import import_onnx
    from mlc.ir.diagnostics import MlcError
    from mlc.runtime.artifact import dumps, loads
    from mlc.runtime.model import model_from_artifact

    import mlc.compiler as C

    module, consts = import_onnx(zoo.build("mlp"))
    art = loads(C.build_module(C.with_memory_constants(module, consts), consts).result.data)
    assert art.meta["triple"] and art.meta["cpu_features"]
    model_from_artifact(art, "ok.mlc")  # loads here
    art.meta.update(change)
    with pytest.raises(MlcError, match=message):
        model_from_artifact(loads(dumps(art)), "other.mlc")
