"""Every zoo model: imported, run through the reference interpreter for two settings of each
dynamic dim, and compared with onnxruntime on the same ONNX model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlc.frontend import zoo
from mlc.frontend.onnx_import import import_onnx, sanitize
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Var
from mlc.ir.graph import Loop
from mlc.ir.interp import run_function
from mlc.ir.types import TensorType

SETTINGS = ({"N": 2, "S": 5, "B": 2, "T": 7, "V": 6}, {"N": 3, "S": 1, "B": 1, "T": 12, "V": 11})
MODELS = [n for n in zoo.NAMES if n != "default"]


def feeds_for(model: onnx.ModelProto, dims: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dims[d.dim_param] for d in tt.shape.dim]
        if tt.elem_type == onnx.TensorProto.INT64:
            out[vi.name] = rng.integers(0, 40, shape).astype(np.int64)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


@pytest.fixture(scope="module", params=MODELS)
def built(request: pytest.FixtureRequest) -> tuple[str, onnx.ModelProto]:
    return request.param, zoo.build(request.param)


def test_zoo_model_matches_onnxruntime(built: tuple[str, onnx.ModelProto]) -> None:
    name, model = built
    assert model.ByteSize() < 2 * 1024 * 1024
    mod, consts = import_onnx(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for k, dims in enumerate(SETTINGS):
        feeds = feeds_for(model, dims, seed=k)
        want = sess.run(None, feeds)
        got = run_function(mod, {sanitize(n): v for n, v in feeds.items()}, consts)
        for o, w in zip(model.graph.output, want):
            g = got[sanitize(o.name)]
            assert g.shape == w.shape, (name, o.name, dims)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"{name}:{o.name} {dims}")


def test_zoo_dynamic_dims_are_symbolic(built: tuple[str, onnx.ModelProto]) -> None:
    name, model = built
    mod, _ = import_onnx(model)
    fn = mod.get("main")
    names = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    assert names and {v.name for v in fn.sym_vars()} == names
    for r in fn.body.results:
        assert isinstance(r.type, TensorType) and r.type.shape is not None


def test_zoo_import_prints_parses_and_verifies(built: tuple[str, onnx.ModelProto]) -> None:
    import dataclasses

    from mlc.ir.module import ConstantsRef
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module
    from mlc.ir.verify import verify_module

    mod, consts = import_onnx(built[1])
    mod = dataclasses.replace(mod, constants=ConstantsRef("c.npz", "0" * 64))
    verify_module(mod)
    text = print_module(mod)
    assert parse_module(text) == mod and print_module(parse_module(text)) == text


def test_zoo_is_deterministic_and_listed() -> None:
    assert set(zoo.NAMES) >= {"mlp", "resnext", "inception", "seq2seq", "gpt_block", "default"}
    assert zoo.build("gpt_block").SerializeToString() == zoo.build("gpt_block").SerializeToString()
    with pytest.raises(MlcError, match="unknown zoo model"):
        zoo.build("nope")


def test_seq2seq_encoder_is_a_loop_over_s() -> None:
    mod, _ = import_onnx(zoo.build("seq2seq"))
    loops = [b.node for b in mod.get("main").body.bindings if isinstance(b.node, Loop)]
    assert len(loops) >= 2 and all(lp.extent == Var("S") for lp in loops[:2])


def test_gpt_block_reshape_targets_symbolic() -> None:
    mod, _ = import_onnx(zoo.build("gpt_block"))
    shapes = [b.node.attr("shape") for b in mod.get("main").body.bindings if getattr(b.node, "op", "") == "reshape"]
    assert shapes and all(s[:2] == (Var("B"), Var("T")) for s in shapes)
