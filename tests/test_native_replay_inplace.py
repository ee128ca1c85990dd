"""Window updates in place (runtime/native_replay.py `InPlace`, issue 17): a recurrent loop's
`dynamic_update_slice` of its carried output, taped unrolled or run as a native loop, becomes a copy
of the window into the base when nothing later reads the base.

Oracles: the graph interpreter (`run_function`, numpy references, the loop walked op by op) for every
compiled run; the recorded tapes say whether the rewrite happened, so a silent fallback fails too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mlc.ir.parser import parse_module
from mlc.ir.tir import PrimFunc
from mlc.runtime import executor as executor_mod
from mlc.runtime.cpu import CpuRunner
from mlc.runtime.native_replay import WindowUpdate, is_copy, window_update
from mlc.runtime.vm import VM
from test_native_replay import RNN, _check, _inputs, _model

UPDATE = "fused_expand_dims_dynamic_update_slice"

# after the update the body reads the old carried value: the update must stay a kernel
READS_OLD = RNN.replace("    yield %h2, %y2", """    %z: tensor<T x N x D x f32> = exp(%y)
    %zs1: tensor<1 x N x D x f32> = dynamic_slice(%z, %t) {axis = 0, size = 1}
    %zs: tensor<N x D x f32> = squeeze(%zs1) {axes = (0,)}
    %h3: tensor<N x D x f32> = add(%h2, %zs)
    yield %h3, %y2""")

PRIM = """mlc.module v1

prim @upd(%u: buffer<{ushape} x f32>, %b: buffer<T x N x f32>, %out: buffer<T x N x f32>, s: i64) outputs 1 {{
  for i in 0..T {{
    for j in 0..N {{
      let v_i = i {{
        let v_j = j {{
          %out[v_i, v_j] = select({cond}, {upd}, {base})
        }}
      }}
    }}
  }}
}}
"""


def _prim(ushape: str = "N", cond: str = "0 - s + v_i >= 0 && 0 - s + v_i < 1", upd: str = "%u[v_j]",
          base: str = "%b[v_i, v_j]") -> PrimFunc:
    f = parse_module(PRIM.format(ushape=ushape, cond=cond, upd=upd, base=base)).get("upd")
    assert isinstance(f, PrimFunc)
    return f


@pytest.fixture(scope="module")
def rnn() -> Any:
    return _model(RNN)


def test_the_loop_update_kernel_is_a_window_update(rnn: Any) -> None:
    dims = rnn.library.kernel(UPDATE).dims
    assert window_update(rnn.module.get(UPDATE), dims) == WindowUpdate(0, 1, 2, dims.index("s"), 1)
    for f in rnn.module.prim_functions():
        if f.name != UPDATE:
            assert window_update(f, rnn.library.kernel(f.name).dims) is None, f.name


def test_window_update_forms() -> None:
    dims = ("T", "N", "s")
    assert window_update(_prim(), dims) == WindowUpdate(0, 1, 2, 2, 1)
    assert window_update(_prim("1 x N", upd="%u[0, v_j]"), dims) == WindowUpdate(0, 1, 2, 2, 1)
    three = "0 - s + v_i >= 0 && 0 - s + v_i < 3"
    assert window_update(_prim("3 x N", three, "%u[0 - s + v_i, v_j]"), dims) == WindowUpdate(0, 1, 2, 2, 3)
    # not a window update of the base: the window is wider than the update, the arms are swapped,
    # the base is read elsewhere than the store, the window runs along axis 1, `s` is no scalar
    for f in (_prim(cond=three), _prim(upd="%b[v_i, v_j]", base="%u[v_j]"), _prim(base="%b[0, v_j]"),
              _prim("T", "0 - s + v_j >= 0 && 0 - s + v_j < 1", "%u[v_i]")):
        assert window_update(f, dims) is None
    assert window_update(_prim(), ("T", "N")) is None


def _kinds(entries: list[Any]) -> list[str]:
    """Each launch's kernel, "copy" for the native copy (in place or loop-carried)."""
    return ["copy" if is_copy(e) else e.name for e in entries]


@pytest.mark.parametrize("trips", [1, 2, 13, 40])
def test_unrolled_loop_updates_in_place(rnn: Any, trips: int) -> None:
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner())
    for seed in range(4):  # sizes the arenas, records, then replays twice with new inputs
        _check(rnn, vm, _inputs(trips, 3, 5, seed))
    (tape,) = vm.tapes.values()
    kinds = _kinds(tape.entries)
    # the last update's output is the result `ys`: it stays a kernel; the others copy one row (and
    # keep the kernel's name, so that a profile counts its calls)
    assert kinds.count(UPDATE) == 1 and kinds.count("copy") == trips - 1
    assert [e.name for e in tape.entries].count(UPDATE) == trips


@pytest.mark.parametrize("trips", [3, 4, 57])
def test_native_loop_updates_in_place(rnn: Any, trips: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_mod, "MAX_TAPE_ENTRIES", 6)  # the loop is one native entry
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner())
    for seed in range(4):
        _check(rnn, vm, _inputs(trips, 2, 9, seed))
    (tape,) = vm.tapes.values()
    (loop,) = [e for e in tape.entries if e.name == "loop"]
    assert _kinds(loop.inner) == ["fused_dynamic_slice_squeeze_matmul_add_tanh", "copy"]
    assert loop.inner[1].name == UPDATE
    assert loop.inner[1].extra[0] == 9 * 2 * 4  # one row of ys, not all of it


def test_loops_outside_a_tape_update_in_place(rnn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No recording (a tape is never kept): every call runs the native loop, iterations 2.. in place."""
    monkeypatch.setattr(executor_mod, "MAX_TAPE_ENTRIES", 6)
    monkeypatch.setattr(executor_mod, "MAX_TAPE_BYTES", 0)
    vm = VM(rnn.module, rnn.params, rnn.library, CpuRunner())
    for seed in range(3):
        _check(rnn, vm, _inputs(11, 2, 4, seed))
    assert not vm.tapes


def test_a_base_read_after_the_update_stays_a_kernel() -> None:
    m = _model(READS_OLD)
    vm = VM(m.module, m.params, m.library, CpuRunner())
    for seed in range(3):
        _check(m, vm, _inputs(7, 2, 3, seed))
    (tape,) = vm.tapes.values()
    assert _kinds(tape.entries).count(UPDATE) == 7


def test_seq2seq_agrees_with_onnxruntime() -> None:
    """The zoo's encoder-decoder (bidirectional LSTM: two loops with updates in place) end to end."""
    import onnxruntime as ort
    from mlc.frontend import zoo

    import mlc

    proto = zoo.seq2seq()
    model = mlc.compile(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for s, n in ((20, 3), (20, 3), (5, 2)):
        feeds = {"src": rng.integers(0, 40, (s, n)).astype(np.int64), "prev_token": rng.integers(0, 40, n).astype(np.int64)}
        got, want = model(**feeds), sess.run(None, feeds)
        np.testing.assert_allclose(got["log_probs"], want[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["attention"], want[1], rtol=1e-4, atol=1e-5)
    assert sum(map(is_copy, (e for t in model.vm.tapes.values() for e in t.entries))) >= 2 * 19
