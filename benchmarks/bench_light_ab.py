"""One compiler rule on and off, on ONNX's `light` models, with onnxruntime in the same blocks.

    python benchmarks/bench_light_ab.py --rule {activation-layout,avx512-tile,channel-pad,column-tile,
                                                conv-prologue,lane-partition,plane-chunk,pool-prologue,
                                                select-split,short-tile,vector-pow}
                                        [--models densenet121 ...] [--runs 7]

Both builds come from this tree; "old" switches one rule of issue 17 back off for its build only:
- `activation-layout`: every activation between kernels stays NCHW (no `activation-layout` pass:
  channel-vector write-backs and residual reads per lane again);
- `avx512-tile`: with 16 lanes (AVX-512) the channel-vector tile may again take 4 vectors over 3+
  columns or more accumulators than the registers hold with two steps' weights (no
  `conv_tiling.SPILL_ALL_WIDTHS`: 4 x 7 on ResNet-50's 3x3s and 1x1s);
- `channel-pad`: output channel counts of 64+ that are no multiple of the lanes take half-width
  (or narrower) channel vectors again, not full vectors over a weight padded with zero channels (no
  `conv_tiling.PAD_CHANNELS`: squeezenet's 512->1000 1x1);
- `column-tile`: grouped 1x1 convolutions whose channels per group take no channel vector, and
  depthwise ones (stride 1, 2) without channel vectors, go back to the generic tiling (no
  `conv_tiling.column_plan`: vectors over the output columns; shufflenet's 34 and 68 channels per
  group and its 3x3 depthwise convs);
- `conv-prologue`: fuse puts elementwise chains into convolutions (and max pools) again (no
  `OpDef.reuses_inputs`);
- `lane-partition`: the loop partition splits symbolic bounds only, not constant lane-mask tails;
- `plane-chunk`: 1x1 convolutions on small planes keep the row schedule (no `plane_chunk`);
- `pool-prologue`: fuse puts elementwise chains into max pools again (inception_v1's LRN);
- `select-split`: the loop partition no longer splits a loop at a select's threshold (a concat read
  by a convolution through `select(c < 256, A, B)`, squeezenet's fire modules);
- `short-tile`: 3x3 convolutions with short reductions take the cost model's tile again (no
  `conv_tiling.short_reduction`: squeezenet's stem and fire modules);
- `vector-pow`: pow calls llvm.pow (one powf per lane) whatever the exponent (inception_v1's LRN).
Weights are random as `bench_light.py --random-weights`; every output is checked against onnxruntime.
Prints new, old and ort ms (alternating blocks, `runtime.bench.block_medians`) and the ratios.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
import onnx
import onnxruntime as ort
from bench_light import feeds_for, light_path, random_weights
from mlc.codegen.llvm_expr import ExprEmitter
from mlc.ir import loop_partition
from mlc.ir.expr import free_vars
from mlc.ir.graph import OpCall
from mlc.passes import fuse
from mlc.passes.activation_layout import ActivationLayout
from mlc.passes.schedule import conv_tiling
from mlc.runtime.bench import block_medians

import mlc


@contextmanager
def patched(owner: object, name: str, value: object) -> Iterator[None]:
    """`owner.name` set to `value` for one build (the "old" side of a rule)."""
    saved = vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _symbolic_bounds_only(lhs, rhs, var, ranges, inner, lane_mask=False):  # type: ignore[no-untyped-def]
    return None if not free_vars(rhs) else _PREFIX_END(lhs, rhs, var, ranges, inner, lane_mask)


def _pools_take_prologues(b):  # type: ignore[no-untyped-def]
    return _REUSES(b) and not (isinstance(b.node, OpCall) and b.node.op == "max_pool2d")


_PREFIX_END = loop_partition.prefix_end
_REUSES = fuse.Fuser.reuses_inputs

RULES: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "activation-layout": lambda: patched(ActivationLayout, "apply", lambda self, m, ctx: m),
    "avx512-tile": lambda: patched(conv_tiling, "SPILL_ALL_WIDTHS", ()),
    "channel-pad": lambda: patched(conv_tiling, "PAD_CHANNELS", 0),
    "column-tile": lambda: patched(conv_tiling, "column_plan", lambda *a: None),
    "conv-prologue": lambda: patched(fuse.Fuser, "reuses_inputs", staticmethod(lambda b: False)),
    "lane-partition": lambda: patched(loop_partition, "prefix_end", _symbolic_bounds_only),
    "plane-chunk": lambda: patched(conv_tiling, "plane_chunk", lambda *a: None),
    "pool-prologue": lambda: patched(fuse.Fuser, "reuses_inputs", staticmethod(_pools_take_prologues)),
    "select-split": lambda: patched(loop_partition, "split_selects", lambda s, ends: None),
    "short-tile": lambda: patched(conv_tiling, "short_reduction", lambda *a: False),
    "vector-pow": lambda: patched(ExprEmitter, "pow", lambda self, x, e, t: self.b.call(self.intrinsic("pow", t, 2), [x, e])),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rule", choices=sorted(RULES), required=True)
    ap.add_argument("--models", nargs="*", default=["densenet121", "inception_v2", "squeezenet"])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    print(f"{'model':14s} {'new ms':>9s} {'old ms':>9s} {'ort ms':>9s} {'old/new':>8s} {'ort/new':>8s} "
          f"{'ort/old':>8s}  agree")
    for name in args.models:
        proto = random_weights(onnx.load(light_path(name)))
        feeds = feeds_for(proto)
        new = mlc.compile(proto)
        with RULES[args.rule]():
            old = mlc.compile(proto)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ours = dict(zip(new.input_names, feeds.values()))
        ref = sess.run(None, feeds)
        agree = all(np.allclose(g, r, rtol=1e-3, atol=1e-4) for m in (new, old)
                    for g, r in zip(m(**ours).values(), ref))
        t_new, t_old, t_ort = block_medians([lambda m=m, f=ours: m(**f) for m in (new, old)]
                                            + [lambda s=sess, f=feeds: s.run(None, f)], runs=args.runs)
        print(f"{name:14s} {t_new * 1e3:9.2f} {t_old * 1e3:9.2f} {t_ort * 1e3:9.2f} {t_old / t_new:8.2f} "
              f"{t_ort / t_new:8.2f} {t_ort / t_old:8.2f}  {'yes' if agree else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
