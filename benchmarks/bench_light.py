"""ONNX's `light` models (onnx/backend/test/data/light: resnet50, densenet121, inception_v1/v2,
shufflenet, squeezenet, vgg19, bvlc_alexnet, zfnet512) compiled by mlc against onnxruntime, same
inputs, same run.

    python benchmarks/bench_light.py [--models resnet50 squeezenet ...] [--runs 9] [--random-weights]

`--random-weights` (as issue 17 measured): the weights, stored as ConstantOfShape fills, become
initializers; conv and dense weights (2-D and up) seeded normal with the fill value as their scale, the
rest (batch-norm statistics, biases) the fill itself. Shipped, a constant fill is folded into the
convolution as one scalar (no weight operand), which no real model does.
Each model is compiled as shipped (`mlc.compile`, opset 9, no conversion); the input is BackendTest's
dummy input (`arange(n) / n`, 1x3x224x224). Before timing, mlc's output is checked against
onnxruntime's (rtol 1e-3, atol 1e-5) and the result printed beside the times. Both run on all cores
with their default settings, timed in alternating blocks (runtime.bench.block_medians, as
benchmarks/bench_models_cpu.py does). Prints per model: build seconds, mlc ms, ort ms, ort/mlc (above 1
means mlc is faster); a model that mlc does not import or build is listed with its error. `--base REV`
adds a build with the convolution schedule of git revision REV, timed in the same blocks (both builds
checked against onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from bench_cnn_cpu import compile_with, conv_tiling_of, print_profile
from mlc.runtime.bench import block_medians
from onnx.backend.test.runner import Runner

MODELS = ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
          "bvlc_alexnet", "zfnet512")


def light_path(name: str) -> str:
    from onnx.backend.test.loader import DATA_DIR

    return os.path.join(DATA_DIR, "light", f"light_{name}.onnx")


def random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """ConstantOfShape fills of initializer shapes -> initializers (see the module doc)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in model.graph.initializer}
    keep, new = [], []
    for n in model.graph.node:
        if n.op_type != "ConstantOfShape" or n.input[0] not in inits:
            keep.append(n)
            continue
        shape = [int(d) for d in numpy_helper.to_array(inits[n.input[0]])]
        fill = float(numpy_helper.to_array(n.attribute[0].t).reshape(-1)[0]) if n.attribute else 0.0
        val = (rng.standard_normal(shape) * (abs(fill) or 0.01) if len(shape) >= 2
               else np.full(shape, fill)).astype(np.float32)
        new.append(numpy_helper.from_array(val, n.output[0]))
    used = {x for n in keep for x in n.input}
    gone = {n.input[0] for n in model.graph.node if n.op_type == "ConstantOfShape"} - used
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    kept_inits = [t for t in out.graph.initializer if t.name not in gone]
    kept_inputs = [x for x in out.graph.input if x.name not in gone]
    del out.graph.initializer[:], out.graph.input[:]
    out.graph.initializer.extend(kept_inits + new)
    out.graph.input.extend(kept_inputs)
    if out.ir_version < 4:  # initializers must be graph inputs too before IR version 4
        out.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new)
    return out


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name for i in model.graph.initializer}
    return {x.name: Runner.generate_dummy_data(x, seed=0, random=False) for x in model.graph.input
            if x.name not in inits}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--base", metavar="REV", help="also time a build with the convolution schedule of "
                    "git revision REV (as bench_cnn_cpu.py --base)")
    ap.add_argument("--profile", action="store_true", help="mlc's kernel medians (as bench_cnn_cpu.py)")
    ap.add_argument("--top", type=int, default=8, help="kernels listed by --profile")
    args = ap.parse_args()
    base = conv_tiling_of(args.base) if args.base else None
    print(f"{'model':14s} {'build s':>8s} {'mlc ms':>10s} {'ort ms':>10s} {'ort/mlc':>8s}  agrees with ort"
          + (f" {'base ms':>10s} {'ort/base':>8s}" if base else ""))
    for name in args.models:
        proto = onnx.load(light_path(name))
        if args.random_weights:
            proto = random_weights(proto)
        feeds = feeds_for(proto)
        t0 = time.perf_counter()
        try:
            model = compile_with(proto, None)
            models = [model] + ([compile_with(proto, base)] if base else [])
        except Exception as e:  # noqa: BLE001 - report and go on with the next model
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"{name:14s} not built: {msg[:160]}", flush=True)
            continue
        build = time.perf_counter() - t0
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ours_feeds = dict(zip(model.input_names, feeds.values()))
        ref = sess.run(None, feeds)
        agree = all(np.allclose(g, r, rtol=1e-3, atol=1e-5) for m in models
                    for g, r in zip(m(**ours_feeds).values(), ref))
        ts = block_medians([lambda m=m, f=ours_feeds: m(**f) for m in models]
                           + [lambda s=sess, f=feeds: s.run(None, f)], runs=args.runs)
        ours, peer = ts[0], ts[-1]
        print(f"{name:14s} {build:8.1f} {ours * 1e3:10.2f} {peer * 1e3:10.2f} {peer / ours:8.2f}  "
              f"{'yes' if agree else 'NO':15s}" + (f" {ts[1] * 1e3:10.2f} {peer / ts[1]:8.2f}" if base else ""),
              flush=True)
        if args.profile:
            print_profile(model, ours_feeds, args.runs, args.top)


if __name__ == "__main__":
    main()
