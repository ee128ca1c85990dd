"""Tapes replayed by one native call, loops of kernels recorded unrolled (issue 17, runtime/native_replay.py).

The oracle is the graph interpreter (`run_function`: numpy references of every op, the loop walked
op by op). Each case checks that the compiled run really took the native path (a tape with a native
program), so a silent fallback to the Python walk would not pass for the feature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mlc.ir.diagnostics import MlcError
from mlc.ir.interp import run_function
from mlc.ir.parser import parse_module
from mlc.runtime import executor as executor_mod
from mlc.runtime import native_replay
from mlc.runtime.artifact import loads
from mlc.runtime.cpu import CpuRunner
from mlc.runtime.model import model_from_artifact
from mlc.runtime.vm import VM

from mlc.compiler import build_module, with_memory_constants

RNN = """mlc.module v1

graph @main(%xs: tensor<T x N x D x f32>, %h0: tensor<N x D x f32>, %w: tensor<D x D x f32>) {
  %y0: tensor<T x N x D x f32> = full() {dtype = "f32", shape = (T, N, D), value = 0.0}
  %r: tuple<tensor<N x D x f32>, tensor<T x N x D x f32>> = for %t: i64 in 0..T carry(%h: tensor<N x D x f32> = %h0, %y: tensor<T x N x D x f32> = %y0) {
    %xt1: tensor<1 x N x D x f32> = dynamic_slice(%xs, %t) {axis = 0, size = 1}
    %xt: tensor<N x D x f32> = squeeze(%xt1) {axes = (0,)}
    %hw: tensor<N x D x f32> = matmul(%h, %w)
    %s: tensor<N x D x f32> = add(%hw, %xt)
    %h2: tensor<N x D x f32> = tanh(%s)
    %he: tensor<1 x N x D x f32> = expand_dims(%h2) {axes = (0,)}
    %y2: tensor<T x N x D x f32> = dynamic_update_slice(%y, %he, %t) {axis = 0}
    yield %h2, %y2
  }
  %hl: tensor<N x D x f32> = %r[0]
  %ys: tensor<T x N x D x f32> = %r[1]
  %out: tensor<N x D x f32> = mul(%hl, %h0)
  return %out, %ys
}
"""

GATHER = """mlc.module v1

graph @main(%x: tensor<8 x f32>, %i: tensor<4 x i64>) {
  %a: tensor<8 x f32> = exp(%x)
  %g: tensor<4 x f32> = take(%a, %i) {axis = 0}
  %y: tensor<4 x f32> = mul(%g, %g)
  return %y
}
"""


def _model(text: str) -> Any:
    mod = parse_module(text)
    return model_from_artifact(loads(build_module(with_memory_constants(mod, {}), {}, "cpu").result.data), "<test>")


@pytest.fixture(scope="module")
def rnn() -> Any:
    return _model(RNN)


def _inputs(t: int, n: int, d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"xs": rng.standard_normal((t, n, d)).astype(np.float32),
            "h0": rng.standard_normal((n, d)).astype(np.float32),
            "w": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)}


def _check(m: Any, vm: VM, x: dict[str, np.ndarray]) -> None:
    got, want = vm.run(x), run_function(m.module, x, m.params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("trips", [0, 1, 2, 13])
def test_loop_recorded_unrolled_and_replayed_natively(rnn: Any, trips: int) -> None:
    rng = np.random.default_rng(trips)
    n, d = int(rng.integers(1, 6)), int(rng.integers(1, 20))
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner())
    for seed in range(4):  # sizes the arenas, records, then replays twice with new inputs
        _check(rnn, vm, _inputs(trips, n, d, seed))
    (tape,) = vm.tapes.values()
    assert tape.program is not None and tape.program.count == len(tape.entries)
    assert len(tape.entries) == 2 + 2 * trips  # full, mul, and per iteration the two fused kernels


def test_other_dims_record_their_own_tape(rnn: Any) -> None:
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner())
    for t, n, d, seed in ((3, 2, 5, 0), (3, 2, 5, 1), (7, 1, 9, 2), (7, 1, 9, 3), (3, 2, 5, 4), (7, 1, 9, 5), (3, 2, 5, 6)):
        _check(rnn, vm, _inputs(t, n, d, seed))
    assert len(vm.tapes) == 2 and all(tp.program is not None for tp in vm.tapes.values())


def test_results_are_copies_not_the_replayed_buffers(rnn: Any) -> None:
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner())
    outs = [vm.run(_inputs(4, 2, 3, s)) for s in range(4)]
    want = run_function(rnn.module, _inputs(4, 2, 3, 1), rnn.params)
    np.testing.assert_allclose(outs[1]["ys"], want["ys"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("trips", [3, 4, 12, 57])
def test_a_loop_past_the_unroll_limit_is_one_native_loop_entry(rnn: Any, trips: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_mod, "MAX_TAPE_ENTRIES", 6)  # 2 + 2 x trips launches would not fit
    rng = np.random.default_rng(trips)
    n, d = int(rng.integers(1, 6)), int(rng.integers(1, 20))
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner())
    for seed in range(4):
        _check(rnn, vm, _inputs(trips, n, d, seed))
    (tape,) = vm.tapes.values()
    names = [e.name for e in tape.entries]
    # full, the two carried values copied in, the loop (its body: the two kernels and two copies), mul
    assert names.count("loop") == 1 and names.count("copy") == 2 and len(names) == 5
    (loop,) = [e for e in tape.entries if e.name == "loop"]
    assert len(loop.inner) == 2 and tape.program is not None


def test_loops_outside_a_tape_run_natively_each_call(rnn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested graph call is walked, never taped: its loop still runs as one native loop per call."""
    from mlc.ir.printer import print_module

    text = print_module(rnn.module).replace("graph @main(", "graph @rnn(")
    text += ("\ngraph @main(%xs: tensor<T x N x D x f32>, %h0: tensor<N x D x f32>, %w: tensor<D x D x f32>) {\n"
             "  %r: tuple<tensor<N x D x f32>, tensor<T x N x D x f32>> = call @rnn(%xs, %h0, %w)\n"
             "  %out: tensor<N x D x f32> = %r[0]\n  %ys: tensor<T x N x D x f32> = %r[1]\n"
             "  return %out, %ys\n}\n")
    module = parse_module(text)
    loops: list[tuple[int, int]] = []
    run_loop = native_replay.NativeProgram.run_loop

    def spy(self: Any, patches: Any, begin: int, end: int) -> int:
        loops.append((begin, end))
        return run_loop(self, patches, begin, end)

    monkeypatch.setattr(native_replay.NativeProgram, "run_loop", spy)
    vm = VM(module, rnn.params, rnn.library, CpuRunner())
    for t, seed in ((5, 0), (5, 1), (9, 2)):
        x = _inputs(t, 3, 4, seed)
        want = run_function(rnn.module, x, rnn.params)
        got = vm.run(x)
        np.testing.assert_allclose(got["out"], want["out"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["ys"], want["ys"], rtol=1e-4, atol=1e-5)
    assert loops == [(2, 5), (2, 5), (2, 9)]


def test_a_device_with_fresh_results_replays_an_unrolled_loop(rnn: Any) -> None:
    """The CUDA runner's shape (tests/test_vm.py FakeDevice: non-host, fresh results per replay)."""
    from test_vm import FakeDevice

    dev = FakeDevice()
    vm = VM(rnn.module, rnn.params, rnn.library, dev)
    for seed in range(2):
        _check(rnn, vm, _inputs(4, 2, 3, seed))
    launches, kept = dev.launches, vm.run(_inputs(4, 2, 3, 2))
    for seed in range(3, 5):
        _check(rnn, vm, _inputs(4, 2, 3, seed))
    assert len(vm.tapes) == 1 and dev.launches == launches  # replayed: no launcher call
    np.testing.assert_allclose(kept["ys"], run_function(rnn.module, _inputs(4, 2, 3, 2), rnn.params)["ys"],
                               rtol=1e-4, atol=1e-5)


def test_guard_pages_walk_loops_without_native_code(rnn: Any) -> None:
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner(guard="after"))
    for seed in range(2):
        _check(rnn, vm, _inputs(6, 2, 3, seed))
    assert not vm.tapes


def test_failed_index_check_in_a_native_replay_is_the_located_error() -> None:
    m = _model(GATHER)
    vm = m.vm
    x = np.arange(8, dtype=np.float32) / 8
    for _ in range(3):
        got = vm.run({"x": x, "i": np.array([0, 7, -1, 3], np.int64)})
        np.testing.assert_allclose(got["y"], np.exp(x)[[0, 7, -1, 3]] ** 2, rtol=1e-5)
    (tape,) = vm.tapes.values()
    assert tape.program is not None
    with pytest.raises(MlcError, match=r"index 40 out of range \[-8, 8\)"):
        vm.run({"x": x, "i": np.array([0, 40, 1, 2], np.int64)})
    got = vm.run({"x": x, "i": np.array([1, 2, 3, 4], np.int64)})  # the error slot was cleared
    np.testing.assert_allclose(got["y"], np.exp(x)[[1, 2, 3, 4]] ** 2, rtol=1e-5)


LOOP_GATHER = """mlc.module v1

graph @main(%xs: tensor<T x 4 x f32>, %x: tensor<8 x f32>, %i: tensor<4 x i64>) {
  %h0: tensor<4 x f32> = full() {dtype = "f32", shape = (4,), value = 0.0}
  %r: tensor<4 x f32> = for %t: i64 in 0..T carry(%h: tensor<4 x f32> = %h0) {
    %g: tensor<4 x f32> = take(%x, %i) {axis = 0}
    %h2: tensor<4 x f32> = add(%h, %g)
    yield %h2
  }
  return %r
}
"""


def test_failed_index_check_inside_a_native_loop_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_mod, "MAX_TAPE_ENTRIES", 3)
    m = _model(LOOP_GATHER)
    vm = m.vm
    x, xs = np.arange(8, dtype=np.float32), np.zeros((10, 4), np.float32)
    for idx in ([0, 7, -1, 3], [1, 2, 3, 4]):
        got = vm.run({"xs": xs, "x": x, "i": np.array(idx, np.int64)})
        np.testing.assert_allclose(got["r"], 10 * x[idx], rtol=1e-6)
    (tape,) = vm.tapes.values()
    assert [e.name for e in tape.entries].count("loop") == 1
    for _ in range(2):  # raised from the loop entry, and the slot is clear for the next call
        with pytest.raises(MlcError, match=r"index 40 out of range \[-8, 8\)"):
            vm.run({"xs": xs, "x": x, "i": np.array([0, 40, 1, 2], np.int64)})
        got = vm.run({"xs": xs, "x": x, "i": np.array([5, 6, 7, 0], np.int64)})
        np.testing.assert_allclose(got["r"], 10 * x[[5, 6, 7, 0]], rtol=1e-6)


def test_profile_still_times_each_kernel_of_a_taped_loop(rnn: Any) -> None:
    times = rnn.profile(5, **_inputs(5, 2, 3, 0))
    assert sum(k.calls for k in times) == 2 + 2 * 5  # every launch of every run, as the Python replay times them
