"""LSTM and GRU as a `Loop` over the (possibly dynamic) sequence axis.

The input projection X @ W^T + Wb is one matmul over the whole sequence, hoisted out of the
loop; the loop body slices step t with `dynamic_slice`, applies the recurrence and writes h_t
into the carried output with `dynamic_update_slice`. Reverse directions run the same loop on
the time-reversed sequence; bidirectional concatenates both, as ONNX lays them out.

Weights are cut into pieces (bias halves Wb/Rb, peepholes, a GRU's R^T columns) outside the loop and
with single-result ops (`strided_slice`), so the importer records each fold (module meta `derived`)
and `mlc autodiff --wrt all` traces every piece back to the ONNX initializer (B, P, R); initial states
are `full` ops, never folded into constants, so they are not taken for parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx

from ..ir.arith import as_int
from ..ir.expr import Const
from ..ir.graph import Block, Loop, OpCall, Value, attrs_of
from ..ir.ops import registry as ops
from ..ir.ops.registry import value_dtype, value_shape
from ..ir.ops.shapes import BIG
from ..ir.types import ScalarType, TupleType
from .onnx_ctx import Ctx

# cell(ctx, x_t @ W^T + Wb, states, prep(ctx, R^T, Rb or None, name prefix), name prefix) -> new states (h first)
Cell = Callable[[Ctx, Value, list[Value], Any, str], list[Value]]
Prep = Callable[[Ctx, Value, Value | None, str], Any]  # runs before the loop: what the cell reads of R^T, Rb


def _check(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any], default_acts: list[str]) -> None:
    if (sl := ctx.opt_input(4)) is not None:  # sequence_lens: fine only when it is the full length
        c = ctx.const(sl)
        seq = as_int(value_shape(ctx.value(node.input[0]))[0 if not attrs.get("layout", 0) else 1])
        if c is None:
            raise ctx.error("sequence_lens given at run time: it must be a constant equal to the (static) "
                            "sequence length")
        if seq is None or bool((c != seq).any()):
            raise ctx.error("sequence_lens is only supported as a constant equal to the (static) sequence length")
    if "clip" in attrs or attrs.get("input_forget", 0):
        raise ctx.error("clip / input_forget are not supported")
    acts = [str(a) for a in attrs.get("activations", [])]
    ndir = 2 if str(attrs.get("direction", "forward")) == "bidirectional" else 1
    if acts and acts != default_acts * ndir:
        raise ctx.error(f"only the default activations {default_acts} are supported, got {acts}")


def _dir_param(ctx: Ctx, v: Value, d: int, hint: str, transpose: bool) -> Value:
    s = ctx.emit("strided_slice", [v], {"axes": (0,), "begin": (d,), "end": (d + 1,), "strides": (1,)}, hint + "_s")
    s = ctx.emit("squeeze", [s], {"axes": (0,)}, hint + "_q")
    return ctx.emit("transpose", [s], {"perm": (1, 0)}, hint) if transpose else s


def _reverse(ctx: Ctx, v: Value, hint: str) -> Value:
    return ctx.emit("strided_slice", [v], {"axes": (0,), "begin": (-1,), "end": (-BIG,), "strides": (-1,)}, hint)


def _slices(ctx: Ctx, v: Value, axis: int, sizes: tuple[int, ...], hints: list[str]) -> list[Value]:
    """`v` cut along `axis` into pieces of `sizes`: one `strided_slice` each (a constant piece folds
    with its provenance recorded, which a tuple-valued `split` would lose)."""
    out, start = [], 0
    for n, hint in zip(sizes, hints):
        out.append(ctx.emit("strided_slice", [v], {"axes": (axis,), "begin": (start,), "end": (start + n,),
                                                   "strides": (1,)}, hint))
        start += n
    return out


def _zeros(ctx: Ctx, shape: tuple[Any, ...], dtype: str, hint: str) -> Value:
    """A `full` of zeros that stays an op (a folded one would be a constant, i.e. a parameter)."""
    attrs = {"shape": tuple(as_int(d) if as_int(d) is not None else d for d in shape), "value": 0.0, "dtype": dtype}
    d = ops.get("full")
    assert d is not None and d.infer is not None
    return ctx.bind(hint, OpCall("full", (), attrs_of(attrs), ctx.loc), d.infer([], attrs, ctx.loc))


def _plain_r(ctx: Ctx, rt: Value, rb: Value | None, p: str) -> tuple[Value, Value | None]:
    return rt, rb


def _run(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any], gates: int, states: int, cell: Cell,
         prep: Prep = _plain_r) -> None:
    """Shared driver: per direction, hoist X @ W^T, loop over time, then lay out Y, Y_h (, Y_c)."""
    o = node.output[0] if node.output[0] else node.name or "rnn"
    x, w, r = ctx.input(0), ctx.input(1), ctx.input(2)
    batch_first = bool(attrs.get("layout", 0))
    if batch_first:  # (batch, seq, in) -> (seq, batch, in); states (batch, dir, H) -> (dir, batch, H)
        x = ctx.emit("transpose", [x], {"perm": (1, 0, 2)}, o + "_xT")
    hidden = int(attrs["hidden_size"])
    seq, batch = value_shape(x)[0], value_shape(x)[1]
    direction = str(attrs.get("direction", "forward"))
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    bias = ctx.value(b) if (b := ctx.opt_input(3)) else None
    init = [ctx.value(n) if (n := ctx.opt_input(5 + k)) else None for k in range(states)]
    if batch_first:
        init = [None if v is None else ctx.emit("transpose", [v], {"perm": (1, 0, 2)}, f"{o}_init{k}T")
                for k, v in enumerate(init)]
    ys, finals = [], [[] for _ in range(states)]  # type: list[Value], list[list[Value]]
    for d, rev in enumerate(dirs):
        p = f"{o}_d{d}"
        wt = _dir_param(ctx, w, d, p + "_Wt", True)  # (input, gates*H)
        rt = _dir_param(ctx, r, d, p + "_Rt", True)  # (H, gates*H)
        xd = _reverse(ctx, x, p + "_xrev") if rev else x
        xw = ctx.emit("matmul", [xd, wt], {}, p + "_xw")  # (seq, batch, gates*H)
        rb = None
        if bias is not None:
            bd = _dir_param(ctx, bias, d, p + "_B", False)  # (2*gates*H,)
            wb, rb = _slices(ctx, bd, 0, (gates * hidden, gates * hidden), [p + "_Wb", p + "_Rb"])
            xw = ctx.emit("add", [xw, wb], {}, p + "_xwb")
        h0s = []
        for k in range(states):
            if init[k] is not None:
                h0s.append(_dir_param(ctx, init[k], d, f"{p}_init{k}", False))  # type: ignore[arg-type]
            else:
                h0s.append(_zeros(ctx, (batch, Const(hidden)), value_dtype(x), f"{p}_zero{k}"))
        y0 = _zeros(ctx, (seq, batch, Const(hidden)), value_dtype(x), p + "_y0")
        rp = prep(ctx, rt, rb, p)
        ctx.stack.append([])
        t = Value(ctx.fresh(p + "_t"), ScalarType("i64"), ctx.loc)
        carried = [Value(ctx.fresh(f"{p}_s{k}"), h.type, ctx.loc) for k, h in enumerate(h0s)]
        ycar = Value(ctx.fresh(p + "_y"), y0.type, ctx.loc)
        step = ctx.emit("dynamic_slice", [xw, t], {"axis": 0, "size": 1}, p + "_xt1")
        step = ctx.emit("squeeze", [step], {"axes": (0,)}, p + "_xt")
        new = cell(ctx, step, carried, rp, p)
        hexp = ctx.emit("expand_dims", [new[0]], {"axes": (0,)}, p + "_hexp")
        ynew = ctx.emit("dynamic_update_slice", [ycar, hexp, t], {"axis": 0}, p + "_ynew")
        body = Block(tuple(ctx.stack.pop()), tuple(new) + (ynew,), ctx.loc)
        ty = TupleType(tuple(v.type for v in carried) + (ycar.type,))
        loop = ctx.bind(p + "_loop", Loop(t, seq, tuple(carried) + (ycar,), tuple(h0s) + (y0,), body, ctx.loc), ty)
        outs = ctx.tuple_items(loop, states + 1, [f"{p}_last{k}" for k in range(states)] + [p + "_Y"])
        y = _reverse(ctx, outs[-1], p + "_Yrev") if rev else outs[-1]
        ys.append(ctx.emit("expand_dims", [y], {"axes": (1,)}, p + "_Yd"))
        for k in range(states):
            finals[k].append(ctx.emit("expand_dims", [outs[k]], {"axes": (0,)}, f"{p}_fin{k}"))
    results = [ys] + finals
    for i, parts in enumerate(results):
        if i < len(node.output) and node.output[i]:
            v = parts[0] if len(parts) == 1 else ctx.emit("concat", parts, {"axis": 1 if i == 0 else 0},
                                                          node.output[i] + ("_cat" if batch_first else ""))
            if batch_first:
                perm = (2, 0, 1, 3) if i == 0 else (1, 0, 2)
                v = ctx.emit("transpose", [v], {"perm": perm}, node.output[i])
            ctx.out(i, v)


def _split_gates(ctx: Ctx, v: Value, n: int, hidden: int, hint: str) -> list[Value]:
    parts = ctx.emit("split", [v], {"axis": 1, "sections": (hidden,) * n}, hint + "_g")
    return ctx.tuple_items(parts, n, [f"{hint}_g{i}" for i in range(n)])


def lstm(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """ONNX LSTM (gates i, o, f, c), with the optional peephole weights P = (Pi, Po, Pf) per direction:
    i and f see Pi * c_{t-1}, Pf * c_{t-1}; o sees Po * c_t."""
    _check(ctx, node, attrs, ["Sigmoid", "Tanh", "Tanh"])
    hidden = int(attrs["hidden_size"])
    peeps: list[list[Value]] = []  # per direction, in the order _run builds the cells
    if (pn := ctx.opt_input(7)) is not None:
        pv = ctx.value(pn)
        for d in range(value_shape(pv)[0].value if isinstance(value_shape(pv)[0], Const) else 1):
            pd = _dir_param(ctx, pv, d, f"{node.output[0] or 'lstm'}_P{d}", False)  # (3*H,)
            peeps.append(_slices(ctx, pd, 0, (hidden,) * 3, [f"{node.output[0] or 'lstm'}_P{d}{g}" for g in "iof"]))

    def cell(c: Ctx, xt: Value, st: list[Value], r: tuple[Value, Value | None], p: str) -> list[Value]:
        rt, rb = r
        h, cprev = st
        pi, po, pf = peeps.pop(0) if peeps else (None, None, None)
        g = c.emit("add", [xt, _affine(c, h, rt, rb, p + "_hr")], {}, p + "_gates")
        i, o, f, cc = _split_gates(c, g, 4, hidden, p)
        if pi is not None and pf is not None:
            i = c.emit("add", [i, c.emit("mul", [pi, cprev], {}, p + "_pic")], {}, p + "_ip")
            f = c.emit("add", [f, c.emit("mul", [pf, cprev], {}, p + "_pfc")], {}, p + "_fp")
        i, f = (c.emit("sigmoid", [v], {}, p + n) for v, n in ((i, "_i"), (f, "_f")))
        cc = c.emit("tanh", [cc], {}, p + "_cc")
        cn = c.emit("add", [c.emit("mul", [f, cprev], {}, p + "_fc"), c.emit("mul", [i, cc], {}, p + "_ic")], {},
                    p + "_cn")
        if po is not None:
            o = c.emit("add", [o, c.emit("mul", [po, cn], {}, p + "_poc")], {}, p + "_op")
        o = c.emit("sigmoid", [o], {}, p + "_o")
        hn = c.emit("mul", [o, c.emit("tanh", [cn], {}, p + "_tc")], {}, p + "_hn")
        return [hn, cn]

    _run(ctx, node, attrs, 4, 2, cell)


def gru(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """ONNX GRU (gates z, r, h), both linear_before_reset settings."""
    _check(ctx, node, attrs, ["Sigmoid", "Tanh"])
    hidden = int(attrs["hidden_size"])
    lbr = bool(attrs.get("linear_before_reset", 0))

    def prep(c: Ctx, rt: Value, rb: Value | None, p: str) -> tuple[Value | None, ...]:
        if lbr:
            return rt, rb, None, None
        # the candidate gate multiplies r into h before its recurrence matmul: R^T's columns (and
        # Rb) in two parts, (z, r) and h
        rzr, rh = _slices(c, rt, 1, (2 * hidden, hidden), [p + "_Rt_0", p + "_Rt_1"])
        bzr, bh = _slices(c, rb, 0, (2 * hidden, hidden), [p + "_Rb_0", p + "_Rb_1"]) if rb is not None \
            else (None, None)
        return rzr, bzr, rh, bh

    def cell(c: Ctx, xt: Value, st: list[Value], r: tuple[Value | None, ...], p: str) -> list[Value]:
        h = st[0]
        rt, rb, rh, bh = r
        assert rt is not None
        xz, xr, xh = _split_gates(c, xt, 3, hidden, p + "_x")
        if lbr:
            hz, hr, hh = _split_gates(c, _affine(c, h, rt, rb, p + "_hR"), 3, hidden, p + "_h")
        else:
            assert rh is not None
            hz, hr = _split_gates(c, _affine(c, h, rt, rb, p + "_hR"), 2, hidden, p + "_h")
        z = c.emit("sigmoid", [c.emit("add", [xz, hz], {}, p + "_za")], {}, p + "_z")
        r = c.emit("sigmoid", [c.emit("add", [xr, hr], {}, p + "_ra")], {}, p + "_r")
        if lbr:
            pre = c.emit("mul", [r, hh], {}, p + "_rh")
        else:
            pre = _affine(c, c.emit("mul", [r, h], {}, p + "_rxh"), rh, bh, p + "_rhR")
        hc = c.emit("tanh", [c.emit("add", [xh, pre], {}, p + "_ha")], {}, p + "_hc")
        hn = c.emit("add", [hc, c.emit("mul", [z, c.emit("sub", [h, hc], {}, p + "_dh")], {}, p + "_zdh")], {},
                    p + "_hn")
        return [hn]

    _run(ctx, node, attrs, 3, 1, cell, prep)


def _affine(ctx: Ctx, h: Value, wt: Value, b: Value | None, hint: str) -> Value:
    y = ctx.emit("matmul", [h, wt], {}, hint)
    return y if b is None else ctx.emit("add", [y, b], {}, hint + "_b")
