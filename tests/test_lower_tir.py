"""lower-tir: block form -> loop-level form. Golden text, exact text round trip of the new statements,
the reference interpreter as the oracle of the lowering (block form vs lowered form), and codegen
lowering block form it is handed exactly as the pass does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cuda_helpers import lowered_zoo, matmul
from mlc.codegen.cpu import host_target
from mlc.codegen.cuda import lower_to_cuda
from mlc.codegen.llvm import lower_to_llvm
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.module import Module
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_function, print_module
from mlc.ir.tir import BlockStmt, GemmCall, GemmTile, PrimFunc, ThreadAllReduce
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import is_lowered, lower_tir_func
from mlc.ir.tir_visit import nodes
from mlc.ir.verify import verify_module
from mlc.passes.registry import PassContext, get_pass
from mlc.passes.schedule import Schedule
from mlc.passes.schedule.gpu_rules import default_gpu_schedule, gemm_intrin_with_config
from mlc.passes.schedule.rules import default_schedule
from test_tir_interp import matmul_func, softmax_func

ROOT = Path(__file__).resolve().parents[1]

BLOCK_FORM = """mlc.module v1

prim @rowsum(%x: buffer<n x 8 x f32>, %y: buffer<n x f32>) outputs 1 {
  block "root"() {
    alloc %t: buffer<n x f32>
    for i in 0..n {
      for k in 0..8 {
        block "sum"(S vi = i in 0..n, R vk = k in 0..8) {
          init {
            %t[vi] = 0.0
          }
          %t[vi] = %t[vi] + %x[vi, vk]
        }
      }
    }
    for i1 in 0..n {
      block "copy"(S vi = i1 in 0..n) {
        %y[vi] = %t[vi] * 2.0
      }
    }
  }
}
"""

LOWERED = """mlc.module v1

prim @rowsum(%x: buffer<n x 8 x f32>, %y: buffer<n x f32>) outputs 1 {
  view %x_flat: buffer<8 * n x f32> = %x
  allocate %t: buffer<n x f32> {
    for i in 0..n {
      for k in 0..8 {
        let vi = i {
          let vk = k {
            if vk == 0 {
              %t[vi] = 0.0
            }
            attr "reduction" {
              %t[vi] = %t[vi] + %x_flat[vi * 8 + vk]
            }
          }
        }
      }
    }
    for i1 in 0..n {
      let vi = i1 {
        %y[vi] = %t[vi] * 2.0
      }
    }
  }
}
"""

NEW_STATEMENTS = """mlc.module v1

prim @k(%A: buffer<64 x 32 x f32>, %B: buffer<32 x 64 x f32>, %C: buffer<64 x 64 x f32>, %s: buffer<64 x f32>) outputs 2 {
  gemm %C = %A * %B tile(128, 128, 8, 8, 8, 1)
  gemm %C = %A * %B accumulate batched
  for i in 0..64 thread "blockIdx.x" {
    allreduce max %acc: buffer<1 x f32, local> {
      for t in 0..32 thread "threadIdx.x" {
        allocate %w: buffer<2 x f32, local> {
          attr "reduction" {
            %acc[0] = max(%acc[0], %A[i, t])
          }
        }
      }
    } then {
      %s[i] = max(-inf, %acc[0])
    }
  }
}
"""


def _lower_text(text: str) -> str:
    info = get_pass("lower-tir")
    assert info is not None
    return print_module(info.fn(parse_module(text), PassContext()))


def test_lower_tir_golden() -> None:
    """Iterators become lets, init an `if` over the reduce iterators, the body of a reduction an
    `attr "reduction"` region, the root block's alloc an `allocate`, the 2-D parameter accessed
    through its flat view."""
    assert _lower_text(BLOCK_FORM) == LOWERED
    assert _lower_text(LOWERED) == LOWERED  # the loop-level form is a fixed point


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_schedule_refuses_loop_level_input(target: str) -> None:
    """Schedules act on blocks: a module that went through lower-tir is refused (it used to be
    marked `schedule = "default"` with nothing scheduled, so CUDA then ran the nests on one thread)."""
    info = get_pass("schedule")
    assert info is not None
    lowered = parse_module(_lower_text(BLOCK_FORM))
    with pytest.raises(MlcError, match="loop-level IR .* before lower-tir"):
        info.fn(lowered, PassContext(target=target), **info.validate_options({}))
    done = info.fn(parse_module(BLOCK_FORM), PassContext(target=target), **info.validate_options({}))
    assert all(dict(f.attrs).get("schedule") == "default" for f in done.prim_functions())


def test_new_statements_round_trip_exactly() -> None:
    m = parse_module(NEW_STATEMENTS)
    verify_module(m)
    assert print_module(m) == NEW_STATEMENTS
    f = m.functions[0]
    assert isinstance(f, PrimFunc)
    gemms = [s for s in nodes(f.body) if isinstance(s, GemmCall)]
    assert gemms[0].tile == GemmTile(128, 128, 8, 8, 8, 1) and not gemms[0].accumulate
    assert gemms[1].tile is None and gemms[1].accumulate and gemms[1].batched
    assert parse_module(print_module(m)) == m


@pytest.mark.parametrize("good,bad,msg", [
    ('attr "reduction"', 'attr "fast"', "unknown attribute key"),
    ('t in 0..32 thread "threadIdx.x"', "t in 0..32", "threadIdx.x"),
    ("%acc: buffer<1 x f32, local>", "%acc: buffer<2 x f32, local>", "local buffer of 1 element"),
    ("tile(128, 128, 8, 8, 8, 1)", "tile(1, 2, 3)", "6 numbers"),
    ("gemm %C = %A * %B accumulate", "gemm %C = %C * %B accumulate", "three different buffers"),
])
def test_new_statements_are_checked(good: str, bad: str, msg: str) -> None:
    src = NEW_STATEMENTS.replace(good, bad)
    assert src != NEW_STATEMENTS
    with pytest.raises(MlcError, match=msg):
        verify_module(parse_module(src))


def _same(block: PrimFunc, dims: dict[str, int], seed: int = 0) -> PrimFunc:
    """Run `block` and its lowered form on the same random inputs; they must agree."""
    low = lower_tir_func(block)
    assert is_lowered(low)
    verify_module(Module((low,)))
    rng = np.random.default_rng(seed)
    arrays = []
    for b in block.params:
        shape = tuple(arith.evaluate(d, dims) for d in b.shape)
        arrays.append(rng.standard_normal(shape).astype(np.float32) if b.dtype == "f32"
                      else rng.standard_normal(shape).astype(np.float16) if b.dtype == "f16"
                      else rng.integers(0, 2, shape).astype(bool if b.dtype == "bool" else np.int64))
    n_in = len(arrays) - block.num_outputs
    ref = [a.copy() for a in arrays]
    got = [a.copy() for a in arrays]
    run_prim(block, ref)
    run_prim(low, got)
    for r, g in zip(ref[n_in:], got[n_in:]):
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), rtol=2e-3, atol=2e-3, err_msg=block.name)
    return low


def test_interpreter_agrees_on_cpu_schedules() -> None:
    for f in (matmul_func(), softmax_func()):
        _same(default_schedule(f).func, {"n": 9, "m": 11})


def test_interpreter_agrees_on_gpu_schedules_with_cross_thread_reductions() -> None:
    low = _same(default_gpu_schedule(softmax_func(8, 300)), {"n": 8, "m": 300})
    red = [s for s in nodes(low.body) if isinstance(s, ThreadAllReduce)]
    assert red and all(r.loop.thread_tag == "threadIdx.x" and r.acc.scope == "local" for r in red)


@pytest.mark.parametrize("name", ["mlp", "gpt_block"])
def test_interpreter_agrees_on_zoo_programs(name: str) -> None:
    mod, _ = lowered_zoo(name)
    dims = {"N": 3, "S": 2, "B": 2, "T": 5, "V": 6}
    for f in mod.prim_functions():
        _same(default_schedule(f).func, dims)
        _same(default_gpu_schedule(f), dims)


def test_tensorized_gemm_becomes_one_call_with_a_typed_tile() -> None:
    f = default_gpu_schedule(matmul("mm", 256, 128, 64, "f32"))
    low = lower_tir_func(f)
    (call,) = [s for s in nodes(low.body) if isinstance(s, GemmCall)]
    assert call.tile is None and not call.accumulate and (call.a.name, call.b.name, call.c.name) == ("A", "B", "C")
    assert "gemm %C = %A * %B" in print_function(low)
    _same(f, {})
    # a tuned tile travels as a GemmTile, not as a name suffix
    tiled = _retile(f, (64, 64, 8, 4, 4, 1))
    (call,) = [s for s in nodes(lower_tir_func(tiled).body) if isinstance(s, GemmCall)]
    assert call.tile == GemmTile(64, 64, 8, 4, 4, 1)
    assert "mlc_simt_gemm<float, float, 64, 64, 8, 4, 4>" in lower_to_cuda([tiled]).source


def _retile(f: PrimFunc, tile: tuple[int, ...]) -> PrimFunc:
    from dataclasses import replace

    from mlc.ir.tir_visit import StmtMutator

    class _M(StmtMutator):
        def visit_BlockStmt(self, b: BlockStmt) -> BlockStmt:
            ann = dict(b.annotations)
            if str(ann.get("tensor_intrin", "")).startswith("gemm_"):
                ann["tensor_intrin"] = gemm_intrin_with_config(str(ann["tensor_intrin"]), tile)
                b = replace(b, annotations=tuple(sorted(ann.items())))
            out = self.generic_visit(b)
            assert isinstance(out, BlockStmt)
            return out

    return replace(f, body=_M().visit(f.body))


def test_codegen_lowers_block_form_as_the_pass_does() -> None:
    """Decision: codegen handed block form (a test, the tuner) runs ir/tir_lower itself, so both
    entries give the same code; it never schedules."""
    cpu = default_schedule(softmax_func()).func
    assert lower_to_llvm([cpu], host_target()) == lower_to_llvm([lower_tir_func(cpu)], host_target())
    gpu = default_gpu_schedule(softmax_func(4, 300))
    assert lower_to_cuda([gpu]).source == lower_to_cuda([lower_tir_func(gpu)]).source


def test_cross_thread_reduction_must_be_an_update() -> None:
    src = """mlc.module v1

prim @bad(%x: buffer<4 x 32 x f32>, %y: buffer<4 x f32>) outputs 1 {
  for i in 0..4 thread "blockIdx.x" {
    for t in 0..32 thread "threadIdx.x" {
      block "r"(S vi = i in 0..4, R vt = t in 0..32) {
        %y[vi] = %x[vi, vt]
      }
    }
  }
}
"""
    with pytest.raises(MlcError, match="reduces across threads but is not an update"):
        _lower_text(src)


def test_lower_tir_ends_the_build_pipelines() -> None:
    for target in ("cpu", "cuda"):
        text = (ROOT / "configs" / "pipelines" / f"build-{target}.yaml").read_text()
        steps = [ln.strip()[2:] for ln in text.splitlines() if ln.strip().startswith("- ")]
        # alter-layout (CPU) folds the schedule's packing of constants into them before lowering, and
        # activation-layout (CPU) picks the layouts of the tensors between programs
        assert [s for s in steps if s not in ("alter-layout", "activation-layout")][-2:] == ["schedule", "lower-tir"], steps


def test_schedule_after_lowering_is_refused_politely() -> None:
    low = lower_tir_func(matmul_func())
    assert default_gpu_schedule(low) is low  # nothing to schedule: the GPU default leaves it
    with pytest.raises(MlcError):
        Schedule(low).get_block("C")
