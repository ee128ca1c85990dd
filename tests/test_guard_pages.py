"""Compiled kernels never read or write outside their buffers.

Every kernel argument is copied flush against an inaccessible page (runtime/guard.py), once with
the page after the buffer and once before it, so an out-of-bounds access faults instead of reading
neighbouring memory by luck. Padded 3x3 convolutions once loaded their halo before the bounds test
discarded it: resnet50, vgg19 and squeezenet crashed under `mlc run` only sometimes. Each model runs
in a child process, so a fault is a failing test naming the model, not a dead test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from mlc.frontend import zoo
from mlc.runtime.guard import guarded_copy
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def _graph(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray],
           dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(k, dtype, list(s)) for k, s in inputs.items()]
    outs = [helper.make_tensor_value_info(nodes[-1].output[0], dtype, None)]
    g = helper.make_graph(nodes, "g", ins, outs, [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _conv(c: int, k: int, kh: int, pad: int, stride: int, group: int = 1, hw: int = 9) -> onnx.ModelProto:
    w = RNG.standard_normal((k, c // group, kh, kh)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, strides=[stride] * 2, group=group)
    return _graph([node], {"x": (2, c, hw, hw)}, {"w": w})


def _pool(op: str, kh: int, pad: int, stride: int) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[kh, kh], pads=[pad] * 4, strides=[stride] * 2)
    return _graph([node], {"x": (1, 5, 11, 11)}, {})


def _gather_slice_pad() -> onnx.ModelProto:
    idx = np.array([0, 6, 3, 6], np.int64)
    nodes = [helper.make_node("Gather", ["x", "i"], ["g"], axis=1),
             helper.make_node("Pad", ["g", "p"], ["q"]),
             helper.make_node("Slice", ["q", "s", "e", "a", "st"], ["y"])]
    consts = {"i": idx, "p": np.array([0, 1, 2, 0, 2, 1], np.int64), "s": np.array([1, -2], np.int64),
              "e": np.array([100, 0], np.int64), "a": np.array([2, 1], np.int64), "st": np.array([2, -1], np.int64)}
    return _graph(nodes, {"x": (3, 7, 5)}, consts)


MODELS: dict[str, onnx.ModelProto] = {
    "conv3x3_pad1": _conv(3, 8, 3, 1, 1),
    "conv3x3_pad1_stride2": _conv(16, 16, 3, 1, 2),
    "conv_depthwise": _conv(8, 8, 3, 1, 1, group=8),
    "conv5x5_pad2": _conv(4, 4, 5, 2, 1, hw=10),
    "conv1x1": _conv(16, 32, 1, 0, 1, hw=7),
    # channel-vector schedules (passes/schedule/conv_tiling.py): odd, prime and strided widths, groups
    "conv3x3_pad1_grouped_odd": _conv(32, 32, 3, 1, 1, group=4, hw=13),
    "conv3x3_stride2_prime": _conv(16, 48, 3, 1, 2, hw=31),
    "conv3x3_nopad_stride2": _conv(3, 24, 3, 0, 2, hw=17),
    "maxpool_pad": _pool("MaxPool", 3, 1, 2),
    "avgpool_pad": _pool("AveragePool", 3, 1, 1),
    "gather_pad_slice": _gather_slice_pad(),
    **{f"zoo_{n}": zoo.build(n) for n in zoo.NAMES if n != "default"},
}

_CHILD = textwrap.dedent("""
    import sys, numpy as np, onnx
    import mlc.compiler as C
    from mlc.frontend.onnx_import import import_onnx
    from mlc.ir import arith
    from mlc.ir.interp import run_function
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import Model
    model = onnx.load_from_string(sys.stdin.buffer.read())
    module, consts = import_onnx(model, None)
    built = C.build_module(C.with_memory_constants(module, consts), consts)
    rng = np.random.default_rng(1)
    fn = module.get("main")
    inputs = {}
    for p in fn.params:
        shape = tuple(3 if arith.as_int(d) is None else arith.as_int(d) for d in p.type.shape)  # symbolic: 3
        dt = np.dtype({"f32": "float32", "i64": "int64", "i32": "int32"}[p.type.dtype])
        inputs[p.name] = (rng.standard_normal(shape) if dt.kind == "f" else rng.integers(0, 3, shape)).astype(dt)
    want = run_function(module, inputs, consts)
    for side in ("after", "before"):
        print(side, flush=True)
        got = Model(loads(built.result.data), "guarded", guard=side)(**inputs)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=2e-4, atol=2e-4)
""")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_kernels_stay_in_bounds(name: str) -> None:
    model = MODELS[name]
    r = subprocess.run([sys.executable, "-c", _CHILD],
                       input=model.SerializeToString(), capture_output=True, timeout=300)
    side = (r.stdout.decode().split() or ["(before running)"])[-1]
    signal = f" (signal {-r.returncode})" if r.returncode < 0 else ""
    assert r.returncode == 0, (f"{name} with guard pages {side} its buffers: exit {r.returncode}{signal}\n"
                               f"{r.stderr.decode()[-2000:]}")


@pytest.mark.parametrize("side,index", [("after", "a.size"), ("before", "-1")])
def test_guard_page_faults_on_the_first_byte_outside(side: str, index: str) -> None:
    """The harness itself: one element past either end is a fault, the last element inside is not."""
    code = textwrap.dedent(f"""
        import ctypes, numpy as np
        from mlc.runtime.guard import guarded_copy
        a = guarded_copy(np.arange(1000, dtype=np.float32), "{side}")
        p = ctypes.cast(a.ctypes.data, ctypes.POINTER(ctypes.c_float))
        assert p[0] == 0 and p[a.size - 1] == 999
        print("inside ok", flush=True)
        p[{index}]
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert b"inside ok" in r.stdout
    assert r.returncode < 0, r.stderr.decode()


def test_guarded_copy_keeps_values_shape_and_dtype() -> None:
    a = RNG.standard_normal((3, 0, 4)).astype(np.float16)
    b = RNG.integers(-5, 5, (7, 3)).astype(np.int64)
    for x in (a, b, b.T):
        for side in ("after", "before"):
            g = guarded_copy(x, side)
            assert g.shape == x.shape and g.dtype == x.dtype and g.flags.c_contiguous
            np.testing.assert_array_equal(g, x)
