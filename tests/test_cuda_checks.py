"""A failed index check on CUDA is the CPU's error (issue 19).

`check_range` on the GPU records the first bad value in a device error word (codegen/cuda_expr.py's
PRELUDE: an atomicCAS on its flag, then kernel position, value and range); the runtime reads the
word once per run, after the stream is synchronized (also after a CUDA graph launch), and raises
`kernel K: index V out of range [LO, HI)`, as the CPU does. Here without a GPU: the generated
source and metadata, nvcc accepting them, and the word's decoding. On a GPU (`gpu` marker): a
take with token ids 10**9 and -41 fails with that error, eager and through a graph, and in-range
ids still equal onnxruntime.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import MlcError
from mlc.runtime.cuda import cuda_unavailable, index_error_message
from onnx import TensorProto, helper, numpy_helper

from mlc.compiler import build_module, with_memory_constants

TABLE = np.arange(40 * 24, dtype=np.float32).reshape(40, 24)


def embedding() -> object:
    """An ONNX Gather of token ids from a 40-row table (an embedding): the `take` kernel."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 24])
    g = helper.make_graph([helper.make_node("Gather", ["W", "ids"], ["y"], axis=0)], "g", [ids], [y],
                          [numpy_helper.from_array(TABLE, "W")])
    # IR version 10: the GPU machine's onnxruntime reads up to 13, a newer onnx writes 14 by default
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _cuda_build(model):  # type: ignore[no-untyped-def]
    from mlc.runtime.artifact import loads

    mod, consts = import_onnx(model)
    art = loads(build_module(with_memory_constants(mod, consts), consts, "cuda").result.data)  # nvcc, no GPU
    return art.sections["cuda_source"].decode(), json.loads(art.sections["cuda_meta"])


@pytest.mark.parametrize("model", ["gather", "gpt_block"])
def test_checks_report_into_the_error_word(model: str) -> None:
    """Every kernel that checks an index names its own position in the module, and only those are
    marked `checks` (the runtime reads the word for them)."""
    from mlc.frontend import zoo

    src, meta = _cuda_build(embedding() if model == "gather" else zoo.build("gpt_block"))
    assert "__device__ unsigned long long mlc_index_error[5];" in src
    assert "atomicCAS(&mlc_index_error[0], 0ull, 1ull)" in src
    names = [k["name"] for k in meta["kernels"]]
    kernels = re.split(r'extern "C" __global__ void __launch_bounds__\(\d+\) mlc_', src)[1:]
    calls: dict[str, set[int]] = {}
    for body in kernels:
        func = next(n for n in sorted(names, key=len, reverse=True) if body.startswith(n + "_k"))
        ids = {int(m) for m in re.findall(r"mlc_check_range\(.*?, (-?\d+)\)", body)}
        calls.setdefault(func, set()).update(ids)
    for k, name in enumerate(names):
        assert calls.get(name, set()) in (set(), {k}), (name, calls.get(name))
        assert meta["kernels"][k]["checks"] == bool(calls.get(name)), name
    assert any(k["checks"] for k in meta["kernels"])  # take's ids; gpt_block's causal-mask read at T
    if model == "gather":
        assert names == ["take"]


def test_error_word_decodes_to_the_cpu_message() -> None:
    names = ["layer_norm", "take"]
    word = np.array([1, 1, 0, 0, 0], np.uint64)
    word[2:] = np.array([10**9, -40, 40], np.int64).view(np.uint64)
    assert index_error_message(word, names) == "kernel take: index 1000000000 out of range [-40, 40)"
    word[2:] = np.array([-(2**63), -40, 40], np.int64).view(np.uint64)
    assert index_error_message(word, names) == f"kernel take: index {-(2**63)} out of range [-40, 40)"
    assert index_error_message(np.zeros(5, np.uint64), names) is None
    word[1] = 7  # a kernel position the metadata does not have: still one message
    assert index_error_message(word, names).startswith("kernel ?: index")


# ---- on a GPU --------------------------------------------------------------------------------------
_WHY = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("graphs", ["1", "0"])
@pytest.mark.parametrize("bad", [10**9, -41, 40])
def test_take_out_of_range_on_gpu_is_one_located_error(monkeypatch: pytest.MonkeyPatch, graphs: str, bad: int) -> None:
    import onnxruntime as ort

    from mlc.compiler import compile as mlc_compile

    monkeypatch.setenv("MLC_CUDA_GRAPHS", graphs)
    model = embedding()
    rows = mlc_compile(model, target="cuda")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    good = np.array([[0, 39, -1, -40, 5, 7]], np.int64)
    for _ in range(3):  # eager, recorded, then (graphs on) a captured graph launch
        got = rows(ids=good)["y"]
        np.testing.assert_array_equal(got, sess.run(None, {"ids": good})[0])
        np.testing.assert_array_equal(got, TABLE[good])
    ids = good.copy()
    ids[0, 4] = bad  # the same shape: the replayed tape (a graph when on) meets the bad id
    with pytest.raises(MlcError, match=rf"kernel take: index {bad} out of range \[-40, 40\)"):
        rows(ids=ids)
    np.testing.assert_array_equal(rows(ids=good)["y"], TABLE[good])  # the word was cleared


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
def test_kernel_call_on_gpu_reports_too() -> None:
    """CudaKernel.__call__ (tools and tests) reads the word after its synchronize."""
    from mlc.runtime.artifact import loads
    from mlc.runtime.cuda import CUDA

    mod, consts = import_onnx(embedding())
    art = loads(build_module(with_memory_constants(mod, consts), consts, "cuda").result.data)
    take = CUDA.load(art, "t.mlc").kernel("take")
    ids = np.array([[1, -41]], np.int64)
    arrays = [TABLE if dt == "f32" else ids for _, dt, _ in take.params[:-1]] + [np.zeros((1, 2, 24), np.float32)]
    with pytest.raises(MlcError, match=r"kernel take: index -41 out of range \[-40, 40\)"):
        take(arrays)


def test_runner_reads_each_checking_library_once_per_sync() -> None:
    """Without a GPU: CudaRunner's launcher registers a checking kernel's read once per library,
    and sync (once per run) waits for the stream, then reads; kernels that do not check add nothing."""
    from types import SimpleNamespace

    from mlc.runtime.cuda_vm import CudaRunner

    events: list[str] = []

    class Lib:
        def __init__(self, name: str) -> None:
            self.name = name

        def raise_failed_check(self) -> None:
            events.append(f"read {self.name}")

    a, b = Lib("a"), Lib("b")
    runner = CudaRunner.__new__(CudaRunner)  # no GPU: only what launcher and sync use
    runner.stream = SimpleNamespace(synchronize=lambda: events.append("sync"))
    runner._checks = {}
    for check in (a.raise_failed_check, a.raise_failed_check, None, b.raise_failed_check):
        runner.launcher(SimpleNamespace(dims=[], check=check), "f", None)
    runner.sync()
    assert events == ["sync", "read a", "read b"]
