"""The backward (BPTT) loops of `@grad` run natively (runtime/executor.py, runtime/native_replay.py).

autodiff's backward loop walks the forward iterations in reverse: its body computes the forward
index as `scalar T - 1 - t`, reads the stored per-iteration values with `dynamic_slice` at that
index and accumulates into carried gradients. That index arithmetic is affine in the loop index, so
the body is a native loop (two walked iterations give each patched dim's step, negative here) and
the whole function a tape. The oracle is the graph interpreter on the module before compilation;
each case checks the recorded tapes, so a silent fallback to the Python walk fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mlc.ir.graph import CallTensor, Function, Loop, Scalar
from mlc.ir.interp import run_function
from mlc.ir.parser import parse_module
from mlc.passes.autodiff import Autodiff
from mlc.passes.registry import PassContext
from mlc.runtime import executor as executor_mod
from mlc.runtime import native_replay
from mlc.runtime.artifact import loads
from mlc.runtime.cpu import CpuRunner
from mlc.runtime.model import model_from_artifact
from mlc.runtime.vm import VM

from mlc.compiler import build_module, with_memory_constants

RNN = """mlc.module v1

graph @main(%xs: tensor<T x N x D x f32>, %h0: tensor<N x D x f32>, %w: tensor<D x D x f32>, %u: tensor<D x D x f32>) {
  %y0: tensor<T x N x D x f32> = full() {dtype = "f32", shape = (T, N, D), value = 0.0}
  %r: tuple<tensor<N x D x f32>, tensor<T x N x D x f32>> = for %t: i64 in 0..T carry(%h: tensor<N x D x f32> = %h0, %y: tensor<T x N x D x f32> = %y0) {
    %xt1: tensor<1 x N x D x f32> = dynamic_slice(%xs, %t) {axis = 0, size = 1}
    %xt: tensor<N x D x f32> = squeeze(%xt1) {axes = (0,)}
    %xw: tensor<N x D x f32> = matmul(%xt, %w)
    %hu: tensor<N x D x f32> = matmul(%h, %u)
    %s: tensor<N x D x f32> = add(%xw, %hu)
    %h2: tensor<N x D x f32> = tanh(%s)
    %he: tensor<1 x N x D x f32> = expand_dims(%h2) {axes = (0,)}
    %y2: tensor<T x N x D x f32> = dynamic_update_slice(%y, %he, %t) {axis = 0}
    yield %h2, %y2
  }
  %hl: tensor<N x D x f32> = %r[0]
  %ys: tensor<T x N x D x f32> = %r[1]
  %out: tensor<T x N x D x f32> = mul(%hl, %ys)
  return %out
}
"""


@pytest.fixture(scope="module")
def rnn() -> tuple[Any, Any]:
    """(@grad's module before compilation, the compiled model): sum loss, all inputs differentiated."""
    out = Autodiff(wrt="none", wrt_inputs="xs,h0,w,u", loss="sum").apply(parse_module(RNN), PassContext())
    return out, model_from_artifact(loads(build_module(with_memory_constants(out, {}), {}, "cpu").result.data),
                                    "<test>")


def _inputs(t: int, n: int, d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"xs": rng.standard_normal((t, n, d)).astype(np.float32),
            "h0": rng.standard_normal((n, d)).astype(np.float32),
            "w": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32),
            "u": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)}


def _check(src: Any, vm: VM, x: dict[str, np.ndarray]) -> None:
    got, want = vm.run(x, "grad"), run_function(src, x, func="grad")
    assert got.keys() == want.keys() == {"loss", "grad_xs", "grad_h0", "grad_w", "grad_u"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=2e-5, err_msg=k)


def _grad_loops(model: Any) -> list[Loop]:
    fn = model.vm.module.get("grad")
    assert isinstance(fn, Function)
    return [b.node for b in fn.body.bindings if isinstance(b.node, Loop)]


def test_the_backward_loop_qualifies_as_a_native_loop(rnn: tuple[Any, Any]) -> None:
    loops = _grad_loops(rnn[1])
    assert len(loops) == 2  # the forward loop (recording what the backward reads) and the backward
    bwd = [lp for lp in loops if any(isinstance(b.node, Scalar) for b in lp.body.bindings)]
    assert len(bwd) == 1 and all(executor_mod._native_loop_body(lp) for lp in loops)
    fn = rnn[1].vm.module.get("grad")
    assert executor_mod._tapeable(fn.body)


@pytest.mark.parametrize("trips", [1, 2, 5])
def test_grad_is_one_tape_with_both_loops_unrolled(rnn: tuple[Any, Any], trips: int) -> None:
    src, model = rnn
    vm = VM(model.module, model.params, model.library, CpuRunner())
    for seed in range(4):  # sizes the arenas, records, then replays with new inputs
        _check(src, vm, _inputs(trips, 2, 3, seed))
    (tape,) = [tp for k, tp in vm.tapes.items() if k[0] == "grad"]
    assert tape.program is not None and tape.program.count == len(tape.entries)
    assert "loop" not in [e.name for e in tape.entries]
    fwd, bwd = _grad_loops(model)
    per_trip = sum(1 for lp in (fwd, bwd) for b in lp.body.bindings if isinstance(b.node, CallTensor))
    assert len(tape.entries) >= per_trip * trips  # every iteration of both loops is on the tape


@pytest.mark.parametrize("trips", [6, 11])
def test_past_the_unroll_limit_both_loops_run_natively(rnn: tuple[Any, Any], trips: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Iterations 2.. of the backward loop run in one native call (the forward index T - 1 - t
    patched per trip with step -1), and the tape holds each loop as one entry."""
    src, model = rnn
    fn = model.vm.module.get("grad")
    outside = sum(isinstance(b.node, CallTensor) for b in fn.body.bindings)
    # room for the launches outside the loops, the carried values copied in and the two loop entries
    limit = outside + sum(len(lp.inits) for lp in _grad_loops(model)) + 2
    assert all(limit < trips * sum(isinstance(b.node, CallTensor) for b in lp.body.bindings)
               for lp in _grad_loops(model))  # neither loop fits unrolled
    monkeypatch.setattr(executor_mod, "MAX_TAPE_ENTRIES", limit)
    calls: list[tuple[int, int, int]] = []
    run_loop = native_replay.NativeProgram.run_loop

    def spy(self: Any, patches: Any, begin: int, end: int) -> int:
        calls.append((begin, end, min((p[2] for p in patches), default=0)))
        return run_loop(self, patches, begin, end)

    monkeypatch.setattr(native_replay.NativeProgram, "run_loop", spy)
    vm = VM(model.module, model.params, model.library, CpuRunner())
    for seed in range(4):
        _check(src, vm, _inputs(trips, 3, 4, seed))
    (tape,) = [tp for k, tp in vm.tapes.items() if k[0] == "grad"]
    assert [e.name for e in tape.entries].count("loop") == 2 and tape.program is not None
    # walked (recording) calls: the forward loop (index patched upward) and the backward (downward)
    assert any(c[:2] == (2, trips) and c[2] < 0 for c in calls), calls
    assert any(c[:2] == (2, trips) and c[2] >= 0 for c in calls), calls


def test_a_non_affine_index_is_walked() -> None:
    """t * t cannot be patched from two recordings: the body is not a native loop."""
    text = """mlc.module v1

graph @main(%xs: tensor<T x 4 x f32>) {
  %h0: tensor<4 x f32> = full() {dtype = "f32", shape = (4,), value = 0.0}
  %r: tensor<4 x f32> = for %t: i64 in 0..T carry(%h: tensor<4 x f32> = %h0) {
    %a: i64 = scalar T - 1 - t
    %u: i64 = scalar a * a
    %x: tensor<4 x f32> = call_tensor @row(%xs) [u]
    %h2: tensor<4 x f32> = call_tensor @add(%h, %x)
    yield %h2
  }
  return %r
}
"""
    loop = parse_module(text).functions[0].body.bindings[1].node
    assert isinstance(loop, Loop) and not executor_mod._native_loop_body(loop)
    affine = parse_module(text.replace("scalar a * a", "scalar 2 * a + 1")).functions[0].body.bindings[1].node
    assert isinstance(affine, Loop) and executor_mod._native_loop_body(affine)


def test_seq2seq_grad_bidirectional_lstm_and_gru_is_one_native_tape() -> None:
    """The zoo's seq2seq (a bidirectional LSTM encoder, the reverse direction on the reversed
    sequence; a GRU decoder step; attention): every loop of the compiled VJP is a native loop body,
    the whole @grad one tape, and its replays equal the interpreter."""
    from mlc.frontend.onnx_import import import_onnx
    from mlc.frontend.zoo import build

    m, consts = import_onnx(build("seq2seq"))
    out = Autodiff().apply(m, PassContext(constants=consts))
    model = model_from_artifact(loads(build_module(with_memory_constants(out, consts), consts, "cpu").result.data),
                                "<test>")
    loops = _grad_loops(model)
    assert len(loops) == 6 and all(executor_mod._native_loop_body(lp) for lp in loops)
    vm = model.vm
    for seed in range(3):
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {"src": rng.integers(0, 40, (5, 2)), "prev_token": rng.integers(0, 40, (2,))}
        ys = run_function(out, feeds, consts)
        feeds.update({f"d_{k}": rng.standard_normal(v.shape).astype(np.float32) for k, v in ys.items()})
        got, want = vm.run(feeds, "grad"), run_function(out, feeds, consts, func="grad")
        assert got.keys() == want.keys() and len(want) >= 10
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-5, err_msg=k)
    (tape,) = [tp for k, tp in vm.tapes.items() if k[0] == "grad"]
    assert tape.program is not None and "loop" not in [e.name for e in tape.entries]
