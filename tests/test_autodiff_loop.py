"""Reverse mode through the graph `Loop` (backpropagation through time, ir/autodiff.loop_grad).

Oracles: central finite differences of the reference interpreter in float64 (every element for a
hand-written RNN, directional for the LSTM/GRU models), and the interpreter for the compiled VM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import build
from mlc.ir import Function, Module, TensorType, Var
from mlc.ir.autodiff import Provenance, differentiable_constants, public_names
from mlc.ir.graph import Loop
from mlc.ir.interp import run_function
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.verify import verify_module
from mlc.passes.autodiff import Autodiff
from mlc.passes.registry import PassContext

MODELS = "tests/models"

# h_t = tanh(x_t W + h_{t-1} U), every h_t written into a (T, 2, 4) output as the ONNX RNNs do
RNN = """mlc.module v1
graph @main(%x: tensor<T x 2 x 3 x f64>, %h0: tensor<2 x 4 x f64>, %w: tensor<3 x 4 x f64>, %u: tensor<4 x 4 x f64>) {
  %y0: tensor<T x 2 x 4 x f64> = full() {shape = (T, 2, 4), value = 0.0, dtype = "f64"}
  %r: tuple<tensor<2 x 4 x f64>, tensor<T x 2 x 4 x f64>> = for %i: i64 in 0..T carry(%h: tensor<2 x 4 x f64> = %h0, %y: tensor<T x 2 x 4 x f64> = %y0) {
    %sl: tensor<1 x 2 x 3 x f64> = dynamic_slice(%x, %i) {axis = 0, size = 1}
    %xt: tensor<2 x 3 x f64> = reshape(%sl) {shape = (2, 3)}
    %a: tensor<2 x 4 x f64> = matmul(%xt, %w)
    %b: tensor<2 x 4 x f64> = matmul(%h, %u)
    %s: tensor<2 x 4 x f64> = add(%a, %b)
    %h2: tensor<2 x 4 x f64> = tanh(%s)
    %he: tensor<1 x 2 x 4 x f64> = expand_dims(%h2) {axes = (0,)}
    %y2: tensor<T x 2 x 4 x f64> = dynamic_update_slice(%y, %he, %i) {axis = 0}
    yield %h2, %y2
  }
  %hT: tensor<2 x 4 x f64> = %r[0]
  %ys: tensor<T x 2 x 4 x f64> = %r[1]
  return %hT, %ys
}
"""


def _vjp(text: str) -> Module:
    return Autodiff(wrt="none", wrt_inputs="x,h0,w,u").apply(parse_module(text), PassContext())


def _rnn_feeds(t: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((t, 2, 3)), "h0": rng.standard_normal((2, 4)),
            "w": 0.6 * rng.standard_normal((3, 4)), "u": 0.6 * rng.standard_normal((4, 4))}


def _check_every_element(m: Module, feeds: dict[str, np.ndarray], h: float = 1e-6) -> None:
    """@grad's VJP equals central differences of <douts, main(feeds)> in every input element."""
    rng = np.random.default_rng(1)
    douts = {f"d_{k}": rng.standard_normal(np.shape(v)) for k, v in run_function(m, feeds).items()}
    got = run_function(m, {**feeds, **douts}, func="grad")

    def objective(f: dict[str, np.ndarray]) -> float:
        return float(sum((np.asarray(v) * douts[f"d_{k}"]).sum() for k, v in run_function(m, f).items()))

    for k, x in feeds.items():
        fd = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            for sign in (1, -1):
                xp = x.copy()
                xp[idx] += sign * h
                fd[idx] += sign * objective({**feeds, k: xp}) / (2 * h)
        np.testing.assert_allclose(got[f"grad_{k}"], fd, rtol=1e-6, atol=1e-8, err_msg=f"d/d{k}")


@pytest.mark.parametrize("t", [0, 1, 5])
def test_rnn_symbolic_extent_matches_finite_differences(t: int) -> None:
    _check_every_element(_vjp(RNN), _rnn_feeds(t))


def test_rnn_constant_extent_matches_finite_differences() -> None:
    text = RNN.replace("T x", "3 x").replace("(T, 2, 4)", "(3, 2, 4)").replace("0..T", "0..3")
    _check_every_element(_vjp(text), _rnn_feeds(3))


def test_extent_zero_passes_cotangents_through() -> None:
    """No iteration: the final state is h0, so grad_h0 is d_hT itself and the weights get zeros."""
    m = _vjp(RNN)
    feeds = _rnn_feeds(0)
    d = np.random.default_rng(2).standard_normal((2, 4))
    got = run_function(m, {**feeds, "d_hT": d, "d_ys": np.zeros((0, 2, 4))}, func="grad")
    np.testing.assert_array_equal(got["grad_h0"], d)
    assert not got["grad_w"].any() and not got["grad_u"].any() and got["grad_x"].shape == (0, 2, 3)


def _loops(fn: Function) -> list[Loop]:
    return [b.node for b in fn.body.bindings if isinstance(b.node, Loop)]


def test_forward_loop_records_only_what_the_gradient_reads() -> None:
    """The state h is stacked per iteration (T x 2 x 4); the output accumulator y, which only
    dynamic_update_slice writes, is not (that would be T x T x 2 x 4). @main stays as it was."""
    m = _vjp(RNN)
    main, grad = m.get("main"), m.get("grad")
    assert isinstance(main, Function) and isinstance(grad, Function)
    assert print_module(Module((main,))) == print_module(Module((parse_module(RNN).get("main"),)))
    fwd, bwd = _loops(grad)
    # h, y, h's stack and the stack of tanh's output (its gradient reads it: recorded, not recomputed)
    assert len(fwd.carried) == 4 and len(fwd.inits) == 4
    h = fwd.carried[0].type
    for stack in (fwd.carried[2].type, fwd.carried[3].type):
        assert isinstance(h, TensorType) and isinstance(stack, TensorType)
        assert stack.shape == (Var("T"),) + tuple(h.shape or ()) and stack.dtype == h.dtype
    # backward: d_h, then the accumulated cotangents of x, w, u (d_y, whose rows the forward writes
    # one per iteration, is read by the backward loop, not carried)
    assert len(bwd.carried) == 4
    assert [c.type for c in bwd.carried[1:]] == [p.type for p in grad.params if p.name in ("x", "w", "u")]


def test_grad_text_round_trips_and_verifies() -> None:
    m = _vjp(RNN)
    verify_module(m)
    again = parse_module(print_module(m))
    verify_module(again)
    feeds = _rnn_feeds(4)
    rng = np.random.default_rng(5)
    ins = {**feeds, "d_hT": rng.standard_normal((2, 4)), "d_ys": rng.standard_normal((4, 2, 4))}
    a, b = run_function(m, ins, func="grad"), run_function(again, ins, func="grad")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_reversal_slice_gradient_with_a_symbolic_dim() -> None:
    """The importer's reverse direction: strided_slice with stride -1 over a whole symbolic axis."""
    text = """mlc.module v1
graph @main(%x: tensor<n x 3 x f64>) {
  %r: tensor<n x 3 x f64> = strided_slice(%x) {axes = (0,), begin = (-1,), end = (-9223372036854775807,), strides = (-1,)}
  %y: tensor<n x 3 x f64> = mul(%r, %x)
  return %y
}
"""
    m = Autodiff(wrt="none", wrt_inputs="x").apply(parse_module(text), PassContext())
    _check_every_element(m, {"x": np.random.default_rng(3).standard_normal((4, 3))})


NESTED = """mlc.module v1
graph @main(%x: tensor<T x 2 x f64>, %h0: tensor<2 x f64>, %w: tensor<2 x 2 x f64>) {
  %r: tensor<2 x f64> = for %i: i64 in 0..T carry(%h: tensor<2 x f64> = %h0) {
    %sl: tensor<1 x 2 x f64> = dynamic_slice(%x, %i) {axis = 0, size = 1}
    %xt: tensor<2 x f64> = reshape(%sl) {shape = (2,)}
    %g: tensor<2 x f64> = for %k: i64 in 0..2 carry(%q: tensor<2 x f64> = %h) {
      %m: tensor<2 x f64> = matmul(%q, %w)
      %s: tensor<2 x f64> = add(%m, %xt)
      %q2: tensor<2 x f64> = tanh(%s)
      yield %q2
    }
    %h2: tensor<2 x f64> = mul(%g, %h)
    yield %h2
  }
  return %r
}
"""


def test_nested_loops_match_finite_differences() -> None:
    """A loop in the loop body: the recomputed outer body records the inner loop in turn."""
    m = Autodiff(wrt="none", wrt_inputs="x,h0,w").apply(parse_module(NESTED), PassContext())
    verify_module(m)
    rng = np.random.default_rng(6)
    _check_every_element(m, {"x": rng.standard_normal((3, 2)), "h0": rng.standard_normal(2),
                             "w": 0.7 * rng.standard_normal((2, 2))})


# ---- if ----------------------------------------------------------------------------------------------
IF = """mlc.module v1
graph @main(%c: bool, %x: tensor<3 x 2 x f64>, %w: tensor<2 x f64>) {
  %a: tensor<3 x 2 x f64> = mul(%x, %w)
  %g: tensor<3 x 2 x f64> = if %c {
    %t: tensor<3 x 2 x f64> = tanh(%a)
    %t2: tensor<3 x 2 x f64> = mul(%t, %x)
    yield %t2
  } else {
    %e: tensor<2 x f64> = exp(%w)
    %e2: tensor<3 x 2 x f64> = add(%e, %a)
    yield %e2
  }
  %r: tensor<3 x 2 x f64> = mul(%g, %g)
  return %r
}
"""

# the RNN with a cell chosen by a run-time flag: an `if` inside the loop body
RNN_IF = RNN.replace("graph @main(", "graph @main(%c: bool, ").replace(
    "    %h2: tensor<2 x 4 x f64> = tanh(%s)\n",
    "    %h2: tensor<2 x 4 x f64> = if %c {\n      %th: tensor<2 x 4 x f64> = tanh(%s)\n      yield %th\n"
    "    } else {\n      %sg: tensor<2 x 4 x f64> = sigmoid(%s)\n      %m: tensor<2 x 4 x f64> = mul(%sg, %h)\n"
    "      yield %m\n    }\n")


def _check_with_flag(text: str, feeds: dict[str, np.ndarray], wrt: str) -> None:
    """Every element's central difference, for both values of the bool input `c` (not perturbed)."""
    m = Autodiff(wrt="none", wrt_inputs=wrt).apply(parse_module(text), PassContext())
    verify_module(m)
    for c in (True, False):
        flag = {"c": np.array(c)}
        rng = np.random.default_rng(1)
        douts = {f"d_{k}": rng.standard_normal(np.shape(v)) for k, v in run_function(m, {**flag, **feeds}).items()}
        got = run_function(m, {**flag, **feeds, **douts}, func="grad")

        def objective(f: dict[str, np.ndarray], flag: dict[str, np.ndarray] = flag,
                      douts: dict[str, np.ndarray] = douts) -> float:
            outs = run_function(m, {**flag, **f})
            return float(sum((np.asarray(v) * douts[f"d_{k}"]).sum() for k, v in outs.items()))

        for k, x in feeds.items():
            fd = np.zeros_like(x)
            for idx in np.ndindex(*x.shape):
                for sign in (1, -1):
                    xp = x.copy()
                    xp[idx] += sign * 1e-6
                    fd[idx] += sign * objective({**feeds, k: xp}) / 2e-6
            np.testing.assert_allclose(got[f"grad_{k}"], fd, rtol=1e-6, atol=1e-8, err_msg=f"c={c}: d/d{k}")


def test_if_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(4)
    _check_with_flag(IF, {"x": rng.standard_normal((3, 2)), "w": rng.standard_normal(2)}, "x,w")


def test_if_inside_a_loop_matches_finite_differences() -> None:
    assert RNN_IF.count("if %c {") == 1
    _check_with_flag(RNN_IF, _rnn_feeds(3), "x,h0,w,u")


# ---- the LSTM / GRU models ------------------------------------------------------------------------
def _f64(m: Module, consts: dict[str, np.ndarray]) -> tuple[Module, dict[str, np.ndarray]]:
    m64 = parse_module(print_module(m).replace("f32", "f64"))
    return m64, {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in consts.items()}


def _directional(out: Module, consts: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                 objective: Any, got: dict[str, np.ndarray], traced: bool, dirs: int = 2) -> None:
    """<grad, v> equals the central difference of the objective along random weight directions v
    (`traced`: the pass had the constants, so folded weights are traced back to initializers)."""
    main = out.get("main")
    assert isinstance(main, Function)
    keys = differentiable_constants(main, Provenance.of(out.meta, consts if traced else None))
    pub = public_names(keys, [])  # constant key -> the name its gradient goes by
    assert keys and {f"grad_{pub[k]}" for k in keys} == {k for k in got if k.startswith("grad_")}
    rng = np.random.default_rng(7)
    for _ in range(dirs):
        v = {k: rng.standard_normal(consts[k].shape) for k in keys}
        h = 1e-6

        def at(s: float, v: dict[str, np.ndarray] = v) -> float:
            return objective({**consts, **{k: consts[k] + s * v[k] for k in keys}})

        fd = (at(h) - at(-h)) / (2 * h)
        an = sum(float((got[f"grad_{pub[k]}"] * v[k]).sum()) for k in keys)
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (fd, an)


def test_seq2seq_vjp_matches_finite_differences() -> None:
    """The zoo seq2seq: bidirectional LSTM encoder over a symbolic source length, GRU decoder step,
    attention; every float constant @main reads (no constants given to the pass: the importer's
    folds are the parameters, so perturbing them perturbs @main), both results."""
    m, consts = _f64(*import_onnx(build("seq2seq")))
    out = Autodiff().apply(m, PassContext())
    rng = np.random.default_rng(0)
    feeds = {"src": rng.integers(0, 40, (4, 2)), "prev_token": rng.integers(0, 40, (2,))}
    ys = run_function(out, feeds, consts)
    douts = {f"d_{k}": rng.standard_normal(v.shape) for k, v in ys.items()}
    got = run_function(out, {**feeds, **douts}, consts, func="grad")
    main = m.get("main")
    assert isinstance(main, Function)
    assert len(got) == len(differentiable_constants(main)) >= 10  # both LSTM directions, the GRU, attention

    def objective(c: dict[str, np.ndarray]) -> float:
        return float(sum((v * douts[f"d_{k}"]).sum() for k, v in run_function(out, feeds, c).items()))

    _directional(out, consts, feeds, objective, got, traced=False)


@pytest.mark.parametrize("export", ["torchscript", "dynamo"])
def test_lstm_encoder_loss_matches_finite_differences(export: str) -> None:
    """The torch exports of a two-layer LSTM encoder (tests/models), mse loss."""
    m, consts = _f64(*import_onnx(onnx.load(f"{MODELS}/lstm_encoder.{export}.onnx")))
    out = Autodiff(loss="mse:target").apply(m, PassContext(constants=consts))
    rng = np.random.default_rng(1)
    feeds = {"ids": rng.integers(0, 100, (3, 7)), "target": rng.standard_normal((3, 5))}
    got = run_function(out, feeds, consts, func="grad")

    def objective(c: dict[str, np.ndarray]) -> float:
        return float(run_function(out, feeds, c, func="grad")["loss"])

    _directional(out, consts, feeds, objective, got, traced=True)


@pytest.mark.slow
def test_lstm_encoder_compiled_grad_and_train_steps() -> None:
    """One CPU build of @grad and @train_step (adam): the compiled backward loops equal the
    interpreter, and compiled steps on one batch lower the loss."""
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module, with_memory_constants

    m, consts = import_onnx(onnx.load(f"{MODELS}/lstm_encoder.torchscript.onnx"))
    out = Autodiff(loss="mse:target", optimizer="adam", lr=0.02).apply(m, PassContext(constants=consts))
    rng = np.random.default_rng(2)
    feeds = {"ids": rng.integers(0, 100, (4, 7)), "target": rng.standard_normal((4, 5)).astype(np.float32)}
    model = model_from_artifact(loads(build_module(with_memory_constants(out, consts), consts, "cpu").result.data),
                                "<test>")
    want = run_function(out, feeds, consts, func="grad")
    got = model.vm.run(feeds, "grad")
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-6, err_msg=k)
    ts = out.get("train_step")
    assert isinstance(ts, Function)
    main = out.get("main")
    assert isinstance(main, Function)
    keys = differentiable_constants(main, Provenance.of(out.meta, consts))
    init = {name: consts[k] for k, name in public_names(keys, []).items()}  # weights by input name
    ins = dict(feeds)
    for p in ts.params:
        if p.name not in ins:  # weights, then adam's moments (zeros) and step count
            ins[p.name] = init[p.name] if p.name in init else \
                np.zeros((), np.float32) if p.name == "step" else np.zeros_like(init[p.name[2:]])
    losses = []
    for _ in range(6):
        step = model.vm.run(ins, "train_step")
        losses.append(float(step["loss"]))
        ins = {**ins, **{k[len("new_"):]: v for k, v in step.items() if k.startswith("new_")}}
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses


def test_lstm_encoder_gradients_match_jax_scan() -> None:
    """The interpreter's f64 gradients against jax.grad of the same LSTM written with lax.scan
    (benchmarks/bench_bptt.jax_loss, from the ONNX initializers): an oracle that shares no code."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_bptt", Path(__file__).parents[1] / "benchmarks" / "bench_bptt.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    proto = onnx.load(f"{MODELS}/lstm_encoder.torchscript.onnx")
    m, consts = _f64(*import_onnx(proto))
    out = Autodiff(loss="mse:target").apply(m, PassContext(constants=consts))
    rng = np.random.default_rng(4)
    feeds = {"ids": rng.integers(0, 100, (3, 7)), "target": rng.standard_normal((3, 5))}
    got = run_function(out, feeds, consts, func="grad")
    params = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    want_loss, want = jax.value_and_grad(bench.jax_loss)(params, feeds["ids"], feeds["target"])
    np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-12)
    main = out.get("main")
    assert isinstance(main, Function)
    keys = differentiable_constants(main, Provenance.of(out.meta, consts))
    for k, name in public_names(keys, []).items():
        if k in want:
            ref = np.asarray(want[k])
        else:  # the importer's folded bias halves (c_..._Wb, c_..._Rb): the same half of dL/dB
            ref = np.asarray(want["onnx::LSTM_197" if "LSTM_output" in k else "onnx::LSTM_217"])[0]
            ref = ref.reshape(2, -1)[0 if k.endswith("Wb") else 1]
        np.testing.assert_allclose(got[f"grad_{name}"], ref, rtol=1e-9, atol=1e-12, err_msg=k)
