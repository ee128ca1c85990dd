"""One compiler rule on and off, on ONNX's `light` models, with onnxruntime in the same blocks.

    python benchmarks/bench_light_ab.py --rule {conv-prologue,lane-partition,plane-chunk,pool-prologue,
                                                select-split}
                                        [--models densenet121 ...] [--runs 7]

Both builds come from this tree; "old" switches one rule of issue 17 back off for its build only:
- `conv-prologue`: fuse puts elementwise chains into convolutions (and max pools) again (no
  `OpDef.reuses_inputs`);
- `lane-partition`: the loop partition splits symbolic bounds only, not constant lane-mask tails;
- `plane-chunk`: 1x1 convolutions on small planes keep the row schedule (no `plane_chunk`);
- `pool-prologue`: fuse puts elementwise chains into max pools again (inception_v1's LRN);
- `select-split`: the loop partition no longer splits a loop at a select's threshold (a concat read
  by a convolution through `select(c < 256, A, B)`, squeezenet's fire modules).
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
from mlc.ir import loop_partition
from mlc.ir.expr import free_vars
from mlc.ir.graph import OpCall
from mlc.passes import fuse
from mlc.passes.schedule import conv_tiling
from mlc.runtime.bench import block_medians

import mlc


@contextmanager
def conv_prologue() -> Iterator[None]:
    saved = fuse.Fuser.__dict__["reuses_inputs"]
    fuse.Fuser.reuses_inputs = staticmethod(lambda b: False)  # type: ignore[method-assign]
    try:
        yield
    finally:
        fuse.Fuser.reuses_inputs = saved  # type: ignore[method-assign]


@contextmanager
def symbolic_partition_only() -> Iterator[None]:
    saved = loop_partition.prefix_end

    def old(lhs, rhs, var, ranges, inner, lane_mask=False):  # type: ignore[no-untyped-def]
        return None if not free_vars(rhs) else saved(lhs, rhs, var, ranges, inner, lane_mask)

    loop_partition.prefix_end = old  # type: ignore[assignment]
    try:
        yield
    finally:
        loop_partition.prefix_end = saved  # type: ignore[assignment]


@contextmanager
def row_schedule_only() -> Iterator[None]:
    saved = conv_tiling.plane_chunk
    conv_tiling.plane_chunk = lambda *a: None  # type: ignore[assignment]
    try:
        yield
    finally:
        conv_tiling.plane_chunk = saved


@contextmanager
def pool_prologue() -> Iterator[None]:
    saved = fuse.Fuser.__dict__["reuses_inputs"]

    def old(b):  # type: ignore[no-untyped-def]
        return saved.__func__(b) and not (isinstance(b.node, OpCall) and b.node.op == "max_pool2d")

    fuse.Fuser.reuses_inputs = staticmethod(old)  # type: ignore[method-assign]
    try:
        yield
    finally:
        fuse.Fuser.reuses_inputs = saved  # type: ignore[method-assign]


@contextmanager
def no_select_split() -> Iterator[None]:
    saved = loop_partition.split_selects
    loop_partition.split_selects = lambda s: None  # type: ignore[assignment]
    try:
        yield
    finally:
        loop_partition.split_selects = saved  # type: ignore[assignment]


RULES: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "conv-prologue": conv_prologue, "lane-partition": symbolic_partition_only, "plane-chunk": row_schedule_only,
    "pool-prologue": pool_prologue, "select-split": no_select_split}


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
