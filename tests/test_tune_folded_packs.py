"""The tuner times a candidate as the build runs it: without the packing nest of a constant operand,
which alter-layout folds into the constant at build time (tune/worker.py `timed_program`).

Checked: which parameters count as constant (every call passes a top-level graph constant); the
attribute that carries them leaves the workload key unchanged; the timed program has no pack of a
constant operand but keeps the pack of a computed one; and it computes, in the interpreter, what the
packing program computes on the packed constant."""

from __future__ import annotations

import numpy as np
import onnx
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import arith
from mlc.ir.module import Module
from mlc.ir.tir_interp import run_prim
from mlc.passes.alter_layout import constant_params, pack_nests, run_pack
from mlc.passes.schedule.rules import default_schedule
from mlc.passes.tune.database import workload_key
from mlc.tune.tuning import CONSTANT_PARAMS, with_constant_params
from mlc.tune.worker import run_job, timed_program
from onnx import TensorProto, helper, numpy_helper

from mlc.compiler import build_module, with_memory_constants


def _lowered(weight_input: bool = False) -> Module:
    """Conv 1x1 (32 -> 64) + relu, the weight a constant (or a graph input), lowered, not scheduled."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32, 1, 1)).astype(np.float32)
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 14, 14])]
    if weight_input:
        ins.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 32, 1, 1]))
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], "g",
                          ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 14, 14])],
                          [] if weight_input else [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    module, consts = import_onnx(onnx.shape_inference.infer_shapes(proto))
    seen: dict[str, Module] = {}
    build_module(with_memory_constants(module, consts), consts, "cpu",
                 print_after=lambda name, mod: seen.__setitem__(name, mod))
    return seen["fuse"]


def test_constant_params_and_the_key() -> None:
    mod = _lowered()
    f = mod.prim_functions()[0]
    fixed = constant_params(mod)
    assert fixed[f.name] == {1}  # the weight; the activation is the graph's input
    assert constant_params(_lowered(weight_input=True))[f.name] == set()
    marked = with_constant_params(f, fixed[f.name])
    assert dict(marked.attrs)[CONSTANT_PARAMS] == (1,)
    assert workload_key(marked) == workload_key(f)  # records of the unmarked program still apply
    assert with_constant_params(f, set()) is f


def test_timed_program_folds_only_constant_packs() -> None:
    f = _lowered().prim_functions()[0]
    sch = default_schedule(f, "cpu")
    packs = pack_nests(sch.func)
    assert [p.param for p in packs] == [1], "the default conv schedule packs the weight"
    folded = timed_program(with_constant_params(f, {1}), sch.func)
    assert pack_nests(folded) == []
    assert [arith.as_int(d) for d in folded.params[1].shape] == [arith.as_int(d) for d in packs[0].dst.shape]
    assert timed_program(f, sch.func) is sch.func  # no constant operand: timed with its pack
    # the folded program on the packed weight computes what the packing program computes
    rng = np.random.default_rng(1)
    args = [rng.standard_normal([arith.as_int(d) for d in p.shape]).astype(np.float32) for p in sch.func.params]
    want = [a.copy() for a in args]
    run_prim(sch.func, want)
    got = [a.copy() for a in args]
    got[1] = run_pack(sch.func, packs[0], args[1])
    run_prim(folded, got)
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-5, atol=1e-5)


def test_worker_times_the_folded_program() -> None:
    from mlc.ir.printer import print_module

    f = _lowered().prim_functions()[0]
    trace = default_schedule(f, "cpu").trace
    for marked in (with_constant_params(f, {1}), f):
        job = {"module": print_module(Module((marked,))), "trace": trace.to_json(), "dims": {}, "repeat": 2,
               "number": 1}
        out = run_job(job)
        assert "times" in out and len(out["times"]) == 2 and all(t > 0 for t in out["times"]), out
