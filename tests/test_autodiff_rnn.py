"""`mlc autodiff --wrt all` of ONNX LSTM/GRU models differentiates the initializers themselves (B,
P, R, W), not the pieces the importer cuts from them (frontend/onnx_rnn.py), and `mlc train` +
`mlc export` write the trained B back into the ONNX model.

Oracle: the ONNX operator equations written out in numpy float64 (`_reference`, checked against
onnxruntime, whose LSTM has no float64 kernel, in float32); the gradients are its central finite
differences in every element. Everything on the mlc side goes through the command line (import,
autodiff, run, train, export).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from mlc.cli.commands import cli
from onnx import TensorProto
from onnx import helper as oh

N, T, D, H = 2, 4, 2, 3
GATES = {"LSTM": 4, "GRU": 3}


def _params(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = GATES[kind]
    p = {"W": rng.standard_normal((1, g * H, D)), "R": rng.standard_normal((1, g * H, H)),
         "B": rng.standard_normal((1, 2 * g * H))}
    if kind == "LSTM":
        p["P"] = rng.standard_normal((1, 3 * H))
    return {k: 0.5 * v for k, v in p.items()}


def _model(kind: str, params: dict[str, np.ndarray], dtype: type = np.float64) -> onnx.ModelProto:
    """x (N, T, D) -> Transpose -> LSTM/GRU (weights: initializers) -> Y_h[0] = h (N, H)."""
    et = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    rnn_in = ["xt", "W", "R", "B"] + (["", "", "", "P"] if kind == "LSTM" else [])
    attrs = {"hidden_size": H} if kind == "LSTM" else {"hidden_size": H, "linear_before_reset": 0}
    nodes = [oh.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             oh.make_node(kind, rnn_in, ["", "Yh"], **attrs),
             oh.make_node("Squeeze", ["Yh", "axis0"], ["h"])]
    inits = [onnx.numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    inits += [onnx.numpy_helper.from_array(v.astype(dtype), k) for k, v in params.items()]
    inputs = [oh.make_tensor_value_info("x", et, ["batch", T, D])]
    graph = oh.make_graph(nodes, kind.lower(), inputs, [oh.make_tensor_value_info("h", et, ["batch", H])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 14)])


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def _reference(kind: str, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """h = Y_h[0] by the ONNX operator's equations (LSTM gates i, o, f, c with peepholes i, o, f;
    GRU gates z, r, h with linear_before_reset = 0), zero initial states."""
    w, r, b = p["W"][0], p["R"][0], p["B"][0]
    g = GATES[kind]
    wb, rb = b[:g * H], b[g * H:]
    h, c = np.zeros((x.shape[0], H)), np.zeros((x.shape[0], H))
    for t in range(x.shape[1]):
        xw = x[:, t] @ w.T + wb
        if kind == "LSTM":
            pi, po, pf = np.split(p["P"][0], 3)
            a = xw + h @ r.T + rb
            ai, ao, af, ac = np.split(a, 4, axis=1)
            i, f = _sigmoid(ai + pi * c), _sigmoid(af + pf * c)
            c = f * c + i * np.tanh(ac)
            h = _sigmoid(ao + po * c) * np.tanh(c)
        else:
            xz, xr, xh = np.split(xw, 3, axis=1)
            rz, rr, rh = np.split(r, 3, axis=0)
            bz, br, bh = np.split(rb, 3)
            z = _sigmoid(xz + h @ rz.T + bz)
            rt = _sigmoid(xr + h @ rr.T + br)
            h = (1 - z) * np.tanh(xh + (rt * h) @ rh.T + bh) + z * h
    return h


def _fd(loss: object, params: dict[str, np.ndarray], k: str, eps: float = 1e-6) -> np.ndarray:
    """Central differences of `loss(params)` in every element of params[k]."""
    v, out = params[k], np.zeros_like(params[k])
    for idx in np.ndindex(*v.shape):
        up, down = v.copy(), v.copy()
        up[idx] += eps
        down[idx] -= eps
        out[idx] = (loss({**params, k: up}) - loss({**params, k: down})) / (2 * eps)  # type: ignore[operator]
    return out


def _ok(args: list[str]) -> str:
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_wrt_all_gradients_are_the_initializers_and_match_finite_differences(kind: str, tmp_path: Path) -> None:
    params = _params(kind)
    onnx.save(_model(kind, params), tmp_path / "m.onnx")
    _ok(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.ir")])
    _ok(["autodiff", str(tmp_path / "m.ir"), "--wrt", "all", "--loss", "mse:target", "-o", str(tmp_path / "t.ir")])
    rng = np.random.default_rng(1)
    x, target = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    np.savez(tmp_path / "in.npz", x=x, target=target)
    _ok(["run", str(tmp_path / "t.ir"), "--func", "grad", "-i", str(tmp_path / "in.npz"), "-o", str(tmp_path / "g.npz")])
    got = dict(np.load(tmp_path / "g.npz"))
    # one gradient per initializer, under its own name: no folded piece (bias halves, peepholes, R^T
    # columns) is a parameter of its own
    assert set(got) == {"loss"} | {f"grad_{k}" for k in params}, sorted(got)

    # the reference is the ONNX operator: onnxruntime (float32) agrees with it
    (h32,) = ort.InferenceSession(_model(kind, params, dtype=np.float32).SerializeToString()).run(
        None, {"x": x.astype(np.float32)})
    np.testing.assert_allclose(h32, _reference(kind, params, x), rtol=1e-4, atol=1e-5)

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.mean((_reference(kind, p, x) - target) ** 2))

    np.testing.assert_allclose(got["loss"], loss(params), rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(got[f"grad_{k}"], _fd(loss, params, k), rtol=1e-6, atol=1e-9, err_msg=f"grad_{k}")


def test_trained_bias_is_exported_back_into_the_onnx_model(tmp_path: Path) -> None:
    """One full-batch SGD step with `mlc train` (a compiled @train_step): the exported model's B is
    B - lr * dL/dB (dL/dB: finite differences of the reference), and onnxruntime on the exported model
    computes what `mlc run` computes with the trained module."""
    params = _params("LSTM", seed=3)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    onnx.save(_model("LSTM", p32, dtype=np.float32), tmp_path / "m.onnx")
    _ok(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.ir")])
    rng = np.random.default_rng(4)
    rows = 6
    x, target = rng.standard_normal((rows, T, D)), rng.standard_normal((rows, H))
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), target=target.astype(np.float32))
    lr = 0.5
    _ok(["train", str(tmp_path / "m.ir"), "--data", str(tmp_path / "d.npz"), "--loss", "mse:target",
         "--optimizer", "sgd", "--lr", str(lr), "--batch", str(rows), "--epochs", "1", "--no-progress",
         "-o", str(tmp_path / "trained.ir")])
    _ok(["export", str(tmp_path / "trained.ir"), "--onnx", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "t.onnx")])
    new = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(tmp_path / "t.onnx").graph.initializer}

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.mean((_reference("LSTM", p, x) - target) ** 2))

    b = params["B"]
    grad_b = _fd(loss, params, "B")
    assert np.abs(grad_b).max() > 1e-3  # the step moves B
    np.testing.assert_allclose(new["B"], b - lr * grad_b, rtol=1e-4, atol=1e-5)
    for k in ("W", "R", "P"):  # trained too
        assert not np.allclose(new[k], p32[k], atol=1e-6), k

    xf = x.astype(np.float32)
    np.savez(tmp_path / "x.npz", x=xf)
    _ok(["run", str(tmp_path / "trained.ir"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")])
    (want,) = dict(np.load(tmp_path / "y.npz")).values()
    (got,) = ort.InferenceSession(str(tmp_path / "t.onnx")).run(None, {"x": xf})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
