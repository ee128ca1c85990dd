"""Loop partition (ir/loop_partition.py, the last step of lower_tir_func): golden before/after text, loops it
must leave alone, and default-scheduled kernels with a register tile over a symbolic row axis,
partitioned and compiled, against the TIR interpreter on the unscheduled program at N = 1, 7, 8, 9,
33 with every buffer flush against a PROT_NONE page (before and after)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mlc.codegen.cpu import host_target
from mlc.codegen.cuda import lower_to_cuda
from mlc.codegen.llvm import lower_to_llvm
from mlc.ir import PrimFunc, arith
from mlc.ir.expr import Var
from mlc.ir.loop_partition import partition_loops
from mlc.ir.module import Module
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.tir import For, IfStmt
from mlc.ir.tir_builder import build, compute, maximum, placeholder, reduce_axis, rmax, rsum
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.tir_visit import walk
from mlc.ir.verify import verify_module
from mlc.passes.registry import PassContext, get_pass
from mlc.passes.schedule.gpu_rules import default_gpu_schedule
from mlc.passes.schedule.rules import TargetInfo, default_schedule
from mlc.runtime.cpu import compile_module
from test_schedule_rules_train import check
from test_tir_interp import softmax_func

BEFORE = """mlc.module v1

prim @rows(%a: buffer<N x 8 x f32>, %out: buffer<N x 8 x f32>) outputs 1 {
  for o in 0..floordiv(N + 3, 4) parallel {
    for r in 0..4 unrolled {
      for j in 0..8 vectorized {
        if 4 * o + r < N {
          %out[4 * o + r, j] = %a[4 * o + r, j] * 2.0
        }
      }
    }
    for r1 in 0..min(4 * o + 3, N - 1) - 4 * o + 1 {
      %out[4 * o + r1, 0] = %out[4 * o + r1, 0] + 1.0
    }
  }
}
"""

# the main part: the guard and the clip of the tile's extent are gone; the remainder keeps both
AFTER = """mlc.module v1

prim @rows(%a: buffer<N x 8 x f32>, %out: buffer<N x 8 x f32>) outputs 1 {
  for o in 0..floordiv(N, 4) parallel {
    for r in 0..4 unrolled {
      for j in 0..8 vectorized {
        %out[4 * o + r, j] = %a[4 * o + r, j] * 2.0
      }
    }
    for r1 in 0..4 {
      %out[4 * o + r1, 0] = %out[4 * o + r1, 0] + 1.0
    }
  }
  for o in floordiv(N, 4)..+floordiv(N + 3, 4) - floordiv(N, 4) parallel {
    for r in 0..4 unrolled {
      for j in 0..8 vectorized {
        if 4 * o + r < N {
          %out[4 * o + r, j] = %a[4 * o + r, j] * 2.0
        }
      }
    }
    for r1 in 0..min(4 * o + 3, N - 1) - 4 * o + 1 {
      %out[4 * o + r1, 0] = %out[4 * o + r1, 0] + 1.0
    }
  }
}
"""

CPU = TargetInfo(lanes=8, cores=2)
SIZES = (1, 7, 8, 9, 33)


def one(text: str) -> PrimFunc:
    return parse_module(text, "t.ir").prim_functions()[0]


def test_golden_text_round_trip_and_interpreter() -> None:
    m = parse_module(BEFORE, "t.ir")
    f = m.prim_functions()[0]
    out = m.with_function(partition_loops(f))
    text = print_module(out)
    assert text == AFTER
    assert print_module(parse_module(text, "after.ir")) == AFTER
    verify_module(out)
    for n in (0, *SIZES):
        check(f, out.prim_functions()[0], N=n)
    # partitioning a partitioned function changes nothing more
    assert print_module(out.with_function(partition_loops(out.prim_functions()[0]))) == AFTER


@pytest.mark.parametrize("cond", [
    "o * o < N",                     # not affine in the loop
    "floormod(o, 3) < 2",            # not monotone
    "4 * o + r < N && r < 3 * o",    # a bound that depends on the loop itself stays (the other goes)
])
def test_tests_that_hold_on_no_prefix_stay(cond: str) -> None:
    src = f"""mlc.module v1

prim @g(%a: buffer<N x 8 x f32>) outputs 1 {{
  for o in 0..floordiv(N + 3, 4) {{
    for r in 0..4 {{
      if {cond} {{
        %a[floormod(4 * o + r, N), 0] = 1.0
      }}
    }}
  }}
}}
"""
    f = one(src)
    new = partition_loops(f)
    ifs = [s for _, s in walk(new.body) if isinstance(s, IfStmt)]
    if "&&" in cond:
        # the main part keeps only `r < 3 * o`; the remainder keeps both
        assert print_module(Module((new,))).count("r < 3 * o") == 2
        assert len(ifs) == 2
    else:
        assert new == f
    for n in (1, 7, 9):
        check(f, new, N=n)


def test_guard_with_else_and_loops_with_start_are_left_alone() -> None:
    # (unrolled and vectorized loops are not split either)
    src = """mlc.module v1

prim @h(%a: buffer<N x f32>) outputs 1 {
  for o in 0..floordiv(N + 3, 4) {
    for r in 0..4 {
      if 4 * o + r < N {
        %a[4 * o + r] = 1.0
      } else {
        %a[0] = 2.0
      }
    }
  }
  for p in 1..+floordiv(N + 3, 4) {
    for r in 0..4 unrolled {
      if 4 * p + r < N {
        %a[4 * p + r] = 3.0
      }
    }
  }
}
"""
    f = one(src)
    assert partition_loops(f) == f
    # a GPU kernel (thread-bound loops) keeps its per-thread guards
    gpu = BEFORE.replace("for o in 0..floordiv(N + 3, 4) parallel {",
                         'for t in 0..32 thread "threadIdx.x" {\n  for o in 0..floordiv(N + 3, 4) {') \
        .replace("\n}\n", "\n}\n}\n", 1)
    g = one(gpu)
    assert any(isinstance(x, For) and x.kind == "thread" for _, x in walk(g.body))
    assert partition_loops(g) == g


def dense_relu(rows: tuple[object, ...], k: int, m: int, transposed: bool = False) -> PrimFunc:
    """relu(A[*rows, k] @ W + b): W [k, m], or [m, k] (the data gradient's operand order)."""
    A = placeholder("A", (*rows, k))
    W = placeholder("W", (m, k) if transposed else (k, m))
    bias = placeholder("bias", (m,))
    r = reduce_axis(k, "k")
    C = compute("C", (*rows, m), lambda *ix: rsum(A[(*ix[:-1], r)] * (W[ix[-1], r] if transposed else W[r, ix[-1]]),
                                                  r))
    Y = compute("Y", (*rows, m), lambda *ix: maximum(C[ix] + bias[ix[-1]], 0.0))
    return build(f"dense_{len(rows)}_{k}_{m}_{int(transposed)}", [A, W, bias], [Y])


N, T = Var("N", "i64"), Var("T", "i64")
KERNELS = [((N,), 64, 128, False), ((N,), 128, 64, False), ((N,), 64, 8, False), ((N,), 32, 32, True),
           ((T, N), 16, 48, False)]


def scheduled_and_lowered(spec: tuple) -> tuple[PrimFunc, PrimFunc]:  # type: ignore[type-arg]
    f = dense_relu(*spec)
    low = lower_tir_func(default_schedule(f, CPU).func)
    return f, low


def test_scheduled_tiles_over_symbolic_rows_have_a_guard_free_main_part() -> None:
    for spec in KERNELS:
        _, low = scheduled_and_lowered(spec)
        red = [x for _, x in walk(low.body) if isinstance(x, For) and x.var.name == "k_0"]
        assert len(red) == 2, spec  # main part and remainder
        assert not any(isinstance(y, IfStmt) for _, y in walk(red[0].body)), spec
        assert any(isinstance(y, IfStmt) for _, y in walk(red[1].body)), spec
        # the row loop of the register tile is unrolled 4 rows deep
        assert any(isinstance(x, For) and x.kind == "unrolled" and arith.as_int(x.extent) == 4
                   for _, x in walk(red[0].body)), spec


_CHILD = textwrap.dedent("""
    import sys, numpy as np
    from mlc.runtime.cpu import link_object
    from mlc.runtime.guard import guarded_copy
    lib = link_object(open(sys.argv[1], 'rb').read())
    data = np.load(sys.argv[2])
    out = {}
    for key in sorted({k.rsplit('.', 1)[0] for k in data.files}):
        name, side = key.split('#')[0], key.rsplit('@', 1)[1]
        args = [guarded_copy(data[f'{key}.{i}'], side) for i in range(4)]
        lib.kernel(name)(args)
        out[key] = np.array(args[-1])
    np.savez(sys.argv[3], **out)
""")


def test_compiled_partitioned_kernels_match_the_interpreter_under_guard_pages(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pairs = [scheduled_and_lowered(spec) for spec in KERNELS]
    lib = compile_module([low for _, low in pairs])
    (tmp_path / "k.o").write_bytes(lib.object_code)
    arrays, want = {}, {}
    for f, _ in pairs:
        for n in SIZES:
            dims = {"N": n, "T": 3}
            rng = np.random.default_rng(n)
            args = [rng.standard_normal(tuple(arith.evaluate(d, dims) for d in b.shape)).astype(np.float32)
                    for b in f.params]
            ref = [a.copy() for a in args]
            run_prim(f, ref, dims)
            for side in ("after", "before"):
                key = f"{f.name}#{n}@{side}"
                for i, a in enumerate(args):
                    arrays[f"{key}.{i}"] = a
                want[key] = ref[-1]
    np.savez(tmp_path / "in.npz", **arrays)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "k.o"), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died (a fault is an out-of-bounds access): {proc.returncode} {proc.stderr}"
    got = np.load(tmp_path / "out.npz")
    assert sorted(got.files) == sorted(want)
    for key, ref in want.items():
        np.testing.assert_allclose(got[key], ref, rtol=1e-4, atol=1e-4, err_msg=key)


def test_build_and_tuner_lower_block_form_the_same_way() -> None:
    """`mlc build` compiles the lower-tir pass's output; the tuner's workers (tune/worker.py) and the
    `mlc schedule`/`tune` benches hand the scheduled block form to compile_module. Both must give
    the same kernel (#14: the tuner used to time tiles with the guards the build partitioned away)."""
    blocks = [default_schedule(dense_relu(*spec), CPU).func for spec in KERNELS[:2]]
    info = get_pass("lower-tir")
    assert info is not None
    out = info.fn(Module(tuple(blocks)), PassContext(sink=None))
    for low in out.prim_functions():  # the partition is in play in both (else equality proves little)
        red = [x for _, x in walk(low.body) if isinstance(x, For) and x.var.name == "k_0"]
        assert len(red) == 2 and not any(isinstance(y, IfStmt) for _, y in walk(red[0].body)), low.name
    assert print_module(Module(tuple(lower_tir_func(f) for f in blocks))) == print_module(out)
    assert lower_to_llvm(blocks, host_target()) == lower_to_llvm(out.prim_functions(), host_target())
    assert compile_module(blocks).llvm_ir() == compile_module(out.prim_functions()).llvm_ir()
    # a GPU kernel: the codegen handed block form and the build's lower-tir output agree too
    gpu = default_gpu_schedule(softmax_func(4, 300))
    gout = info.fn(Module((gpu,)), PassContext(sink=None))
    assert lower_to_cuda([gpu]).source == lower_to_cuda(gout.prim_functions()).source


CONST_BEFORE = """mlc.module v1

prim @tail(%a: buffer<100 x f32>, %out: buffer<100 x f32>) outputs 1 {
  for q in 0..13 {
    for r in 0..8 vectorized {
      if 8 * q + r < 100 {
        %out[8 * q + r] = %a[8 * q + r] + 4.0
      }
    }
  }
}
"""

CONST_AFTER = """mlc.module v1

prim @tail(%a: buffer<100 x f32>, %out: buffer<100 x f32>) outputs 1 {
  for q in 0..12 {
    for r in 0..8 vectorized {
      %out[8 * q + r] = %a[8 * q + r] + 4.0
    }
  }
  for q in 12..+1 {
    for r in 0..8 vectorized {
      if 8 * q + r < 100 {
        %out[8 * q + r] = %a[8 * q + r] + 4.0
      }
    }
  }
}
"""


def test_constant_tail_of_a_vector_loop_is_its_own_part() -> None:
    # the guarded vector tile of a constant extent (100 = 12 x 8 + 4) would be a masked load and a
    # masked store on every iteration (vmaskmovps stores are microcoded on AMD Zen: SqueezeNet's
    # 111 -> 55 max pool took 3 ms instead of 0.4); only the last tile keeps the lane mask
    f = one(CONST_BEFORE)
    new = partition_loops(f)
    assert print_module(Module((new,))) == CONST_AFTER
    check(f, new)


def test_ceil_mode_pool_compiled_matches_the_interpreter() -> None:
    # 55 output columns in 8-lane tiles: the 7th tile is partial, its stride-2 window loads guarded
    # (tests/test_guard_pages.py runs the pool lowerings flush against PROT_NONE pages)
    x = placeholder("x", (1, 3, 111, 111))
    kh, kw = reduce_axis(3, "kh"), reduce_axis(3, "kw")
    f = build("pool", [x], [compute("y", (1, 3, 55, 55), lambda n, c, i, j: rmax(
        x[n, c, 2 * i + kh, 2 * j + kw], (kh, kw)))])
    s = default_schedule(f, CPU)
    low = lower_tir_func(s.func)
    assert any(isinstance(st, IfStmt) for _, st in walk(low.body))  # the tail keeps its guard
    lib = compile_module([low])
    xin = np.random.default_rng(3).standard_normal((1, 3, 111, 111)).astype(np.float32)
    want = np.zeros((1, 3, 55, 55), np.float32)
    run_prim(f, [xin, want], {})
    got = np.zeros_like(want)
    lib.kernel("pool")([xin, got])
    np.testing.assert_array_equal(got, want)


SELECT_BEFORE = """mlc.module v1

prim @cat(%a: buffer<M x 4 x f32>, %b: buffer<3 x 4 x f32>, %c: buffer<5 x 4 x f32>, %out: buffer<4 x f32>) outputs 1 {
  for j in 0..4 vectorized {
    %out[j] = 0.0
  }
  for k in 0..M + 8 {
    let v_k = k {
      for j in 0..4 vectorized {
        %out[j] = %out[j] + select(v_k < M, %a[v_k, j], select(v_k < M + 3, %b[v_k - M, j], %c[v_k - M - 3, j]))
      }
    }
  }
}
"""

# a concat of three inputs read by a reduction: each part of k reads one input, with no select
SELECT_AFTER = """mlc.module v1

prim @cat(%a: buffer<M x 4 x f32>, %b: buffer<3 x 4 x f32>, %c: buffer<5 x 4 x f32>, %out: buffer<4 x f32>) outputs 1 {
  for j in 0..4 vectorized {
    %out[j] = 0.0
  }
  for k in 0..M {
    let v_k = k {
      for j in 0..4 vectorized {
        %out[j] = %out[j] + %a[v_k, j]
      }
    }
  }
  for k in M..+3 {
    let v_k = k {
      for j in 0..4 vectorized {
        %out[j] = %out[j] + %b[v_k - M, j]
      }
    }
  }
  for k in M + 3..+5 {
    let v_k = k {
      for j in 0..4 vectorized {
        %out[j] = %out[j] + %c[v_k - M - 3, j]
      }
    }
  }
}
"""


def test_select_on_the_loop_var_splits_the_loop_into_one_part_per_arm() -> None:
    m = parse_module(SELECT_BEFORE, "t.ir")
    f = m.prim_functions()[0]
    out = m.with_function(partition_loops(f))
    assert print_module(out) == SELECT_AFTER
    verify_module(out)
    for n in (1, 2, 6):  # (the interpreter cannot run the unsplit select at M = 0: a masked load of an empty buffer)
        check(f, out.prim_functions()[0], M=n)


@pytest.mark.parametrize("cond", [
    "k + j < 4",        # depends on an inner loop: a per-lane select stays
    "k * k < 4",        # not affine
    "k < 4 && k > 1",   # a range: left alone
    "%a[k, 0] < 0.0",   # reads memory
])
def test_selects_that_do_not_split_a_prefix_stay(cond: str) -> None:
    src = f"""mlc.module v1

prim @g(%a: buffer<8 x 4 x f32>, %out: buffer<4 x f32>) outputs 1 {{
  for k in 0..8 {{
    for j in 0..4 {{
      %out[j] = %out[j] + select({cond}, %a[k, j], 0.0)
    }}
  }}
}}
"""
    f = one(src)
    assert partition_loops(f) == f


def test_concat_into_a_convolution_compiled_matches_numpy() -> None:
    # squeezenet's fire modules: a 1x1 convolution reads the concat of two branches through a select
    # on its input channel; the built kernel's channel loop is split, and agrees with numpy
    from onnx import TensorProto, helper, numpy_helper

    import mlc

    rng = np.random.default_rng(5)
    w = rng.standard_normal((24, 20, 1, 1)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("Conv", ["c", "w"], ["y"])],
        "cat_conv", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 12, 9, 9]),
                     helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 9, 9])], [numpy_helper.from_array(w, "w")])
    model = mlc.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    (conv,) = [f for f in model.module.prim_functions() if "conv" in f.name]
    assert "select" not in print_module(Module((conv,)))
    a = rng.standard_normal((1, 12, 9, 9)).astype(np.float32)
    b = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    (got,) = model(a=a, b=b).values()
    want = np.einsum("kc,nchw->nkhw", w[:, :, 0, 0], np.concatenate([a, b], axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
