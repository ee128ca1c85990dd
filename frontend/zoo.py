"""The model zoo: small but real ONNX models built in code with fixed seeds (nothing downloaded).

Each builder returns an `onnx.ModelProto` that passes the ONNX checker and runs in onnxruntime;
dynamic axes are named dim_params (`N`, `S`, `B`, `T`). Weights are small (well under 2 MB) so
tests that import and run every model stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
Dim = int | str


@dataclass
class GraphBuilder:
    """Accumulates nodes and initializers with generated unique names."""

    name: str
    seed: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def input(self, name: str, shape: Sequence[Dim], dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, name: str, shape: Sequence[Dim] | None = None, dtype: int = TensorProto.FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape)))

    def const(self, arr: np.ndarray, hint: str = "w") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(self, shape: Sequence[int], hint: str = "w", scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        s = scale if scale is not None else 1.0 / math.sqrt(max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * s).astype(np.float32), hint)

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        return self.const(np.array(values, dtype=np.int64), hint)

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, out: str | Sequence[str] | None = None,
             **attrs: object) -> str | list[str]:
        if out is None:
            outs = [self.fresh(op.lower()) for _ in range(n_out)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(op), **attrs))
        return outs[0] if n_out == 1 and out is None or isinstance(out, str) else outs

    def n(self, op: str, *inputs: str, **attrs: object) -> str:
        """A one-output node."""
        r = self.node(op, inputs, **attrs)
        assert isinstance(r, str)
        return r

    def model(self) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlc.zoo")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    # --- layers ----------------------------------------------------------------------------------
    def linear(self, x: str, n_in: int, n_out: int, gemm: bool = False) -> str:
        if gemm:  # ONNX Gemm with transposed weight, as torch.nn.Linear exports
            return self.n("Gemm", x, self.weight((n_out, n_in)), self.weight((n_out,), scale=0.1), transB=1)
        return self.n("Add", self.n("MatMul", x, self.weight((n_in, n_out))), self.weight((n_out,), scale=0.1))

    def conv_bn(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                relu: bool = True) -> str:
        p = k // 2
        y = self.n("Conv", x, self.weight((c_out, c_in // groups, k, k)), kernel_shape=[k, k],
                   strides=[stride, stride], pads=[p, p, p, p], group=groups)
        bn = [self.const((1 + 0.1 * self.rng.standard_normal(c_out)).astype(np.float32), "gamma"),
              self.const((0.1 * self.rng.standard_normal(c_out)).astype(np.float32), "beta"),
              self.const((0.1 * self.rng.standard_normal(c_out)).astype(np.float32), "mean"),
              self.const(self.rng.uniform(0.5, 1.5, c_out).astype(np.float32), "var")]
        y = self.n("BatchNormalization", y, *bn, epsilon=1e-5)
        return self.n("Relu", y) if relu else y


def mlp() -> onnx.ModelProto:
    """Dynamic-batch MLP: Gemm/ReLU x2, MatMul+Add head, Softmax."""
    b = GraphBuilder("mlp", seed=1)
    x = b.input("x", ["N", 64])
    h = b.n("Relu", b.linear(x, 64, 128, gemm=True))
    h = b.n("Relu", b.linear(h, 128, 64, gemm=True))
    b.node("Softmax", [b.linear(h, 64, 10)], out="probs", axis=-1)
    b.output("probs", ["N", 10])
    return b.model()


def resnext() -> onnx.ModelProto:
    """ResNeXt-style CNN: split-transform-merge blocks (grouped 3x3 conv, cardinality 4) plus shortcuts."""
    b = GraphBuilder("resnext", seed=2)
    x = b.input("image", ["N", 3, 16, 16])
    y = b.conv_bn(x, 3, 16, 3)
    for c_in, c_out, stride in ((16, 32, 1), (32, 64, 2)):
        width = c_out // 2
        t = b.conv_bn(y, c_in, width, 1)
        t = b.conv_bn(t, width, width, 3, stride=stride, groups=4)
        t = b.conv_bn(t, width, c_out, 1, relu=False)
        sc = b.conv_bn(y, c_in, c_out, 1, stride=stride, relu=False)
        y = b.n("Relu", b.n("Add", t, sc))
    y = b.n("Flatten", b.n("GlobalAveragePool", y), axis=1)
    b.node("Gemm", [y, b.weight((10, 64)), b.weight((10,), scale=0.1)], out="logits", transB=1)
    b.output("logits", ["N", 10])
    return b.model()


def inception() -> onnx.ModelProto:
    """Inception-style CNN: parallel 1x1 / 3x3 / double-3x3 / pool branches concatenated on channels."""
    b = GraphBuilder("inception", seed=3)
    x = b.input("image", ["N", 3, 16, 16])
    y = b.conv_bn(x, 3, 16, 3)
    y = b.n("MaxPool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 16
    for _ in range(2):
        br1 = b.conv_bn(y, c, 8, 1)
        br2 = b.conv_bn(b.conv_bn(y, c, 8, 1), 8, 12, 3)
        br3 = b.conv_bn(b.conv_bn(b.conv_bn(y, c, 4, 1), 4, 6, 3), 6, 6, 3)
        br4 = b.conv_bn(b.n("AveragePool", y, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                            count_include_pad=0), c, 6, 1)
        y = b.n("Concat", br1, br2, br3, br4, axis=1)
        c = 8 + 12 + 6 + 6
    y = b.n("Flatten", b.n("GlobalAveragePool", y), axis=1)
    b.node("Gemm", [y, b.weight((10, c)), b.weight((10,), scale=0.1)], out="logits", transB=1)
    b.output("logits", ["N", 10])
    return b.model()


def seq2seq() -> onnx.ModelProto:
    """Encoder-decoder step: bidirectional LSTM encoder over a dynamic source length S, a GRU
    decoder step and dot-product attention over the encoder states, then next-token log-probs."""
    vocab, emb, hid = 40, 16, 16
    b = GraphBuilder("seq2seq", seed=4)
    src = b.input("src", ["S", "N"], TensorProto.INT64)
    prev = b.input("prev_token", ["N"], TensorProto.INT64)
    table = b.weight((vocab, emb), "embedding", scale=0.5)
    e = b.n("Gather", table, src, axis=0)  # S x N x E
    w = b.weight((2, 4 * hid, emb), "lstm_W")
    r = b.weight((2, 4 * hid, hid), "lstm_R")
    bias = b.weight((2, 8 * hid), "lstm_B", scale=0.1)
    ys, yh, _ = b.node("LSTM", [e, w, r, bias], n_out=3, out=[b.fresh("Y"), b.fresh("Y_h"), b.fresh("Y_c")],
                       hidden_size=hid, direction="bidirectional")
    # S x 2 x N x H -> S x N x 2H, target shape computed from Shape (folded symbolically by importers)
    ys = b.n("Transpose", ys, perm=[0, 2, 1, 3])
    shp = b.n("Shape", ys)
    sn = b.n("Gather", shp, b.ints([0, 1], "idx"), axis=0)
    enc = b.n("Reshape", ys, b.n("Concat", sn, b.ints([-1]), axis=0))  # S x N x 2H
    # decoder GRU step from the forward final state, input = embedded previous token
    h0 = b.n("Gather", yh, b.ints([0], "idx"), axis=0)  # 1 x N x H
    h0 = b.n("Concat", h0, b.n("Gather", yh, b.ints([1], "idx"), axis=0), axis=2)  # 1 x N x 2H
    dx = b.n("Unsqueeze", b.n("Gather", table, prev, axis=0), b.ints([0], "axes"))  # 1 x N x E
    gw = b.weight((1, 3 * 2 * hid, emb), "gru_W")
    gr = b.weight((1, 3 * 2 * hid, 2 * hid), "gru_R")
    gb = b.weight((1, 6 * 2 * hid), "gru_B", scale=0.1)
    _, dh = b.node("GRU", [dx, gw, gr, gb, "", h0], n_out=2, out=[b.fresh("dY"), b.fresh("dY_h")],
                   hidden_size=2 * hid, linear_before_reset=1)
    q = b.n("Squeeze", dh, b.ints([0], "axes"))  # N x 2H
    keys = b.n("Transpose", enc, perm=[1, 0, 2])  # N x S x 2H
    scores = b.n("MatMul", keys, b.n("Unsqueeze", q, b.ints([2], "axes")))  # N x S x 1
    scores = b.n("Div", scores, b.const(np.array(math.sqrt(2 * hid), np.float32), "scale"))
    attn = b.n("Softmax", scores, axis=1)
    ctxv = b.n("MatMul", b.n("Transpose", attn, perm=[0, 2, 1]), keys)  # N x 1 x 2H
    ctxv = b.n("Squeeze", ctxv, b.ints([1], "axes"))
    hcat = b.n("Concat", ctxv, q, axis=1)  # N x 4H
    o = b.n("Tanh", b.linear(hcat, 4 * hid, 2 * hid, gemm=True))
    b.node("LogSoftmax", [b.linear(o, 2 * hid, vocab)], out="log_probs", axis=-1)
    b.output("log_probs", ["N", vocab])
    b.node("Identity", [attn], out="attention")
    b.output("attention", ["N", "S", 1])
    return b.model()


def gpt_layer(b: GraphBuilder, x: str, d: int, heads: int, t_max: int, random_norm: bool = True,
              out: str | None = None) -> str:
    """One GPT decoder layer on `x` (B x T x d, T <= t_max): LayerNorm, causal multi-head
    self-attention (mask sliced from a constant by T, Where), residual, LayerNorm, MLP with erf-based
    GELU, residual. `random_norm` False starts the norms at scale 1, shift 0 (for training)."""
    dh = d // heads

    def ln(v: str) -> str:
        g = np.ones(d, np.float32) + (0.1 * b.rng.standard_normal(d).astype(np.float32) if random_norm else 0)
        beta = (0.1 * b.rng.standard_normal(d)).astype(np.float32) if random_norm else np.zeros(d, np.float32)
        return b.n("LayerNormalization", v, b.const(g.astype(np.float32), "ln_g"), b.const(beta, "ln_b"),
                   axis=-1, epsilon=1e-5)

    h = ln(x)
    qkv = b.linear(h, d, 3 * d)
    q, k, v = b.node("Split", [qkv, b.ints([d, d, d], "split")], n_out=3, axis=-1)
    shp = b.n("Shape", x)
    bt = b.n("Slice", shp, b.ints([0], "st"), b.ints([2], "en"))  # (B, T)
    heads_shape = b.n("Concat", bt, b.ints([heads, dh]), axis=0)

    def split_heads(z: str) -> str:
        return b.n("Transpose", b.n("Reshape", z, heads_shape), perm=[0, 2, 1, 3])  # B x h x T x dh

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    att = b.n("MatMul", q, b.n("Transpose", k, perm=[0, 1, 3, 2]))
    att = b.n("Div", att, b.const(np.array(math.sqrt(dh), np.float32), "scale"))
    tlen = b.n("Gather", shp, b.ints([1], "idx"), axis=0)  # (T,)
    ends = b.n("Concat", tlen, tlen, axis=0)
    mask = b.const(np.tril(np.ones((t_max, t_max), bool))[None, None], "causal_mask")
    mask = b.n("Slice", mask, b.ints([0, 0], "st"), ends, b.ints([2, 3], "axes"))
    att = b.n("Where", mask, att, b.const(np.array(-1e9, np.float32), "neg_inf"))
    att = b.n("Softmax", att, axis=-1)
    y = b.n("Transpose", b.n("MatMul", att, v), perm=[0, 2, 1, 3])
    y = b.n("Reshape", y, b.n("Concat", bt, b.ints([d]), axis=0))
    x1 = b.n("Add", x, b.linear(y, d, d))
    m = b.linear(ln(x1), d, 4 * d)
    gelu = b.n("Mul", b.n("Mul", m, b.n("Add", b.n("Erf", b.n("Div", m, b.const(np.array(math.sqrt(2), np.float32),
                                                                                    "sqrt2"))),
                                         b.const(np.array(1.0, np.float32), "one"))),
               b.const(np.array(0.5, np.float32), "half"))
    if out is None:
        return b.n("Add", x1, b.linear(gelu, 4 * d, d))
    b.node("Add", [x1, b.linear(gelu, 4 * d, d)], out=out)
    return out


def gpt_block() -> onnx.ModelProto:
    """GPT-style decoder block over dynamic batch B and sequence T (`gpt_layer`, d 32, 4 heads)."""
    d = 32
    b = GraphBuilder("gpt_block", seed=5)
    gpt_layer(b, b.input("x", ["B", "T", d]), d, 4, 64, out="y")
    b.output("y", ["B", "T", d])
    return b.model()


def graphsage() -> onnx.ModelProto:
    """Two GraphSAGE layers over V nodes (dynamic): h' = relu([h, A h] W), A a dense row-normalised
    adjacency (the sparse formats are the compiler's business), then per-node log-probabilities."""
    b = GraphBuilder("graphsage", seed=6)
    h = b.input("features", ["V", 16])
    adj = b.input("adjacency", ["V", "V"])
    width = 16
    for out in (32, 32):
        agg = b.n("MatMul", adj, h)
        h = b.n("Relu", b.linear(b.n("Concat", h, agg, axis=1), 2 * width, out))
        width = out
    b.node("LogSoftmax", [b.linear(h, width, 7)], out="node_log_probs", axis=1)
    b.output("node_log_probs", ["V", 7])
    return b.model()


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp, "resnext": resnext, "inception": inception, "seq2seq": seq2seq, "gpt_block": gpt_block,
    "graphsage": graphsage, "default": mlp,
}
NAMES: tuple[str, ...] = tuple(BUILDERS)


def build(name: str) -> onnx.ModelProto:
    """The zoo model `name` (see NAMES); deterministic across calls."""
    from ..ir.diagnostics import MlcError

    if name not in BUILDERS:
        raise MlcError(f"unknown zoo model '{name}' (available: {', '.join(NAMES)})")
    return BUILDERS[name]()
