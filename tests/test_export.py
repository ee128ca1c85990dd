"""`mlc export`: a module's weights written back into its source ONNX model; onnxruntime on the
result computes what mlc computes with those weights; a module of another model is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner
from mlc.cli.commands import cli
from mlc.cli.io import write_module
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import build
from mlc.ir.interp import run_function


def test_exported_weights_run_in_onnxruntime(tmp_path: Path) -> None:
    model = build("mlp")
    onnx.save(model, tmp_path / "m.onnx")
    module, consts = import_onnx(model)
    rng = np.random.default_rng(0)
    changed = {k: (v + rng.standard_normal(v.shape).astype(v.dtype) if k == "w_1" else v) for k, v in consts.items()}
    changed["c_gemm_3_bT"] = changed["w_1"].T.copy()  # as mlc train leaves a folded copy: recomputed
    write_module(module, str(tmp_path / "t.ir"), new_constants=changed)
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "t.ir"), "--onnx", str(tmp_path / "m.onnx"),
                                 "-o", str(tmp_path / "t.onnx")])
    assert r.exit_code == 0 and "1 of 6 initializers replaced" in r.output, r.output
    x = rng.standard_normal((5, 64)).astype(np.float32)
    (want,) = run_function(module, {"x": x}, changed).values()
    (got,) = ort.InferenceSession(str(tmp_path / "t.onnx")).run(None, {"x": x})
    (old,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(old, want, atol=1e-3)


def test_module_of_another_model_is_refused(tmp_path: Path) -> None:
    onnx.save(build("resnext"), tmp_path / "other.onnx")
    h = onnx.helper
    tiny = h.make_model(h.make_graph([h.make_node("Add", ["x", "zzz"], ["y"])], "tiny",
                                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
                                     [onnx.numpy_helper.from_array(np.ones(2, np.float32), "zzz")]))
    onnx.save(tiny, tmp_path / "third.onnx")
    module, consts = import_onnx(build("mlp"))
    write_module(module, str(tmp_path / "t.ir"), new_constants=consts)
    for other, message in (("other.onnx", "the module was not imported from this model"),
                           ("third.onnx", "none of its 1 initializers is a constant of the module")):
        r = CliRunner().invoke(cli, ["export", str(tmp_path / "t.ir"), "--onnx", str(tmp_path / other),
                                     "-o", str(tmp_path / "o.onnx")])
        assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o.onnx").exists()
