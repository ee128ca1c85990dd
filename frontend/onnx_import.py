"""ONNX -> graph IR: the driver and the import context.

The context maps ONNX tensor names to what is known about them: an IR `Value`, a constant
array, or a *symbolic value* (a small integer tensor whose elements are `Expr`s, e.g. the result
of `Shape`). Shape arithmetic (Shape/Gather/Concat/Slice/... on shapes) is folded on symbolic
values, so reshape targets stay symbolic (`(n, 4, 64)`) instead of becoming run-time tensors.
Ops whose arguments are all constants are folded with their reference semantics; dead bindings
are dropped at the end. The context is onnx_ctx.py; node handlers: the ir/ops family modules (one ONNX op
onto one graph op), onnx_layout.py (shape and layout ops), onnx_compose.py (compositions),
onnx_rnn.py (LSTM, GRU), joined in onnx_ops.py's table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..ir.diagnostics import Loc, MlcError
from ..ir.expr import Const, Expr, Var
from ..ir.files import read_bytes
from ..ir.graph import Binding, Block, Constant, Function, If, Loop, Node, OpCall, Value, attrs_of
from ..ir.module import Module
from ..ir.types import TensorType
from ..passes.registry import PassContext
from ..passes.sparsify import Sparsify
from .onnx_ctx import Ctx, SymVal, onnx_dtype, sanitize
from .onnx_ops import HANDLERS

MODEL_LIMIT = 2 << 30  # protobuf refuses a message past 2 GiB (larger models keep weights in external data)

# Default-domain opsets 6..28 (what onnx 1.23 defines). Handlers read attributes that later opsets
# turned into inputs (reduction axes, Split sizes, Clip bounds, Pad pads, Slice bounds, Squeeze /
# Unsqueeze axes) from either place, and follow the older semantics where they differ (Softmax /
# LogSoftmax before 13 coerce to 2-D; opset 6's legacy `broadcast` / `axis` of binary ops and its
# channel-wise PRelu slope). Versions 22-28 of the ops in the table only add element types.
OPSET_MIN, OPSET_MAX = 6, 28

def attrs_dict(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        elif isinstance(v, float):  # f32 in the proto: keep the short decimal form (1e-05)
            v = float(str(np.float32(v)))
        out[a.name] = v
    return out


def load_model(path_or_model: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Parse and check a model; any defect becomes one MlcError."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, src = path_or_model, f"<onnx model {path_or_model.graph.name or 'main'}>"
    else:
        if isinstance(path_or_model, bytes):
            data, src = path_or_model, "<onnx bytes>"
        else:
            src = str(path_or_model)
            try:  # bounded: /dev/zero or an endless pipe is an error, not a hang
                data = read_bytes(path_or_model, "ONNX model", MODEL_LIMIT)
            except MlcError as e:
                raise MlcError(e.message, Loc(src)) from None
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise MlcError(f"not a valid ONNX model (protobuf decode failed: {e})", Loc(src)) from None
        if not model.graph.node and not model.graph.output:
            raise MlcError("not a valid ONNX model (empty graph)", Loc(src))
        if not isinstance(path_or_model, bytes) and any(
                t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            try:  # weights stored next to the model file
                onnx.external_data_helper.load_external_data_for_model(model, str(Path(src).parent))
            except Exception as e:  # noqa: BLE001 - onnx raises OSError, ValueError or ValidationError
                raise MlcError(f"cannot load external weights: {e}", Loc(src)) from None
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, Exception) as e:  # the checker raises several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MlcError(f"malformed ONNX model: {first}", Loc(src)) from None
    return model, src


def _same_as_min_opset(graph: onnx.GraphProto, version: int) -> bool:
    """Whether every op of the graph has, at opset `version`, the schema it has at OPSET_MIN."""
    import onnx.defs

    for n in graph.node:
        try:
            if (onnx.defs.get_schema(n.op_type, version).since_version
                    != onnx.defs.get_schema(n.op_type, OPSET_MIN).since_version):
                return False
        except onnx.defs.SchemaError:
            return False
    return True


def _opset(model: onnx.ModelProto, src: str) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            if 1 <= o.version < OPSET_MIN and _same_as_min_opset(model.graph, int(o.version)):
                return OPSET_MIN  # an older opset whose ops are all unchanged by OPSET_MIN (Not, And, ...)
            if not OPSET_MIN <= o.version <= OPSET_MAX:
                raise MlcError(f"ONNX opset {o.version} is not supported (supported: {OPSET_MIN}..{OPSET_MAX}); "
                               "convert the model with onnx.version_converter", Loc(src))
            return int(o.version)
    raise MlcError("model imports no default-domain opset", Loc(src))


def _check_supported(graph: onnx.GraphProto, src: str) -> None:
    bad = [f"{n.op_type}{'' if n.domain in ('', 'ai.onnx') else ' (domain ' + n.domain + ')'} "
           f"(node '{n.name or n.output[0]}')"
           for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in HANDLERS]
    if bad:
        kinds = sorted({b.split(" (node")[0] for b in bad})
        raise MlcError(f"unsupported ONNX ops {', '.join(kinds)}: {len(bad)} node(s): " + "; ".join(bad), Loc(src))


def _check_dim_names(g: onnx.GraphProto, dims: dict[str, str], src: str) -> None:
    """Every `--dim` key names a dynamic axis (dim_param) or an `input:axis` of the model: a typo is an error."""
    known: set[str] = set()
    for vi in g.input:
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            known |= {f"{vi.name}:{i}", f"{vi.name}.{i}"} | ({d.dim_param} if d.HasField("dim_param") else set())
    unknown = sorted(set(dims) - known)
    if unknown:
        params = sorted({d.dim_param for vi in g.input for d in vi.type.tensor_type.shape.dim if d.HasField("dim_param")})
        raise MlcError(f"--dim {', '.join(unknown)}: no such dynamic axis in the model "
                       f"(its dynamic axes: {', '.join(params) or 'none'}; or use INPUT:AXIS)", Loc(src))


def _param_type(vi: onnx.ValueInfoProto, dims: dict[str, str], src: str) -> TensorType:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise MlcError(f"graph input '{vi.name}' is not a tensor", Loc(src))
    dt = onnx_dtype(tt.elem_type, f"graph input '{vi.name}'", src)
    if not tt.HasField("shape"):
        raise MlcError(f"graph input '{vi.name}' has no shape (rank unknown)", Loc(src))
    shape: list[Expr] = []
    for i, d in enumerate(tt.shape.dim):
        over = dims.get(f"{vi.name}:{i}") or dims.get(f"{vi.name}.{i}")
        if over is None and d.HasField("dim_param"):
            over = dims.get(d.dim_param, d.dim_param)
        if over is None and d.HasField("dim_value"):
            shape.append(Const(int(d.dim_value)))
            continue
        sym = over if over is not None else f"{vi.name}_d{i}"
        shape.append(Const(int(sym)) if re.fullmatch(r"\d+", sym) else Var(sanitize(sym)))
    return TensorType(tuple(shape), dt)


def _uses(node: Node) -> set[str]:
    out: set[str] = set()
    if isinstance(node, Loop):
        out |= {v.name for v in node.inits} | _block_uses(node.body)
    elif isinstance(node, If):
        out |= {node.cond.name} | _block_uses(node.then_block) | _block_uses(node.else_block)
    else:
        for f in ("args", "fields"):
            out |= {v.name for v in getattr(node, f, ())}
        for f in ("tuple_value", "value"):
            v = getattr(node, f, None)
            if isinstance(v, Value):
                out.add(v.name)
    return out


def _block_uses(b: Block) -> set[str]:
    out = {v.name for v in b.results}
    for bd in b.bindings:
        out |= _uses(bd.node)
    return out


def dce(bindings: Sequence[Binding], results: Sequence[Value]) -> tuple[Binding, ...]:
    """Drop bindings nothing uses (every import node is pure); nested loop bodies too."""
    live = {v.name for v in results}
    kept: list[Binding] = []
    for b in reversed(bindings):
        if b.var.name not in live:
            continue
        node = b.node
        if isinstance(node, Loop):
            body = Block(dce(node.body.bindings, node.body.results), node.body.results, node.body.loc)
            node = Loop(node.index, node.extent, node.carried, node.inits, body, node.loc)
            b = Binding(b.var, node, b.loc)
        live |= _uses(node)
        kept.append(b)
    return tuple(reversed(kept))


def _constant_keys(bindings: Sequence[Binding]) -> set[str]:
    keys: set[str] = set()
    for b in bindings:
        if isinstance(b.node, Constant):
            keys.add(b.node.key)
        elif isinstance(b.node, Loop):
            keys |= _constant_keys(b.node.body.bindings)
    return keys


def import_onnx(path_or_model: str | Path | bytes | onnx.ModelProto,
                dims: dict[str, str] | None = None) -> tuple[Module, dict[str, np.ndarray]]:
    """Import an ONNX model as a module with graph function `main` and its constants (name -> array).

    `dims` renames dynamic axes: keys are dim_param names or `input:axis`, values are symbol
    names or integers (to fix a dim).
    """
    model, src = load_model(path_or_model)
    ctx = Ctx(src, _opset(model, src))
    g = model.graph
    _check_supported(g, src)
    for init in g.initializer:
        try:
            ctx.consts[init.name] = numpy_helper.to_array(init)
        except Exception as e:  # noqa: BLE001 - corrupt tensor data
            raise MlcError(f"initializer '{init.name}' cannot be read: {e}", Loc(src)) from None
        onnx_dtype(init.data_type, f"initializer '{init.name}'", src)
    sparse_keys = {sp.values.name for sp in g.sparse_initializer}
    for sp in g.sparse_initializer:
        ctx.consts[sp.values.name] = dense_of_sparse(sp, src)
    _check_dim_names(g, dims or {}, src)
    params: list[Value] = []
    for vi in g.input:
        if vi.name in ctx.consts:
            continue  # an initializer listed as an input: a constant with a default
        v = Value(ctx.fresh(vi.name), _param_type(vi, dims or {}, src), Loc(src))
        ctx.vals[vi.name] = v
        params.append(v)
    for out in g.output:
        ctx.reserved.add(sanitize(out.name))
    for node in g.node:
        ctx.node = node
        for i in node.input:
            if i and not ctx.has(i):
                raise ctx.error(f"input '{i}' is used before it is defined")
        HANDLERS[node.op_type](ctx, node, attrs_dict(node))
        for o in node.output:
            if o and not ctx.has(o):
                raise ctx.error(f"output '{o}' is not produced (unsupported configuration)")
    ctx.node = None
    results = [_result(ctx, o.name) for o in g.output]
    bindings = dce(ctx.stack[0], results)
    keys = _constant_keys(bindings)
    fn = Function("main", tuple(params), Block(bindings, tuple(results), Loc(src)), (), Loc(src))
    meta_d: dict[str, Any] = {"source": Path(src).name if not src.startswith("<") else src, "opset": ctx.opset}
    derived, sources = _provenance(ctx, keys, {i.name for i in g.initializer})
    if derived:
        meta_d["derived"] = derived
    meta = attrs_of(meta_d)
    module, arrays = Module((fn,), meta, None, Loc(src)), {k: ctx.arrays[k] for k in sorted(keys | sources)}
    if sparse_keys:  # matmuls by sparse initializers become sparse kernels (passes/sparsify.py)
        pctx = PassContext(constants=arrays, sink=None)
        for k, (_, operands, _) in ctx.derived.items():  # folded from them (Gemm's transposed B)
            if sparse_keys & set(operands):
                sparse_keys.add(k)
        module = Sparsify(max_density=1.0, only=",".join(sorted(sparse_keys))).apply(module, pctx)
        arrays = pctx.constants or arrays
    return module, arrays


def dense_of_sparse(sp: onnx.SparseTensorProto, src: str) -> np.ndarray:
    """An ONNX sparse_initializer as a dense array (indices: nnz linear offsets, or nnz x rank coordinates)."""
    name = sp.values.name
    try:
        values, dims = numpy_helper.to_array(sp.values).reshape(-1), tuple(int(d) for d in sp.dims)
        idx = numpy_helper.to_array(sp.indices).astype(np.int64)
    except Exception as e:  # noqa: BLE001 - corrupt tensor data
        raise MlcError(f"sparse initializer '{name}' cannot be read: {e}", Loc(src)) from None
    onnx_dtype(sp.values.data_type, f"sparse initializer '{name}'", src)
    size = int(np.prod(dims))
    flat = idx.reshape(-1) if idx.ndim == 1 else None
    if idx.ndim == 2 and idx.shape[1] == len(dims) and np.all((idx >= 0) & (idx < np.array(dims, np.int64))):
        flat = np.ravel_multi_index(tuple(idx.T), dims) if len(idx) else np.zeros(0, np.int64)
    if flat is None or len(flat) != len(values) or (len(flat) and (flat.min() < 0 or flat.max() >= size)):
        raise MlcError(f"sparse initializer '{name}': indices {idx.shape} do not fit {len(values)} values "
                       f"in dims {dims}", Loc(src))
    dense = np.zeros(size, values.dtype)
    dense[flat] = values
    return dense.reshape(dims)


def _provenance(ctx: Ctx, keys: set[str], inits: set[str]) -> tuple[tuple[Any, ...], set[str]]:
    """How the module's folded constants were made from float initializers (rank >= 1), as
    `(key, op, operand keys, attrs)` in dependency order, and the keys of the arrays those folds
    start from (kept in the side file). autodiff (ir/autodiff.py) redoes the folds in @grad so that
    `--wrt all` differentiates the initializers the model owns."""
    out: list[tuple[Any, ...]] = []
    done: set[str] = set()
    sources: set[str] = set()

    def leaves(k: str) -> set[str]:
        if k not in ctx.derived:
            return {k}
        return set().union(*(leaves(a) for a in ctx.derived[k][1]))

    def emit(k: str) -> None:
        if k in done or k not in ctx.derived:
            return
        done.add(k)
        op, args, attrs = ctx.derived[k]
        for a in args:
            emit(a)
        out.append((k, op, args, attrs))

    for k in sorted(keys):
        if k not in ctx.derived:
            continue
        ls = leaves(k)
        if any(x in inits and ctx.arrays[x].dtype.kind == "f" and ctx.arrays[x].ndim >= 1 for x in ls):
            emit(k)
            sources |= ls
    return tuple(out), sources


def _result(ctx: Ctx, name: str) -> Value:
    """The value of a graph output, bound under the output's own name."""
    want = sanitize(name)
    v = ctx.value(name)
    if v.name == want:
        return v
    if v.name in ctx.const_of:
        return ctx.constant(ctx.const_of[v.name], want)
    assert isinstance(v.type, TensorType)
    return ctx.bind(want, OpCall("cast", (v,), attrs_of({"dtype": v.type.dtype}), ctx.loc), v.type)


__all__ = ["import_onnx", "load_model", "sanitize", "Ctx", "SymVal"]
