"""Random ONNX graphs for differential testing: the compiled CPU model vs mlc's reference interpreter vs
onnxruntime (issue "Conformance" item 5: no silent miscompiles, found by a machine).

`cases()` is a hypothesis strategy of `FuzzCase`s: small graphs (opset 17) over ops mlc imports,
chained on random shapes (1-sized dims, broadcasting, graph inputs with `dim_param` symbols fed at
concrete sizes), with feeds. `run_case` runs one case three ways and classifies the `Outcome`; the
compiled model runs in a forked child so a crashing kernel is a finding, not a dead test process.
`check_case` raises a `Finding` whose exception class is per signature (kind + paths that disagree),
so hypothesis shrinks distinct bugs separately. `python tests/fuzz_graphs.py --minutes 20` fuzzes in
rounds with fresh seeds and prints each distinct minimized finding.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

# Open bugs that would drown every other finding; the generator steers around those named in AVOID.
# MLC_FUZZ_KNOWN_BUGS=1 generates them again (all of them; or a comma list of names to avoid instead).
# Each has a pinned xfail regression test in tests/test_fuzz_differential.py: when one XPASSes, drop its
# mark there and its entry here. (Softmax over a non-last axis, integer Pow, integer Div's SIGFPE, an output aliasing a dead
# intermediate in the memory plan and Slice clamping on symbolic dims were here until fixed.)
KNOWN_BUGS: dict[str, str] = {}  # none open
_env = os.environ.get("MLC_FUZZ_KNOWN_BUGS", "")
AVOID: set[str] = set() if _env == "1" else set(_env.split(",")) - {""} if _env else set(KNOWN_BUGS)

OPSET = 17
DTYPES: dict[str, tuple[Any, int]] = {
    "f32": (np.float32, TensorProto.FLOAT), "i32": (np.int32, TensorProto.INT32),
    "i64": (np.int64, TensorProto.INT64), "bool": (np.bool_, TensorProto.BOOL),
}
NUMERIC = ("f32", "i32", "i64")


@dataclass
class Val:
    """A value in the graph being built: its dtype, concrete dims and, per dim, the symbol it has (if any)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    syms: tuple[str | None, ...]

    @property
    def rank(self) -> int:
        return len(self.dims)


@dataclass
class FuzzCase:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]  # graph input name -> array, in graph input order
    ops: tuple[str, ...]

    def describe(self) -> str:
        ins = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.feeds.items())
        return f"feeds {ins}\n{onnx.printer.to_text(self.model.graph)}"


class Builder:
    """Accumulates nodes, graph inputs, initializers and feeds while a case is drawn."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]):
        self.draw = draw
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.syms: dict[str, int] = {}
        self.consumed: set[str] = set()
        self.extra: list[Val] = []  # further outputs of a multi-output node (Split)
        self.int_consts: dict[str, str] = {}
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    # --- leaves ---------------------------------------------------------------------------------
    def data(self, dtype: str, dims: tuple[int, ...], lo: float = -5, hi: float = 5, nonzero: bool = False) -> np.ndarray:
        np_t = DTYPES[dtype][0]
        if dtype == "f32":
            a = self.rng.standard_normal(dims).astype(np.float32)
            if nonzero:
                a = (np.sign(a) + (a == 0)) * self.rng.uniform(0.5, 2.0, dims)
            return np.asarray(a, np.float32)
        if dtype == "bool":
            return np.asarray(self.rng.random(dims) < 0.5)
        a = self.rng.integers(int(lo), int(hi) + 1, dims)
        if nonzero:
            a = np.where(a == 0, 1, a)
        return np.asarray(a, np_t)

    def leaf(self, dtype: str, dims: tuple[int, ...], syms: tuple[str | None, ...] | None = None,
             const: bool | None = None, arr: np.ndarray | None = None, nonzero: bool = False,
             free: bool = False) -> Val:
        """A graph input or an initializer. An input's dims have the symbols `syms` (default: static), or
        random ones when `free` (dims that nothing else has to match)."""
        if arr is None:
            arr = self.data(dtype, dims, nonzero=nonzero)
        if const is None:
            const = self.draw(st.booleans())
        if syms is not None and any(syms) and "output_alias" in AVOID:
            const = False  # keep the symbols: a constant's static dims would meet them
        if const:
            name = self.name("c")
            self.inits.append(numpy_helper.from_array(arr, name))
            return Val(name, dtype, dims, (None,) * len(dims))
        name = f"x{len(self.inputs)}"
        if syms is None:
            syms = tuple(self.sym_for(d) if free else None for d in dims)
        shape: list[Any] = [s if s is not None else d for d, s in zip(dims, syms)]
        self.inputs.append(helper.make_tensor_value_info(name, DTYPES[dtype][1], shape))
        self.feeds[name] = arr
        return Val(name, dtype, dims, syms)

    def sym_for(self, d: int) -> str | None:
        """None (a static dim) or a dim_param whose run-time value is d; reuses a symbol of that value."""
        if not self.draw(st.integers(0, 3)) == 3:
            return None
        same = [s for s, v in self.syms.items() if v == d]
        if same and self.draw(st.booleans()):
            return same[0]
        s = f"s{len(self.syms)}"
        self.syms[s] = d
        return s

    def scalar(self, dtype: str, value: float) -> Val:
        return self.leaf(dtype, (), const=True, arr=np.asarray(value, DTYPES[dtype][0]))

    def ints(self, values: list[int]) -> str:
        """An int64 initializer; one per distinct value list."""
        key = repr(values)
        if key not in self.int_consts:
            self.int_consts[key] = self.name("k")
            self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), self.int_consts[key]))
        return self.int_consts[key]

    # --- nodes ----------------------------------------------------------------------------------
    def node(self, op: str, ins: list[Val | str], dtype: str, dims: tuple[int, ...],
             syms: tuple[str | None, ...] | None = None, **attrs: Any) -> Val:
        names = [i if isinstance(i, str) else i.name for i in ins]
        self.consumed.update(n for n in names if n)
        out = self.name("t")
        self.nodes.append(helper.make_node(op, names, [out], name=f"n{len(self.nodes)}", **attrs))
        return Val(out, dtype, dims, syms if syms is not None else (None,) * len(dims))


def _dims(draw: Callable[..., Any], rank: int) -> tuple[int, ...]:
    return tuple(draw(st.sampled_from([1, 2, 3, 4, 5, 1, 6, 8])) for _ in range(rank))


def _broadcast_partner(b: Builder, x: Val) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    """Dims (and symbols) of a fresh operand that broadcasts with x: the same dims, a suffix, some set to 1,
    or with extra leading dims."""
    draw = b.draw
    kind = draw(st.sampled_from(["same", "ones", "suffix", "lead"]))
    dims, syms = list(x.dims), list(x.syms)
    if kind == "ones":
        for i in range(len(dims)):
            if draw(st.booleans()):
                dims[i], syms[i] = 1, None
    elif kind == "suffix" and dims:
        k = draw(st.integers(0, len(dims)))
        dims, syms = dims[k:], syms[k:]
    elif kind == "lead" and len(dims) < 4:
        extra = draw(st.integers(1, 4 - len(dims)))
        dims = list(_dims(draw, extra)) + dims
        syms = [None] * extra + syms
    return tuple(dims), tuple(syms)


def _bcast(a: Val, bd: tuple[int, ...], bs: tuple[str | None, ...]) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    r = max(a.rank, len(bd))
    ad, as_ = (1,) * (r - a.rank) + a.dims, (None,) * (r - a.rank) + a.syms
    bd, bs = (1,) * (r - len(bd)) + bd, (None,) * (r - len(bs)) + bs
    dims, syms = [], []
    for x, xs, y, ys in zip(ad, as_, bd, bs):
        if x == 1 and xs is None:
            dims.append(y)
            syms.append(ys)
        elif y == 1 and ys is None:
            dims.append(x)
            syms.append(xs)
        else:
            dims.append(x)
            syms.append(xs if xs is not None and ys is not None else None)
    return tuple(dims), tuple(syms)


def _partner(b: Builder, x: Val, dtype: str | None = None, nonzero: bool = False) -> Val:
    dims, syms = _broadcast_partner(b, x)
    # a new symbol only where the dim is not 1: a symbol of value 1 broadcast against a constant dim is a
    # documented limit (the constant wins; the run-time check fails)
    syms = tuple(s if s is not None or d == 1 or "output_alias" in AVOID else b.sym_for(d) if b.draw(st.booleans())
                 else None for d, s in zip(dims, syms))
    return b.leaf(dtype or x.dtype, dims, syms, nonzero=nonzero)


def _positive(b: Builder, x: Val) -> Val:
    """|x| + 0.5: a safe argument for Sqrt, Log, Reciprocal and a Pow base."""
    a = b.node("Abs", [x], x.dtype, x.dims, x.syms)
    return b.node("Add", [a, b.scalar("f32", 0.5)], x.dtype, x.dims, x.syms)


def _axis(b: Builder, rank: int) -> int:
    a = b.draw(st.integers(0, rank - 1))
    return a - rank if b.draw(st.booleans()) else a


# --- ops: each takes the builder and an operand and returns the result, or None if not applicable ----
UNARY_F = ["Abs", "Neg", "Relu", "Sigmoid", "Tanh", "Exp", "Erf", "Floor", "Ceil", "Round", "Sin", "Cos",
           "Softsign", "Softplus", "Elu", "Selu", "HardSigmoid", "HardSwish", "Identity"]


def op_unary(b: Builder, x: Val) -> Val | None:
    if x.dtype == "bool":
        return b.node("Not", [x], "bool", x.dims, x.syms)
    if x.dtype != "f32":
        op = b.draw(st.sampled_from(["Abs", "Neg", "Identity"]))  # onnxruntime has no integer Relu
        return b.node(op, [x], x.dtype, x.dims, x.syms)
    op = b.draw(st.sampled_from(UNARY_F + ["Sqrt", "Log", "Reciprocal", "LeakyRelu"]))
    if op in ("Sqrt", "Log", "Reciprocal"):
        return b.node(op, [_positive(b, x)], "f32", x.dims, x.syms)
    if op == "LeakyRelu":
        return b.node(op, [x], "f32", x.dims, x.syms, alpha=b.draw(st.sampled_from([0.01, 0.2, 1.5])))
    return b.node(op, [x], "f32", x.dims, x.syms)


BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu",
          "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]


def op_binary(b: Builder, x: Val) -> Val | None:
    if x.dtype == "bool":
        op = b.draw(st.sampled_from(["And", "Or", "Equal"]))
        y = _partner(b, x)
        dims, syms = _bcast(x, y.dims, y.syms)
        return b.node(op, [x, y], "bool", dims, syms)
    op = b.draw(st.sampled_from(BINARY))
    if op in ("Sum", "Mean") and x.dtype != "f32" or op == "PRelu" and x.dtype == "i64":
        op = "Add"
    if op == "Pow":
        if x.dtype == "f32" and b.draw(st.booleans()):  # any base, integer-valued exponents
            ed, es = _broadcast_partner(b, x)
            y = b.leaf("f32", ed, es, arr=np.asarray(b.rng.integers(-2, 4, ed), np.float32))
        elif x.dtype == "f32":
            x = _positive(b, x)
            y = _partner(b, x)
        else:  # integer exponents 0..3
            ed, es = _broadcast_partner(b, x)
            y = b.leaf(x.dtype, ed, es, arr=np.abs(b.data(x.dtype, ed, 0, 3)))
    elif op == "PRelu":
        d, ds = _broadcast_partner(b, x)
        if len(d) > x.rank:
            d, ds = d[len(d) - x.rank:], ds[len(d) - x.rank:]
        y = b.leaf(x.dtype, d, ds)
    else:
        y = _partner(b, x, nonzero=op == "Div") if op == "Div" or b.draw(st.integers(0, 4)) else x
    dims, syms = _bcast(x, y.dims, y.syms)
    swap = op not in ("Pow", "PRelu") and b.draw(st.booleans())
    ins = [y, x] if swap else [x, y]
    if op == "Div" and swap:
        ins = [x, y]
    out_t = "bool" if op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual") else x.dtype
    return b.node(op, list(ins), out_t, dims, syms)


def op_where(b: Builder, x: Val) -> Val | None:
    if x.dtype == "bool":
        y = _partner(b, x, "f32")
        d1, s1 = _bcast(x, y.dims, y.syms)
        z = _partner(b, Val("", "f32", d1, s1))
        dims, syms = _bcast(Val("", "", d1, s1), z.dims, z.syms)
        return b.node("Where", [x, y, z], "f32", dims, syms)
    c = _partner(b, x, "bool")
    d1, s1 = _bcast(x, c.dims, c.syms)
    y = _partner(b, Val("", x.dtype, d1, s1))
    dims, syms = _bcast(Val("", "", d1, s1), y.dims, y.syms)
    return b.node("Where", [c, x, y] if b.draw(st.booleans()) else [c, y, x], x.dtype, dims, syms)


def op_clip(b: Builder, x: Val) -> Val | None:
    if x.dtype == "bool":
        return None
    lo = b.draw(st.sampled_from([None, -1.0, 0.0, -3.0]))
    hi = b.draw(st.sampled_from([None, 1.0, 2.5]))
    ins: list[Val | str] = [x, b.scalar(x.dtype, lo) if lo is not None else ""]
    if hi is not None:
        ins.append(b.scalar(x.dtype, hi))
    while ins and ins[-1] == "":
        ins.pop()
    return b.node("Clip", ins, x.dtype, x.dims, x.syms)


def op_cast(b: Builder, x: Val) -> Val | None:
    to = b.draw(st.sampled_from(["f32", "i64", "i32", "bool"]))
    if to == x.dtype:
        to = "f32" if x.dtype != "f32" else "i32"
    return b.node("Cast", [x], to, x.dims, x.syms, to=DTYPES[to][1])


def op_softmax(b: Builder, x: Val) -> Val | None:
    if x.dtype != "f32" or x.rank == 0:
        return None
    op = b.draw(st.sampled_from(["Softmax", "LogSoftmax"]))
    axis = _axis(b, x.rank)
    return b.node(op, [x], "f32", x.dims, x.syms, axis=axis)


def op_reduce(b: Builder, x: Val) -> Val | None:
    if x.dtype == "bool":
        return None
    ops = ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin"]
    op = b.draw(st.sampled_from(ops + ["ReduceMean"] if x.dtype == "f32" else ops))
    keep = b.draw(st.sampled_from([1, 0]))
    if op.startswith("Arg"):
        if x.rank == 0:
            return None
        axis = _axis(b, x.rank)
        a = axis % x.rank
        dims = x.dims[:a] + ((1,) if keep else ()) + x.dims[a + 1:]
        syms = x.syms[:a] + ((None,) if keep else ()) + x.syms[a + 1:]
        return b.node(op, [x], "i64", dims, syms, axis=axis, keepdims=keep)
    axes = sorted({_axis(b, x.rank) for _ in range(b.draw(st.integers(0, x.rank)))}) if x.rank else []
    red = {a % x.rank for a in axes} if axes else set(range(x.rank))
    dims = tuple(1 if i in red else d for i, d in enumerate(x.dims) if keep or i not in red)
    syms = tuple(None if i in red else s for i, s in enumerate(x.syms) if keep or i not in red)
    if op == "ReduceSum":
        ins: list[Val | str] = [x, b.ints(axes)] if axes else [x]
        return b.node(op, ins, x.dtype, dims, syms, keepdims=keep)
    extra = {"axes": axes} if axes else {}
    return b.node(op, [x], x.dtype, dims, syms, keepdims=keep, **extra)


def op_matmul(b: Builder, x: Val) -> Val | None:
    if x.dtype != "f32" or x.rank == 0:
        return None
    draw = b.draw
    k, ks = x.dims[-1], x.syms[-1]
    n = draw(st.sampled_from([1, 3, 4, 7, 16]))
    if x.rank == 1:
        other = b.leaf("f32", (k, n), (ks, None)) if draw(st.booleans()) else b.leaf("f32", (k,), (ks,))
    else:
        shape = draw(st.sampled_from(["vec", "mat", "batch"]))
        if shape == "vec":
            other = b.leaf("f32", (k,), (ks,))
        elif shape == "mat":
            other = b.leaf("f32", (k, n), (ks, None))
        else:
            batch = tuple(1 if draw(st.booleans()) else d for d in x.dims[:-2])
            bsyms = tuple(s if d == xd else None for d, xd, s in zip(batch, x.dims[:-2], x.syms[:-2]))
            other = b.leaf("f32", batch + (k, n), bsyms + (ks, None))
    # result dims
    if x.rank == 1 and other.rank == 1:
        return b.node("MatMul", [x, other], "f32", (), ())
    if x.rank == 1:
        return b.node("MatMul", [x, other], "f32", other.dims[1:], other.syms[1:])
    if other.rank == 1:
        return b.node("MatMul", [x, other], "f32", x.dims[:-1], x.syms[:-1])
    bd, bs = _bcast(Val("", "", x.dims[:-2], x.syms[:-2]), other.dims[:-2], other.syms[:-2])
    return b.node("MatMul", [x, other], "f32", bd + (x.dims[-2], n), bs + (x.syms[-2], None))


def op_gemm(b: Builder, x: Val) -> Val | None:
    if x.dtype != "f32" or x.rank != 2:
        return None
    draw = b.draw
    ta, tb = draw(st.sampled_from([0, 1])), draw(st.sampled_from([0, 1]))
    m, k = (x.dims[1], x.dims[0]) if ta else x.dims
    ms = x.syms[1] if ta else x.syms[0]
    n = draw(st.sampled_from([1, 2, 5, 8]))
    ks = x.syms[0] if ta else x.syms[1]
    w = b.leaf("f32", (n, k) if tb else (k, n), (None, ks) if tb else (ks, None), const=draw(st.integers(0, 3)) > 0)
    ins: list[Val | str] = [x, w]
    c = draw(st.sampled_from(["none", "n", "mn", "1n", "m1", "scalar"]))
    if c != "none":
        cd = {"n": (n,), "mn": (m, n), "1n": (1, n), "m1": (m, 1), "scalar": ()}[c]
        cs = {"mn": (ms, None), "m1": (ms, None)}.get(c, (None,) * len(cd))
        ins.append(b.leaf("f32", cd, cs, const=True))
    attrs = {"transA": ta, "transB": tb, "alpha": draw(st.sampled_from([1.0, 0.5, -2.0])),
             "beta": draw(st.sampled_from([1.0, 0.0, 3.0]))}
    return b.node("Gemm", ins, "f32", (m, n), (ms, None), **attrs)


def op_transpose(b: Builder, x: Val) -> Val | None:
    if x.rank < 2:
        return None
    perm = b.draw(st.permutations(range(x.rank)))
    if b.draw(st.integers(0, 5)) == 0:
        perm = list(reversed(range(x.rank)))
        return b.node("Transpose", [x], x.dtype, tuple(x.dims[p] for p in perm), tuple(x.syms[p] for p in perm))
    return b.node("Transpose", [x], x.dtype, tuple(x.dims[p] for p in perm), tuple(x.syms[p] for p in perm),
                  perm=list(perm))


def _factor(b: Builder, total: int, rank: int) -> list[int]:
    out = [1] * rank
    t, p = total, 2
    while t > 1:
        while t % p == 0:
            out[b.draw(st.integers(0, rank - 1))] *= p
            t //= p
        p += 1
    return out


def op_reshape(b: Builder, x: Val) -> Val | None:
    draw = b.draw
    last_sym = max((i for i, s in enumerate(x.syms) if s is not None), default=-1)
    keep = last_sym + 1  # dims copied with 0
    rest = math.prod(x.dims[keep:])
    r = draw(st.integers(0 if keep == 0 and rest == 1 else 1, 4))
    tgt = _factor(b, rest, r) if r else []
    dims = x.dims[:keep] + tuple(tgt)
    syms = x.syms[:keep] + (None,) * len(tgt)
    spec = [0] * keep + tgt
    if spec and draw(st.booleans()):
        spec[draw(st.integers(0, len(spec) - 1))] = -1
    if draw(st.sampled_from(["Reshape", "Flatten"])) == "Flatten" and x.rank:
        axis = draw(st.integers(-x.rank, x.rank))
        a = axis + x.rank if axis < 0 else axis
        return b.node("Flatten", [x], x.dtype, (math.prod(x.dims[:a]), math.prod(x.dims[a:])), axis=axis)
    return b.node("Reshape", [x, b.ints(spec)], x.dtype, dims, syms)


def op_squeeze(b: Builder, x: Val) -> Val | None:
    ones = [i for i, (d, s) in enumerate(zip(x.dims, x.syms)) if d == 1 and s is None]
    if ones and b.draw(st.booleans()):
        axes = sorted({b.draw(st.sampled_from(ones)) for _ in range(b.draw(st.integers(1, len(ones))))})
        spec = [a - x.rank if b.draw(st.booleans()) else a for a in axes]
        keep = [i for i in range(x.rank) if i not in axes]
        return b.node("Squeeze", [x, b.ints(spec)], x.dtype, tuple(x.dims[i] for i in keep),
                      tuple(x.syms[i] for i in keep))
    if x.rank >= 4:
        return None
    r = x.rank + 1
    a = b.draw(st.integers(0, r - 1))
    dims = x.dims[:a] + (1,) + x.dims[a:]
    syms = x.syms[:a] + (None,) + x.syms[a:]
    return b.node("Unsqueeze", [x, b.ints([a - r if b.draw(st.booleans()) else a])], x.dtype, dims, syms)


def op_concat(b: Builder, x: Val) -> Val | None:
    if x.rank == 0:
        return None
    axis = _axis(b, x.rank)
    a = axis % x.rank
    parts = [x]
    for _ in range(b.draw(st.integers(1, 2))):
        if b.draw(st.booleans()):
            parts.append(x)
        else:
            d = b.draw(st.sampled_from([1, 2, 3]))
            syms = x.syms[:a] + (None,) + x.syms[a + 1:]
            parts.append(b.leaf(x.dtype, x.dims[:a] + (d,) + x.dims[a + 1:], syms))
    if b.draw(st.booleans()):
        parts.reverse()
    total = sum(p.dims[a] for p in parts)
    return b.node("Concat", list(parts), x.dtype, x.dims[:a] + (total,) + x.dims[a + 1:],
                  x.syms[:a] + (None,) + x.syms[a + 1:], axis=axis)


def op_split(b: Builder, x: Val) -> Val | None:
    if x.rank == 0:
        return None
    axis = _axis(b, x.rank)
    a = axis % x.rank
    d = x.dims[a]
    if d < 2 or x.syms[a] is not None and "output_alias" in AVOID:
        return None
    cuts = sorted({b.draw(st.integers(1, d - 1)) for _ in range(b.draw(st.integers(1, 2)))})
    sizes = [hi - lo for lo, hi in zip([0] + cuts, cuts + [d])]
    outs = [b.name("t") for _ in sizes]
    b.consumed.add(x.name)
    b.nodes.append(helper.make_node("Split", [x.name, b.ints(sizes)], outs, name=f"n{len(b.nodes)}", axis=axis))
    vals = [Val(o, x.dtype, x.dims[:a] + (n,) + x.dims[a + 1:], x.syms[:a] + (None,) + x.syms[a + 1:])
            for o, n in zip(outs, sizes)]
    b.extra.extend(vals[1:])
    return vals[0]


def op_slice(b: Builder, x: Val) -> Val | None:
    if x.rank == 0:
        return None
    draw = b.draw
    axes = sorted({draw(st.integers(0, x.rank - 1)) for _ in range(draw(st.integers(1, x.rank)))})
    starts, ends, steps = [], [], []
    dims, syms = list(x.dims), list(x.syms)
    for a in axes:
        d = x.dims[a]
        step = draw(st.sampled_from([1, 1, 2, -1, 3, -2]))
        if x.syms[a] is not None and "slice_clamp" in AVOID:  # no clamping of starts and ends
            s = draw(st.integers(-d, d if step > 0 else d - 1))
            e = draw(st.integers(-d, d if step > 0 else d - 1))
        else:
            s = draw(st.integers(-d - 2, d + 2))
            e = draw(st.integers(-d - 2, d + 2))
        if step < 0 and draw(st.booleans()):
            e = -(2**62)  # to the beginning
        if step > 0 and draw(st.integers(0, 3)) == 0:
            e = 2**62
        n = len(range(*slice(s, e, step).indices(d)))
        if n == 0:
            s, e, step = 0, d, 1
            n = d
        starts.append(s)
        ends.append(e)
        steps.append(step)
        dims[a], syms[a] = n, (x.syms[a] if (s, e, step) == (0, d, 1) else None)
    spec_axes = [a - x.rank if draw(st.booleans()) else a for a in axes]
    ins: list[Val | str] = [x, b.ints(starts), b.ints(ends), b.ints(spec_axes)]
    if any(t != 1 for t in steps) or draw(st.booleans()):
        ins.append(b.ints(steps))
    return b.node("Slice", ins, x.dtype, tuple(dims), tuple(syms))


def op_gather(b: Builder, x: Val) -> Val | None:
    if x.rank == 0:
        return None
    axis = _axis(b, x.rank)
    a = axis % x.rank
    d = x.dims[a]
    idims = _dims(b.draw, b.draw(st.integers(0, 2)))
    idx = b.rng.integers(-d, d, idims)
    it = b.draw(st.sampled_from(["i64", "i32"]))
    ind = b.leaf(it, idims, arr=np.asarray(idx, DTYPES[it][0]), free=True)
    return b.node("Gather", [x, ind], x.dtype, x.dims[:a] + idims + x.dims[a + 1:],
                  x.syms[:a] + ind.syms + x.syms[a + 1:], axis=axis)


def _spatial(b: Builder, x: Val, pool: bool) -> tuple[dict[str, Any], tuple[int, int]] | None:
    draw = b.draw
    attrs: dict[str, Any] = {}
    k = [draw(st.integers(1, max(1, min(3, x.dims[2])))), draw(st.integers(1, max(1, min(3, x.dims[3]))))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dil = [draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2]))]
    pads = [draw(st.integers(0, k[i % 2] - 1)) for i in range(4)]
    auto = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if auto.startswith("SAME") and (any(x.syms[2:]) or dil != [1, 1]):
        auto = "NOTSET"  # SAME needs static spatial dims (mlc); no dilations with SAME (onnxruntime)
    attrs["kernel_shape"] = k
    if s != [1, 1] or draw(st.booleans()):
        attrs["strides"] = s
    if dil != [1, 1]:
        attrs["dilations"] = dil
    out = []
    for i in range(2):
        size, ke = x.dims[2 + i], dil[i] * (k[i] - 1) + 1
        if auto == "NOTSET":
            o = (size + pads[i] + pads[i + 2] - ke) / s[i] + 1
        elif auto == "VALID":
            o = (size - ke) / s[i] + 1
        else:
            o = math.ceil(size / s[i])
        out.append(o)
    ceil = pool and auto == "NOTSET" and draw(st.booleans())
    outi = tuple(math.ceil(o) if ceil else math.floor(o) for o in out)
    if min(outi) < 1 or any(o < 1 for o in out):
        return None
    if ceil:
        attrs["ceil_mode"] = 1
        # onnx: the last window must start inside the (left-padded) input
        for i in range(2):
            if (outi[i] - 1) * s[i] >= x.dims[2 + i] + pads[i]:
                return None
    if auto == "NOTSET":
        if any(pads) or draw(st.booleans()):
            attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto
    return attrs, outi


def op_conv(b: Builder, x: Val) -> Val | None:
    if x.dtype != "f32" or x.rank != 4:
        return None
    draw = b.draw
    sp = _spatial(b, x, pool=False)
    if sp is None:
        return None
    attrs, (oh, ow) = sp
    c = x.dims[1]
    group = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    m = group * draw(st.integers(1, 3))
    if group > 1:
        attrs["group"] = group
    k = attrs["kernel_shape"]
    if draw(st.booleans()):
        del attrs["kernel_shape"]
    if x.syms[1] is not None and "output_alias" in AVOID and group > 1:
        return None
    ws = (None, x.syms[1] if group == 1 else None, None, None)
    w = b.leaf("f32", (m, c // group, k[0], k[1]), ws, const=draw(st.integers(0, 3)) > 0)
    ins: list[Val | str] = [x, w]
    if draw(st.booleans()):
        ins.append(b.leaf("f32", (m,), const=True))
    return b.node("Conv", ins, "f32", (x.dims[0], m, oh, ow), (x.syms[0], None, None, None), **attrs)


def op_pool(b: Builder, x: Val) -> Val | None:
    if x.dtype != "f32" or x.rank != 4:
        return None
    draw = b.draw
    op = draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"]))
    if op.startswith("Global"):
        return b.node(op, [x], "f32", x.dims[:2] + (1, 1), x.syms[:2] + (None, None))
    sp = _spatial(b, x, pool=True)
    if sp is None:
        return None
    attrs, (oh, ow) = sp
    if op == "AveragePool":
        attrs.pop("dilations", None)
        if "dilations" in attrs:
            return None
        sp2 = _recompute(x, attrs)
        if sp2 is None:
            return None
        oh, ow = sp2
        if draw(st.booleans()):
            attrs["count_include_pad"] = 1
    return b.node(op, [x], "f32", x.dims[:2] + (oh, ow), x.syms[:2] + (None, None), **attrs)


def _recompute(x: Val, attrs: dict[str, Any]) -> tuple[int, int] | None:
    """Output spatial dims of a pool after its dilations were dropped (onnx.shape_inference checks us)."""
    k, s = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    auto = attrs.get("auto_pad", "NOTSET")
    out = []
    for i in range(2):
        size = x.dims[2 + i]
        if auto == "NOTSET":
            o = (size + pads[i] + pads[i + 2] - k[i]) / s[i] + 1
            o = math.ceil(o) if attrs.get("ceil_mode") else math.floor(o)
            if attrs.get("ceil_mode") and (o - 1) * s[i] >= size + pads[i]:
                return None
        elif auto == "VALID":
            o = math.floor((size - k[i]) / s[i] + 1)
        else:
            o = math.ceil(size / s[i])
        if o < 1:
            return None
        out.append(o)
    return out[0], out[1]


def op_norm(b: Builder, x: Val) -> Val | None:
    if x.dtype != "f32" or x.rank == 0:
        return None
    if x.rank >= 2 and b.draw(st.integers(0, 3)) == 0 and (x.syms[1] is None or "output_alias" not in AVOID):
        c = x.dims[1]
        ins: list[Val | str] = [x] + [b.leaf("f32", (c,), const=True) for _ in range(3)]
        var = np.abs(b.data("f32", (c,))) + 0.1
        ins.append(b.leaf("f32", (c,), const=True, arr=var))
        return b.node("BatchNormalization", ins, "f32", x.dims, x.syms, epsilon=1e-5)
    axis = _axis(b, x.rank)
    a = axis % x.rank
    norm = x.dims[a:]
    ins = [x, b.leaf("f32", norm, x.syms[a:], const=True)]
    if b.draw(st.booleans()):
        ins.append(b.leaf("f32", norm, x.syms[a:], const=True))
    return b.node("LayerNormalization", ins, "f32", x.dims, x.syms, axis=axis,
                  epsilon=b.draw(st.sampled_from([1e-5, 1e-3])))


def op_expand(b: Builder, x: Val) -> Val | None:
    draw = b.draw
    op = draw(st.sampled_from(["Expand", "Tile", "Pad", "Trilu"]))
    if op == "Expand":
        lead = _dims(draw, draw(st.integers(0, max(0, 4 - x.rank))))
        own = tuple(draw(st.sampled_from([2, 3])) if d == 1 and s is None and draw(st.booleans()) else d
                    for d, s in zip(x.dims, x.syms))
        spec = list(lead) + [1 if d == xd and (draw(st.integers(0, 3)) == 0 or s is not None and "output_alias" in AVOID)
                             else d for d, xd, s in zip(own, x.dims, x.syms)]
        return b.node("Expand", [x, b.ints(spec)], x.dtype, lead + own, (None,) * len(lead) + x.syms)
    if x.rank == 0:
        return None
    if op == "Tile":
        reps = [draw(st.sampled_from([1, 2, 3])) for _ in range(x.rank)]
        return b.node("Tile", [x, b.ints(reps)], x.dtype, tuple(d * r for d, r in zip(x.dims, reps)),
                      tuple(s if r == 1 else None for s, r in zip(x.syms, reps)))
    if op == "Trilu":
        if x.rank < 2:
            return None
        ins: list[Val | str] = [x]
        if draw(st.booleans()):
            ins.append(b.leaf("i64", (), const=True, arr=np.asarray(draw(st.integers(-2, 2)), np.int64)))
        return b.node("Trilu", ins, x.dtype, x.dims, x.syms, upper=draw(st.sampled_from([1, 0])))
    pads = [draw(st.integers(0, 2)) for _ in range(2 * x.rank)]
    dims = tuple(d + pads[i] + pads[i + x.rank] for i, d in enumerate(x.dims))
    syms = tuple(s if pads[i] == pads[i + x.rank] == 0 else None for i, s in enumerate(x.syms))
    ins = [x, b.ints(pads)]
    if x.dtype != "bool" and draw(st.booleans()):
        ins.append(b.scalar(x.dtype, 1.5 if x.dtype == "f32" else 2))
    return b.node("Pad", ins, x.dtype, dims, syms)


OPS: list[Callable[[Builder, Val], Val | None]] = [
    op_unary, op_binary, op_reduce, op_softmax, op_matmul, op_transpose, op_reshape, op_concat, op_slice,
    op_gather, op_conv, op_pool, op_norm, op_where, op_clip, op_cast, op_squeeze, op_gemm, op_expand, op_split,
]
SPATIAL = [op_conv, op_pool, op_conv, op_pool, op_binary, op_reduce, op_norm]  # for f32 NCHW values


@st.composite
def cases(draw: Callable[..., Any], max_ops: int = 5) -> FuzzCase:
    """A random graph of 1..max_ops op steps with its feeds."""
    b = Builder(draw)
    rank = draw(st.sampled_from([2, 4, 1, 3, 0]))
    dtype = draw(st.sampled_from(["f32", "f32", "f32", "i64", "i32"]))
    x0 = b.leaf(dtype, _dims(draw, rank), const=False, free=True)
    pool = [x0]
    for _ in range(draw(st.integers(1, max_ops))):
        x = draw(st.sampled_from(pool[::-1]))
        out = None
        for _attempt in range(4):
            spatial = x.dtype == "f32" and x.rank == 4 and draw(st.booleans())
            out = draw(st.sampled_from(SPATIAL if spatial else OPS))(b, x)
            if out is not None:
                break
        if out is None:
            out = b.node("Identity", [x], x.dtype, x.dims, x.syms)
        for v in [out, *b.extra]:
            if v not in pool:
                pool.append(v)
        b.extra.clear()
    sinks = [v for v in pool[1:] if v.name not in b.consumed]
    outs = [helper.make_tensor_value_info(f"y{i}", DTYPES[v.dtype][1], None) for i, v in enumerate(sinks)]
    for i, v in enumerate(sinks):  # rename the sink outputs y0, y1, ...
        for n in b.nodes:
            for j, o in enumerate(n.output):
                if o == v.name:
                    n.output[j] = f"y{i}"
            for j, o in enumerate(n.input):
                if o == v.name:
                    n.input[j] = f"y{i}"
    graph = helper.make_graph(b.nodes, "fuzz", b.inputs, outs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as e:  # a bug in this generator: show the graph
        raise AssertionError(f"generated an invalid graph: {e}\n{onnx.printer.to_text(graph)}") from e
    return FuzzCase(model, b.feeds, tuple(n.op_type for n in b.nodes))


# --- running and comparing ---------------------------------------------------------------------------
@dataclass
class Outcome:
    """kind: ok | refused (the importer said MlcError) | ort_error (not a valid case) | mismatch |
    crash | error."""

    kind: str
    signature: str = ""
    detail: str = ""
    errors: dict[str, float] = field(default_factory=dict)


def _child(conn: Any, model_bytes: bytes, feeds: dict[str, np.ndarray]) -> None:
    try:
        from mlc.ir.diagnostics import MlcError

        import mlc

        try:
            model = mlc.compile(onnx.load_from_string(model_bytes))
            names = model.input_names
            outs = model(**{n: v for n, v in zip(names, feeds.values())})
            conn.send(("ok", {k: np.asarray(v) for k, v in outs.items()}))
        except MlcError as e:
            conn.send(("mlc_error", str(e).splitlines()[0][:300]))
        except Exception as e:  # noqa: BLE001 - an internal error is a finding
            conn.send(("error", f"{type(e).__name__}: {str(e)[:300]}\n{traceback.format_exc()[-1500:]}"))
    finally:
        conn.close()
        os._exit(0)


def run_compiled(case: FuzzCase, timeout: float = 120.0) -> tuple[str, Any]:
    """('ok', outputs) | ('mlc_error', msg) | ('error', msg) | ('crash', signal name) | ('hang', '')."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, case.model.SerializeToString(), case.feeds))
    p.start()
    child.close()
    res: tuple[str, Any] | None = None
    if parent.poll(timeout):
        try:
            res = parent.recv()
        except EOFError:
            res = None
    p.join(5 if res is not None else 1)
    if p.is_alive():
        p.kill()
        p.join()
        if res is None:
            return "hang", f"no answer in {timeout:.0f} s"
    parent.close()
    if res is None:
        code = p.exitcode or 0
        return "crash", signal.Signals(-code).name if code < 0 else f"exit {code}"
    return res


def run_ort(case: FuzzCase) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    # the plain kernels are the reference: ORT_ENABLE_ALL fuses Transpose + MatMul with a 1-D B into a
    # FusedMatMul that drops the transpose (onnxruntime 1.32: Transpose(x[2, 2]) @ b[2] gives x @ b)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(case.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, case.feeds)))


def run_interp(case: FuzzCase) -> tuple[str, Any]:
    from mlc.frontend.onnx_import import import_onnx
    from mlc.ir.diagnostics import MlcError
    from mlc.ir.interp import run_function

    try:
        module, consts = import_onnx(case.model)
    except MlcError as e:
        return "refused", str(e).splitlines()[0][:300]
    except Exception as e:  # noqa: BLE001
        return "import_error", f"{type(e).__name__}: {str(e)[:300]}"
    fn = module.get("main")
    names = [p.name for p in fn.params]  # type: ignore[attr-defined]
    try:
        return "ok", run_function(module, dict(zip(names, case.feeds.values())), consts)
    except MlcError as e:
        return "interp_mlc_error", str(e).splitlines()[0][:300]
    except Exception as e:  # noqa: BLE001
        return "interp_error", f"{type(e).__name__}: {str(e)[:300]}"


def compare(got: np.ndarray, want: np.ndarray) -> float | None:
    """None when close enough, else the error (inf for a shape / dtype / NaN-pattern mismatch)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return math.inf
    if want.dtype.kind in "biu":
        if np.array_equal(got, want):
            return None
        err = np.abs(got.astype(np.float64) - want)
        # onnxruntime's integer ReduceProd goes through doubles: beyond 2**53 it is only that exact
        big = np.abs(want.astype(np.float64)) > 2.0**53
        return None if np.all(err[big] <= 1e-15 * np.abs(want[big])) and np.all(err[~big] == 0) else float(np.max(err))
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(w)) or not np.array_equal(np.isposinf(g), np.isposinf(w)) \
            or not np.array_equal(np.isneginf(g), np.isneginf(w)):
        return math.inf
    fin = np.isfinite(w)
    if not fin.any():
        return None
    g, w = g[fin], w[fin]
    err = np.abs(g - w)
    if np.all(err <= 1e-5 + 1e-4 * np.abs(w)):
        return None
    # long reductions: the error relative to the output's scale (a relative max-norm check)
    rel = float(np.max(err) / (np.max(np.abs(w)) + 1e-30))
    return None if rel <= 1e-5 else float(np.max(err))


def run_case(case: FuzzCase) -> Outcome:
    try:
        want = run_ort(case)
    except Exception as e:  # noqa: BLE001 - onnxruntime can't run it: not a valid case for us
        return Outcome("ort_error", "ort", f"{type(e).__name__}: {str(e)[:300]}")
    ik, interp = run_interp(case)
    if ik == "refused":
        return Outcome("refused", "", interp)
    ck, comp = run_compiled(case)
    if ck == "crash" or ck == "hang":
        return Outcome("crash", f"compiled {ck} {comp}", str(comp))
    if ik != "ok" or ck != "ok":
        sig = []
        if ik != "ok":
            sig.append(f"interp {ik}")
        if ck != "ok":
            sig.append(f"compiled {ck} {_template(comp)}")
        return Outcome("error", "; ".join(sig), f"interp: {interp if ik != 'ok' else 'ok'}\ncompiled: "
                       f"{comp if ck != 'ok' else 'ok'}")
    errs: dict[str, float] = {}
    bad: set[str] = set()
    for name, w in want.items():
        for path, res in (("interp", interp), ("compiled", comp)):
            if name not in res:
                errs[f"{path}/{name}"] = math.inf
                bad.add(path)
                continue
            e = compare(res[name], w)
            if e is not None:
                errs[f"{path}/{name}"] = e
                bad.add(path)
        if name in interp and name in comp and compare(comp[name], interp[name]) is not None:
            bad.add("compiled-vs-interp")
    if not bad:
        return Outcome("ok")
    if bad == {"compiled-vs-interp"}:
        return Outcome("ok")  # both within tolerance of onnxruntime
    paths = sorted(bad - {"compiled-vs-interp"})
    detail = "\n".join(f"{k}: max err {v:.3g}" for k, v in errs.items())
    for name, w in want.items():
        for path, res in (("interp", interp), ("compiled", comp)):
            if f"{path}/{name}" in errs and name in res:
                detail += f"\n{path}/{name}: got {_short(res[name])}, ort {_short(w)}"
    return Outcome("mismatch", "mismatch " + "+".join(paths), detail, errs)


def _template(msg: str) -> str:
    """An error message without the names and numbers in it: tells distinct build errors apart."""
    msg = re.sub(r"@\w+|%\w+|'\w+'|\"\w+\"|\b[iuf]\d+\b|\d+", "_", str(msg).splitlines()[0])
    return msg.removeprefix("mlc: error: ")[:100]


def _short(a: np.ndarray) -> str:
    a = np.asarray(a)
    return f"{a.dtype}{list(a.shape)} {np.array2string(a.ravel()[:6], precision=4)}"


STATS: Counter[str] = Counter()
REFUSALS: Counter[str] = Counter()
ORT_ERRORS: Counter[str] = Counter()

_FINDINGS: dict[str, type[AssertionError]] = {}


class Finding(AssertionError):
    """A disagreement or a crash; subclassed per signature so hypothesis shrinks distinct bugs apart."""


def finding_class(signature: str) -> type[AssertionError]:
    if signature not in _FINDINGS:
        _FINDINGS[signature] = type(f"Finding[{signature}]", (Finding,), {})
    return _FINDINGS[signature]


def check_case(case: FuzzCase) -> Outcome:
    """Run `case` three ways; raise a `Finding` on a disagreement, crash or internal error."""
    out = run_case(case)
    STATS[out.kind] += 1
    if out.kind == "refused":
        REFUSALS[out.detail.split(":")[-1].strip()[:80]] += 1
    if out.kind == "ort_error":
        ORT_ERRORS[out.detail[:220]] += 1
    if out.kind in ("mismatch", "crash", "error"):
        raise finding_class(out.signature)(f"{out.signature}\n{out.detail}\n{case.describe()}")
    return out


def warm_up() -> None:
    """Import the whole compiler once in the parent, so each forked child starts warm and all children run
    the same code (not a mix with files other people are editing meanwhile)."""
    import mlc.runtime.model  # noqa: F401
    from mlc.passes.registry import load_all

    import mlc.compiler

    load_all()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    g = helper.make_graph([helper.make_node("Exp", ["x"], ["y"])], "warm", [x], [y])
    mlc.compiler.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]))


# --- the long-run driver -----------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-ops", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=400)
    args = ap.parse_args()
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    warm_up()
    stop = time.time() + args.minutes * 60
    seen: dict[str, int] = {}
    failing = [False]
    for rnd in range(args.seed, args.seed + 10**6):
        if time.time() >= stop:
            break
        failing[0] = False

        @hseed(rnd)
        @settings(max_examples=args.per_round, deadline=None, database=None, report_multiple_bugs=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
        @given(case=cases(max_ops=args.max_ops))
        def fuzz(case: FuzzCase) -> None:
            if time.time() > stop and (not failing[0] or time.time() > stop + 300):
                return  # out of time (shrinking gets 5 more minutes)
            try:
                check_case(case)
            except Finding:
                failing[0] = True
                raise

        try:
            fuzz()
        except BaseException as e:  # noqa: BLE001 - hypothesis raises one finding or a group of them
            errs = list(e.exceptions) if isinstance(e, BaseExceptionGroup) else [e]
            for err in errs:
                msg = str(err)
                key = msg.splitlines()[0] + " | " + " ".join(sorted(set(_ops_in(msg))))
                seen[key] = seen.get(key, 0) + 1
                print(f"=== FINDING (round {rnd}) {key}\n{msg}\n", flush=True)
        print(f"--- round {rnd} done at {time.strftime('%H:%M:%S')}; {dict(STATS)}", flush=True)
    total = sum(STATS.values())
    print(f"=== graphs tried {total}; {dict(STATS)}; refused {STATS['refused'] / max(total, 1):.1%}")
    print("refusals:", REFUSALS.most_common(15))
    print("ort errors:", ORT_ERRORS.most_common(10))
    print("distinct findings:", *seen, sep="\n  ")


def _ops_in(msg: str) -> list[str]:
    return re.findall(r"\] \w+ = (\w+)", msg)


if __name__ == "__main__":
    sys.exit(main())
