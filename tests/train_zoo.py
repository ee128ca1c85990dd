"""Zoo models for training on the GPU, shared by tests/test_autodiff_gpu.py and
benchmarks/bench_train_gpu.py: mlc's training module (`mlc amp` + `mlc autodiff`) and its inputs, and
the same models written in PyTorch on the mlc module's own weights (the independent oracle).

`forward(name, params)` reads the weights by their keys in `@train_step`'s order (the order autodiff
gives the model's initializers: first use in the ONNX graph, which is frontend/zoo.py's build order)
and checks each shape, so a change of the zoo's layout is an error here rather than a silent mismatch.
The losses are those of `mlc autodiff --loss` (LOSSES): mean cross-entropy of the logits (mlp's softmax
input), mean squared error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LOSSES = {"mlp": "cross-entropy:labels", "gpt_block": "mse:target", "resnext": "cross-entropy:labels"}
MODELS = tuple(LOSSES)
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
INITIAL_SCALE = 2.0 ** 15  # mlc train's first loss scale


def train_module(name: str, low: str | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """(module with @main, @grad and an Adam @train_step, constants) of zoo model `name`; `low`
    (f16 / bf16): `mlc amp` first and dynamic loss scaling in @train_step. seq2seq (two results, no
    loss) gets a VJP @grad only."""
    from mlc.frontend.onnx_import import import_onnx
    from mlc.frontend.zoo import build
    from mlc.passes.amp import Amp
    from mlc.passes.autodiff import Autodiff
    from mlc.passes.registry import PassContext

    m, consts = import_onnx(build(name))
    ctx = PassContext(constants=consts)
    if low is not None:
        m = Amp(dtype=low).apply(m, ctx)
    if name not in LOSSES:
        return Autodiff().apply(m, ctx), consts
    ad = Autodiff(loss=LOSSES[name], optimizer="adam", lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS,
                  loss_scale=low is not None)
    return ad.apply(m, ctx), consts


def weight_keys(module: Any, consts: dict[str, np.ndarray]) -> list[str]:
    """The weights @train_step (or @grad) takes and updates, in its order."""
    from mlc.ir.graph import Function

    fn = module.get("train_step") or module.get("grad")
    assert isinstance(fn, Function)
    if fn.name == "train_step":
        return [p.name for p in fn.params if p.name in consts]
    return [r.name[len("grad_"):] for r in fn.body.results if r.name.startswith("grad_")]


def step_inputs(module: Any, consts: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every input of @train_step for the first step: `data`, the initial weights, zero moments,
    step 0 and (with loss scaling) the first scale and no good steps."""
    from mlc.ir.graph import Function

    fn = module.get("train_step")
    assert isinstance(fn, Function)
    out = dict(data)
    for p in fn.params:
        if p.name in out:
            continue
        if p.name in consts:
            out[p.name] = consts[p.name]
        elif p.name[:2] in ("m_", "v_") and p.name[2:] in consts:
            out[p.name] = np.zeros_like(consts[p.name[2:]])
        elif p.name == "loss_scale":
            out[p.name] = np.array(INITIAL_SCALE, np.float32)
        else:  # step, good_steps
            out[p.name] = np.zeros((), np.float32)
    return out


def build_bytes(module: Any, consts: dict[str, np.ndarray], target: str) -> bytes:
    """The artifact of `module` built for `target` (cpu / cuda; no files written)."""
    from mlc.compiler import build_module, with_memory_constants

    return build_module(with_memory_constants(module, consts), consts, target).result.data


def compile_module(module: Any, consts: dict[str, np.ndarray], target: str) -> Any:
    """The module built for `target` as a loaded `Model` (a GPU for cuda)."""
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    return model_from_artifact(loads(build_bytes(module, consts, target)), f"<{target} build>")


def _take(params: Sequence[Any], shapes: Sequence[tuple[int, ...]], what: str) -> list[Any]:
    if len(params) < len(shapes):
        raise ValueError(f"{what}: {len(params)} weights left, {len(shapes)} wanted")
    got = list(params[:len(shapes)])
    for p, s in zip(got, shapes):
        if tuple(p.shape) != tuple(s):
            raise ValueError(f"{what}: weight of shape {tuple(p.shape)}, expected {tuple(s)}")
    return got


def _mlp(ps: Sequence[Any]) -> Callable[[dict[str, Any]], Any]:
    """Logits of the zoo mlp (Gemm transB x2 with ReLU, MatMul + Add head; its softmax is the loss's)."""
    w1, b1, w2, b2, w3, b3 = _take(ps, [(128, 64), (128,), (64, 128), (64,), (64, 10), (10,)], "mlp")

    def run(f: dict[str, Any]) -> Any:
        h = (f["x"] @ w1.T + b1).relu()
        h = (h @ w2.T + b2).relu()
        return h @ w3 + b3

    return run


def _gpt_block(ps: Sequence[Any]) -> Callable[[dict[str, Any]], Any]:
    """frontend/zoo.gpt_layer at d 32, 4 heads, causal mask of 64."""
    import torch
    import torch.nn.functional as F

    d, heads = 32, 4
    dh = d // heads
    g1, b1, wqkv, bqkv, wo, bo, g2, b2, w1, bb1, w2, bb2 = _take(
        ps, [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)],
        "gpt_block")

    def run(f: dict[str, Any]) -> Any:
        x = f["x"]
        bsz, t, _ = x.shape
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
        h = F.layer_norm(x, (d,), g1, b1, 1e-5)
        q, k, v = (h @ wqkv + bqkv).split(d, dim=-1)
        q, k, v = (z.reshape(bsz, t, heads, dh).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        att = torch.where(mask, att, torch.tensor(-1e9, dtype=att.dtype, device=x.device))
        y = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(bsz, t, d)
        x1 = x + (y @ wo + bo)
        m = F.layer_norm(x1, (d,), g2, b2, 1e-5) @ w1 + bb1
        gelu = m * (torch.erf(m / math.sqrt(2)) + 1.0) * 0.5
        return x1 + (gelu @ w2 + bb2)

    return run


def _resnext(ps: Sequence[Any]) -> Callable[[dict[str, Any]], Any]:
    """frontend/zoo.resnext: conv + inference batch norm (running mean and variance are weights too,
    as `--wrt all` makes them) + ReLU; two split-transform-merge blocks with shortcuts; GAP; Gemm."""
    import torch.nn.functional as F

    rest = list(ps)

    def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True
                ) -> Callable[[Any], Any]:
        w, g, b, mean, var = _take(rest, [(c_out, c_in // groups, k, k)] + [(c_out,)] * 4, "resnext conv_bn")
        del rest[:5]

        def run(x: Any) -> Any:
            y = F.conv2d(x, w, stride=stride, padding=k // 2, groups=groups)
            s = (1, -1, 1, 1)
            y = (y - mean.reshape(s)) / (var.reshape(s) + 1e-5).sqrt() * g.reshape(s) + b.reshape(s)
            return y.relu() if relu else y

        return run

    stem = conv_bn(3, 16, 3)
    blocks = []
    for c_in, c_out, stride in ((16, 32, 1), (32, 64, 2)):
        width = c_out // 2
        blocks.append((conv_bn(c_in, width, 1), conv_bn(width, width, 3, stride, 4),
                       conv_bn(width, c_out, 1, relu=False), conv_bn(c_in, c_out, 1, stride, relu=False)))
    wh, bh = _take(rest, [(10, 64), (10,)], "resnext head")

    def run(f: dict[str, Any]) -> Any:
        y = stem(f["image"])
        for t1, t2, t3, sc in blocks:
            y = (t3(t2(t1(y))) + sc(y)).relu()
        return y.mean(dim=(2, 3)) @ wh.T + bh

    return run


BUILDERS = {"mlp": _mlp, "gpt_block": _gpt_block, "resnext": _resnext}


def forward(name: str, params: Sequence[Any]) -> Callable[[dict[str, Any]], Any]:
    """The model `name` as a function of its inputs (torch tensors by input name), closing over
    `params` (torch tensors, the weights in `@train_step`'s order)."""
    return BUILDERS[name](params)


def loss(name: str, out: Any, feeds: dict[str, Any]) -> Any:
    """The scalar loss of `mlc autodiff --loss LOSSES[name]` on the model's output."""
    import torch.nn.functional as F

    kind, _, arg = LOSSES[name].partition(":")
    if kind == "cross-entropy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), feeds[arg].reshape(-1))
    return ((out - feeds[arg]) ** 2).mean()


def feeds(name: str, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of inputs and the loss's target or labels (numpy)."""
    rng = np.random.default_rng(seed)
    if name == "gpt_block":
        x = rng.standard_normal((batch, seq, 32)).astype(np.float32)
        return {"x": x, "target": rng.standard_normal(x.shape).astype(np.float32)}
    if name == "resnext":
        return {"image": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32),
                "labels": rng.integers(0, 10, batch).astype(np.int64)}
    return {"x": rng.standard_normal((batch, 64)).astype(np.float32), "labels": rng.integers(0, 10, batch).astype(np.int64)}
