"""One graph walk for every device (runtime/vm.py + executor.py over a device `Runner`).

CUDA cannot run here, so its half of the walk (values that are not host arrays, host fallback for
graph-level ops, fresh results per replayed tape, a moved workspace voiding tapes) is driven by a
stand-in device whose tensors are boxed numpy arrays and whose launches are the CPU kernels. Every
run is checked against the reference interpreter (ir/interp.run_function).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mlc.frontend import zoo
from mlc.ir.diagnostics import MlcError
from mlc.ir.interp import match_type, run_function
from mlc.runtime.cpu import CpuRunner
from mlc.runtime.vm import VM

from mlc.compiler import compile as mlc_compile


class Boxed:
    """A 'device tensor': not a numpy array, so the walk cannot mistake it for host memory."""

    def __init__(self, a: np.ndarray):
        self.a = a
        self.shape, self.dtype = a.shape, a.dtype


def _unbox(v: Any) -> Any:
    return v.a if isinstance(v, Boxed) else tuple(_unbox(x) for x in v) if isinstance(v, tuple) else v


def _box(v: Any) -> Any:
    return Boxed(v) if isinstance(v, np.ndarray) else tuple(_box(x) for x in v) if isinstance(v, tuple) else v


class FakeDevice:
    """A non-host device in the CUDA runner's shape, whose launches are the CPU kernels'."""

    kind, host, records, fresh_results = "fake", False, True, True

    def __init__(self) -> None:
        self.cpu = CpuRunner()
        self.generation = 0
        self.host_nodes = 0
        self.launches = 0

    def copy_in(self, a: np.ndarray) -> Boxed:
        return Boxed(np.array(a, copy=True, order="C"))

    def copy_out(self, v: Any) -> Any:
        return np.array(_unbox(v), copy=True) if isinstance(v, Boxed) else _unbox(v)

    def to_host(self, v: Any) -> Any:
        self.host_nodes += 1
        return _unbox(v)

    def from_host(self, v: Any) -> Any:
        return _box(v)

    def match(self, val: Any, ty: Any, dims: dict[str, int], what: str, loc: Any) -> None:
        assert not isinstance(val, np.ndarray), f"{what} is a host array on the device"
        match_type(_unbox(val), ty, dims, what, loc)

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> Boxed:
        return Boxed(np.full(shape, 7, dtype))  # not zeros: a kernel that skips a write shows

    def alloc_bytes(self, n: int) -> np.ndarray:
        return np.full(n, 0xAB, np.uint8)

    def view(self, mem: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> Boxed:
        return Boxed(self.cpu.view(mem, shape, dtype))

    def address(self, t: Boxed) -> int:
        return t.a.ctypes.data

    def prepare_args(self, args: list[Any], func: str, loc: Any) -> list[Any]:
        for a in args:
            if not isinstance(a, Boxed):
                raise MlcError(f"call_tensor @{func}: argument is not a tensor on the device", loc)
        return list(args)

    def launcher(self, kernel: Any, func: str, loc: Any) -> Any:
        inner = self.cpu.launcher(kernel, func, loc)

        def launch(bufs: list[Boxed], kd: list[int], timings: Any, record: Any) -> None:
            self.launches += 1
            inner([b.a for b in bufs], kd, timings, record)

        return launch

    def sync(self) -> None:
        pass


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {n: mlc_compile(zoo.build(n)) for n in ("gpt_block", "seq2seq")}


def _gpt_inputs(b: int, t: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((b, t, 32)).astype(np.float32)}


def test_device_walk_matches_interpreter_and_replays_with_fresh_results(models: dict[str, Any]) -> None:
    m = models["gpt_block"]
    dev = FakeDevice()
    vm = VM(m.module, m.params, m.library, dev)
    first = vm.run(_gpt_inputs(2, 5, 0))  # sizes the arenas: a recording over moving arenas is dropped
    assert not vm.tapes
    kept = vm.run_device({"x": dev.copy_in(_gpt_inputs(2, 5, 1)["x"])})  # records
    assert len(vm.tapes) == 1
    snapshot = np.array(kept["y"].a, copy=True)
    launches = dev.launches
    for seed in (2, 3):
        x = _gpt_inputs(2, 5, seed)
        got = vm.run(x)  # replayed: no walk, no launcher
        np.testing.assert_allclose(got["y"], run_function(m.module, x, m.params)["y"], rtol=1e-4, atol=1e-5)
    assert dev.launches == launches and len(vm.tapes) == 1
    # results of a replay are fresh device tensors: the one handed out earlier is intact
    np.testing.assert_array_equal(kept["y"].a, snapshot)
    np.testing.assert_array_equal(vm.run(_gpt_inputs(2, 5, 0))["y"], first["y"])


def test_moved_arena_voids_tapes_and_other_dims_rerecord(models: dict[str, Any]) -> None:
    m = models["gpt_block"]
    for runner in (CpuRunner(), FakeDevice()):
        vm = VM(m.module, m.params, m.library, runner)
        for b, t, seed in ((1, 3, 0), (1, 3, 1), (3, 7, 2), (1, 3, 3), (3, 7, 4), (1, 3, 5)):
            x = _gpt_inputs(b, t, seed)
            got = vm.run(x)
            np.testing.assert_allclose(got["y"], run_function(m.module, x, m.params)["y"], rtol=1e-4, atol=1e-5)
        assert all(tp.generation == runner.generation for tp in vm.tapes.values())


def test_control_flow_and_host_nodes_on_a_device(models: dict[str, Any]) -> None:
    m = models["seq2seq"]
    dev = FakeDevice()
    vm = VM(m.module, m.params, m.library, dev)
    rng = np.random.default_rng(0)
    for s, n in ((4, 2), (6, 3)):
        x = {"src": rng.integers(0, 16, (s, n)).astype(np.int64), "prev_token": rng.integers(0, 16, (n,)).astype(np.int64)}
        got, want = vm.run(x), run_function(m.module, x, m.params)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
    assert not vm.tapes  # a time loop: walked every call, never recorded


def test_cpu_and_device_give_the_same_input_errors(models: dict[str, Any]) -> None:
    m = models["gpt_block"]
    for runner in (CpuRunner(), FakeDevice()):
        vm = VM(m.module, m.params, m.library, runner)
        with pytest.raises(MlcError, match="@main takes inputs x; missing x; unknown y"):
            vm.run({"y": np.zeros((1, 1, 32), np.float32)})
        with pytest.raises(MlcError, match="argument %x of @main"):
            vm.run({"x": np.zeros((1, 1, 31), np.float32)})


def test_nested_graph_calls_run_the_callee_walk_on_fresh_memory(models: dict[str, Any]) -> None:
    """`call @f` inside a compiled model: the callee's arenas must not alias the caller's live values
    (here the first call's result is the second call's input)."""
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module

    m = models["gpt_block"]
    text = print_module(m.module).replace("graph @main(", "graph @block(")
    text += ("\ngraph @main(%x: tensor<B x T x 32 x f32>) {\n"
             "  %a: tensor<B x T x 32 x f32> = call @block(%x)\n"
             "  %y: tensor<B x T x 32 x f32> = call @block(%a)\n"
             "  return %y\n}\n")
    module = parse_module(text)
    for runner in (CpuRunner(), FakeDevice()):
        vm = VM(module, m.params, m.library, runner)
        for seed in (0, 1):
            x = _gpt_inputs(2, 3, seed)
            want = run_function(m.module, {"x": run_function(m.module, x, m.params)["y"]}, m.params)["y"]
            np.testing.assert_allclose(vm.run(x)["y"], want, rtol=1e-4, atol=1e-5)
        with pytest.raises(MlcError, match="@block takes 1 arguments, got 2"):
            vm.call("block", [x["x"], x["x"]])
