"""CUDA graphs for straight-line functions (runtime/cuda_vm.py): a tape captured once per set of dims
and replayed with one graph launch, inputs and results through staging buffers.

Without a GPU, the capture and replay logic runs against a fake driver whose kernels compute on numpy
"device memory" (the real `launch_packed` entries and argument packing): graph replay must equal the
tape's launch-by-launch replay for changing input and output addresses, a refused capture must fall
back, and tapes of moved memory are dropped. With a GPU: gpt_block and resnext at two shapes, graph
replay against eager runs and onnxruntime, and $MLC_CUDA_GRAPHS=0 turning it off."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from cuda_helpers import SETTINGS, zoo_case, zoo_module
from mlc.runtime.cuda import cuda_unavailable
from mlc.runtime.cuda_vm import GRAPHS_ENV, DeviceTensor, GraphCache, graphable, graphs_enabled, launch_packed
from mlc.runtime.tape import INPUT, OUTPUT, Tape, TapeEntry


class FakeDevice:
    """Device memory as numpy arrays by address; kernels run at once, or are recorded while capturing."""

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.next = 4096
        self.capturing: list[tuple[Any, bytes]] | None = None
        self.graphs: dict[int, list[tuple[Any, bytes]]] = {}
        self.captures = 0
        self.refuse = False
        self.fail_launch = False

    def alloc(self, n: int) -> int:
        addr, self.next = self.next, self.next + n + 256
        self.mem[addr] = np.zeros(n // 4, np.float32)
        return addr

    def copy(self, dst: int, src: int, n: int) -> None:
        self.mem[dst][: n // 4] = self.mem[src][: n // 4]

    # the GraphDriver interface
    def capture(self, stream: int, launches: Any) -> int:
        self.capturing = []
        try:
            launches()
            if self.refuse:
                raise RuntimeError("capture refused")
            self.captures += 1
            self.graphs[self.captures] = self.capturing
            return self.captures
        finally:
            self.capturing = None

    def launch(self, exe: int, stream: int) -> None:
        if self.fail_launch:
            raise RuntimeError("launch failed")
        for k, buf in self.graphs[exe]:
            k.run(buf)

    def destroy(self, exe: int) -> None:
        del self.graphs[exe]


class FakeKernel:
    """y = a * x + b over n floats; arguments packed as the CUDA launcher packs them (3 pointers, n)."""

    def __init__(self, dev: FakeDevice, a: float, b: float):
        self.dev, self.a, self.b = dev, a, b

    def _launch_kernel(self, grid: Any, block: Any, buf: bytes, shared: int, stream: Any) -> None:
        if self.dev.capturing is not None:
            self.dev.capturing.append((self, buf))
        else:
            self.run(buf)

    def run(self, buf: bytes) -> None:
        x, z, y, n = struct.unpack("PPPq", buf)
        m = self.dev.mem
        m[y][:n] = self.a * m[x][:n] + self.b * m[z][:n]


N = 8


def _tape(dev: FakeDevice, generation: int = 0) -> tuple[Tape, int]:
    """t = 2 * in0 + 1 * in1 (t an arena buffer); out0 = 3 * t - 1 * in0."""
    t = dev.alloc(4 * N)
    k1, k2 = FakeKernel(dev, 2.0, 1.0), FakeKernel(dev, 3.0, -1.0)
    e1 = TapeEntry(launch_packed, [0, 0, t, N], (k1, (1, 1, 1), (32, 1, 1), 0, "PPPq", None), [(0, INPUT, 0), (1, INPUT, 1)], "k1")
    e2 = TapeEntry(launch_packed, [t, 0, 0, N], (k2, (1, 1, 1), (32, 1, 1), 0, "PPPq", None), [(1, INPUT, 0), (2, OUTPUT, 0)], "k2")
    return Tape([e1, e2], [("out", 0, (N,), np.dtype(np.float32))], generation), t


def _tensor(dev: FakeDevice, values: np.ndarray) -> DeviceTensor:
    addr = dev.alloc(values.nbytes)
    dev.mem[addr][:] = values
    return DeviceTensor(addr, values.shape, values.dtype, None)


def _cache(dev: FakeDevice) -> GraphCache:
    return GraphCache(dev, 7, dev.alloc, dev.copy, lambda: None)


def test_graph_replay_equals_tape_replay_for_moving_addresses() -> None:
    dev = FakeDevice()
    tape, _ = _tape(dev)
    assert graphable(tape)
    cache = _cache(dev)
    rng = np.random.default_rng(0)
    for step in range(4):  # fresh inputs and outputs at new addresses every call
        x0, x1 = (rng.standard_normal(N).astype(np.float32) for _ in range(2))
        args = [_tensor(dev, x0), _tensor(dev, x1)]
        out_g, out_t = _tensor(dev, np.zeros(N, np.float32)), _tensor(dev, np.zeros(N, np.float32))
        assert cache.replay(tape, args, [out_g])
        tape.replay([a.ptr for a in args], [out_t.ptr])  # the launch-by-launch path
        want = 3 * (2 * x0 + x1) - x0
        np.testing.assert_allclose(dev.mem[out_g.ptr], want, rtol=1e-6, err_msg=f"call {step}")
        np.testing.assert_array_equal(dev.mem[out_g.ptr], dev.mem[out_t.ptr])
    assert dev.captures == 1 and cache.launches == 4  # captured once, one graph launch per call


def test_refused_capture_falls_back_and_is_not_retried() -> None:
    dev = FakeDevice()
    dev.refuse = True
    tape, _ = _tape(dev)
    cache = _cache(dev)
    x = [_tensor(dev, np.ones(N, np.float32)), _tensor(dev, np.ones(N, np.float32))]
    out = _tensor(dev, np.zeros(N, np.float32))
    assert not cache.replay(tape, x, [out]) and not cache.replay(tape, x, [out])
    assert dev.captures == 0 and cache.launches == 0
    tape.replay([a.ptr for a in x], [out.ptr])  # the caller's fallback still computes from the real addresses
    np.testing.assert_allclose(dev.mem[out.ptr], np.full(N, 8.0))


def test_a_graph_that_will_not_launch_falls_back() -> None:
    dev = FakeDevice()
    dev.fail_launch = True
    tape, _ = _tape(dev)
    cache = _cache(dev)
    x = [_tensor(dev, np.ones(N, np.float32)), _tensor(dev, np.ones(N, np.float32))]
    out = _tensor(dev, np.zeros(N, np.float32))
    assert not cache.replay(tape, x, [out]) and dev.captures == 1 and not dev.graphs  # captured, destroyed
    assert not cache.replay(tape, x, [out]) and dev.captures == 1 and cache.launches == 0  # not captured again


def test_host_work_is_not_captured_and_moved_memory_drops_graphs() -> None:
    dev = FakeDevice()
    tape, _ = _tape(dev)
    host = Tape([TapeEntry(lambda args, extra: None, [], None, [], "copy")], [], 0)
    cache = _cache(dev)
    x = [_tensor(dev, np.ones(N, np.float32)), _tensor(dev, np.ones(N, np.float32))]
    out = _tensor(dev, np.zeros(N, np.float32))
    assert not graphable(host) and not cache.replay(host, x, [])
    assert cache.replay(tape, x, [out]) and len(dev.graphs) == 1
    newer, _ = _tape(dev, generation=1)  # an arena grew: the VM records a new tape
    assert cache.replay(newer, x, [out])
    assert len(dev.graphs) == 1 and list(cache.graphs) == [id(newer)]  # the stale graph was destroyed


def test_graphs_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GRAPHS_ENV, raising=False)
    assert graphs_enabled()
    for off in ("0", "off", "false"):
        monkeypatch.setenv(GRAPHS_ENV, off)
        assert not graphs_enabled()


# ---- on a GPU --------------------------------------------------------------------------------------
_WHY = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("name", ["gpt_block", "resnext"])
def test_graph_replay_equals_eager_on_gpu(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from mlc.passes.schedule.gpu_rules import default_gpu_schedule
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM

    mod, consts = zoo_module(name)
    lib = compile_cuda([default_gpu_schedule(f) for f in mod.prim_functions()])
    monkeypatch.setenv(GRAPHS_ENV, "1")
    vm = CudaVM(mod, consts, lib)
    cases = [zoo_case(name, k) for k in (0, 2)]
    # both shapes interleaved. Round 0 sizes the arenas (shape 2 grows them, which voids anything
    # recorded before: no tape), round 1 records a tape per shape (eager), round 2 captures each tape
    # and launches it as a graph, round 3 launches the captured graphs again
    added = []
    for rnd in range(4):
        before = vm.runner.graph_cache.launches
        for k, (feeds, want) in zip((0, 2), cases):
            got = vm.run(feeds)
            for o, w in want.items():
                np.testing.assert_allclose(got[o], w, rtol=1e-4, atol=1e-5, err_msg=f"{name}:{o} {SETTINGS[k]} run {rnd}")
        added.append(vm.runner.graph_cache.launches - before)
    assert added[2:] == [2, 2], added  # rounds 2 and 3: both shapes went through graphs
    monkeypatch.setenv(GRAPHS_ENV, "0")
    eager = CudaVM(mod, consts, lib)
    before = vm.runner.graph_cache.launches
    for feeds, _ in cases:
        a, b, c = eager.run(feeds), eager.run(feeds), vm.run(feeds)
        for o in a:
            np.testing.assert_array_equal(b[o], a[o])
            np.testing.assert_array_equal(c[o], a[o])  # the same kernels in the same order: bit for bit
    assert vm.runner.graph_cache.launches == before and eager.runner._graphs is None


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
def test_profile_on_gpu_times_every_kernel_and_leaves_graphs_on() -> None:
    """`VM.profile` on the GPU replays the tape launch by launch, each waited for: every kernel of a
    run appears with a positive time, and the next normal run goes back to graph replay."""
    from mlc.passes.schedule.gpu_rules import default_gpu_schedule
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM

    mod, consts = zoo_module("gpt_block")
    vm = CudaVM(mod, consts, compile_cuda([default_gpu_schedule(f) for f in mod.prim_functions()]))
    feeds, want = zoo_case("gpt_block", 1)
    prof = vm.profile(feeds, runs=3)
    names = {k.func for k in prof}
    assert names <= {f.name for f in mod.prim_functions()} and len(names) >= 5, names
    assert all(k.per_run > 0 and k.calls >= 1 for k in prof)
    assert vm.timings is None
    got = vm.run(feeds)
    for o, w in want.items():
        np.testing.assert_allclose(got[o], w, rtol=1e-4, atol=1e-5)
