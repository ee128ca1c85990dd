"""The one graph walk of compiled models, on every device.

The reference interpreter re-derives everything per binding (shape expressions, dim binding,
argument checks). For compiled models that overhead dominates small kernels, so the executor
does that work once per call site: shape expressions become small closures, each kernel's dims are
read straight from known argument axes, outputs come from the memory plan's arenas, and the kernel
is started through the device's launcher (runtime/device.py `Runner`: a native call on the CPU, a
stream launch on CUDA). Inputs are checked once at entry, against the parameter types, and every
kernel argument's shape then follows from the verified types. A function of kernel calls, straight-line
or in loops of them, is recorded once per set of dims as a `Tape` (runtime/tape.py) and replayed (on
the CPU by one native call, runtime/native_replay.py); loops too long to unroll onto a tape, or walked
outside one, run as native loops (`Executor._native_loop`).
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlc.ir import arith
from mlc.ir.arith import prove_equal
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import to_numpy
from mlc.ir.expr import Bin, Const, Expr, Var, free_vars, substitute
from mlc.ir.graph import Block, CallTensor, Constant, Function, GetItem, If, Loop, MakeTuple, OpCall, Scalar
from mlc.ir.interp import Frame
from mlc.ir.memory_plan import MemoryPlan
from mlc.ir.tir import PrimFunc
from mlc.ir.types import ScalarType, TensorType, TupleType

from . import native_replay
from .tape import INPUT, OUTPUT, Tape, TapeEntry

IntFn = Callable[[dict[str, int]], int]
_OPS: dict[str, Callable[[int, int], int]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
    "floormod": operator.mod, "min": min, "max": max,
}


def compile_int(e: Expr) -> IntFn:
    """An integer shape expression as a closure over the dims dict (no eval)."""
    if isinstance(e, Const):
        v = int(e.value)
        return lambda _d: v
    if isinstance(e, Var):
        name = e.name
        return lambda d: d[name]
    if isinstance(e, Bin) and e.op in _OPS:
        f, a, b = _OPS[e.op], compile_int(e.a), compile_int(e.b)
        return lambda d: f(a(d), b(d))
    raise MlcError(f"shape expression {e!r} cannot be evaluated at run time")


@dataclass
class Site:
    """One `call_tensor` prepared: its kernel's launcher, output shapes, dim sources and checks."""

    launch: Callable[..., None]
    outs: list[tuple[list[IntFn], np.dtype]]
    getters: list[Callable[[list[Any], dict[str, int]], int]]
    check_dims: Callable[[list[Any], list[int]], None] | None


class Executor:
    """One graph function of a VM compiled to closures; `plan` None: fresh memory for every value
    (a nested `call_graph`, which must not share the caller's arenas)."""

    def __init__(self, vm: Any, fn: Function, plan: MemoryPlan | None):
        self.vm = vm
        self.runner = vm.runner
        self.fn = fn
        self.plan = plan
        self._param_index = {p.name: i for i, p in enumerate(fn.params)}
        # while recording: per launch (entry, [(position, buffer index)], buffers, input index per buffer)
        self._recording: list[tuple[TapeEntry, list[tuple[int, int]], list[Any], list[int]]] | None = None
        self._rec_outs: dict[int, Any] = {}
        self._rec_overflow = False  # the recording was given up (a loop too long to unroll into a tape)
        self.body = self._block(fn.body)
        # a function of kernel calls and constants, straight-line or in loops of such bindings, can be
        # replayed as a tape per dims: a loop's trip count is a function of the dims, so its iterations
        # are recorded unrolled, each with its own buffers (checks depend only on dims, the tape's key:
        # one that passed once passes on replay)
        self._replayable = self.runner.records and vm.library is not None and _tapeable(fn.body)
        self._loops = any(isinstance(b.node, Loop) for b in fn.body.bindings)
        self._sig_keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # argument shapes and dtypes -> tape key
        self._untaped: set[tuple[Any, ...]] = set()  # tape keys whose recording exceeded the limits
        self._in_place = native_replay.InPlace(vm.module, vm.library)  # window updates as in-place copies

    def invoke(self, args: list[Any]) -> list[Any]:
        """The body on these arguments."""
        return self.body(self._bind(args))

    def _bind(self, args: list[Any]) -> Frame:
        """The frame of a call, the arguments checked against the parameter types (binding the dims)."""
        frame = Frame()
        for p, a in zip(self.fn.params, args):
            self.runner.match(a, p.type, frame.dims, f"argument %{p.name} of @{self.fn.name}", p.loc)
            frame.values[p.name] = a
        return frame

    def run(self, args: list[Any]) -> list[Any]:
        """`invoke`, replaying the tape recorded for these dims where there is one."""
        runner, tapes = self.runner, self.vm.tapes
        if self._replayable and all([type(a) is np.ndarray for a in args]):
            # host arrays whose shapes and dtypes passed the parameter types once pass again, binding
            # the same dims: the tape is found without re-checking them
            key = self._sig_keys.get(tuple([(a.shape, a.dtype) for a in args]))
            tape = tapes.get(key) if key is not None else None
            if tape is not None and tape.generation == runner.generation:
                return self._replay(tape, args)
        frame = self._bind(args)
        if not self._replayable:
            return self.body(frame)
        key = (self.fn.name, tuple(sorted(frame.dims.items())))
        tape = tapes.get(key)
        if tape is not None and tape.generation == runner.generation:
            return self._replay(tape, args)
        if key in self._untaped:
            return self.body(frame)
        gen = runner.generation
        self._recording, self._rec_outs, self._rec_overflow = [], {}, False
        try:
            outs = self.body(frame)
        finally:
            rec, rec_outs, self._recording, self._rec_outs = self._recording, self._rec_outs, None, {}
        if gen == runner.generation:  # an arena or workspace that moved voids the recorded addresses
            keep = rec is not None and not self._rec_overflow and (not self._loops or _within_limits(rec))
            if keep and rec is not None:
                rec = self._in_place.tape(rec, rec_outs, outs)
            tape = self._tape(rec, rec_outs, args, outs, gen) if keep else None
            if tape is None:
                self._untaped.add(key)
            else:
                for k in [k for k, t in tapes.items() if t.generation != gen]:
                    del tapes[k]
                if len(tapes) < self.vm.MAX_TAPES:
                    tapes[key] = tape
                    if all(type(a) is np.ndarray for a in args) and len(self._sig_keys) < 64:
                        self._sig_keys[tuple((a.shape, a.dtype) for a in args)] = key
        return outs

    def _replay(self, tape: Tape, args: list[Any]) -> list[Any]:
        runner = self.runner
        # host arrays: their data pointer read from the array object (a.ctypes.data costs 1-3 us)
        address = native_replay.array_address if runner.host else runner.address
        if not runner.fresh_results:  # results are recorded buffers (or arguments): nothing to allocate
            tape.replay([address(a) for a in args], (), self.vm.timings)
            return [args[r[1]] if r[0] == "in" else r[1] for r in tape.results]
        fresh = [runner.alloc(r[2], r[3]) for r in tape.results if r[0] == "out"]
        play = getattr(runner, "replay_tape", None)  # a device with its own replay (CUDA graphs, cuda_vm.py)
        if play is not None:
            play(tape, args, fresh, self.vm.timings)
        else:
            tape.replay([address(a) for a in args], [address(o) for o in fresh], self.vm.timings)
        outs, it = [], iter(fresh)
        for r in tape.results:
            outs.append(args[r[1]] if r[0] == "in" else next(it) if r[0] == "out" else r[1])
        return outs

    def _tape(self, rec: list[tuple[TapeEntry, list[tuple[int, int]], list[Any], list[int]]],
              rec_outs: dict[int, Any], args: list[Any], outs: list[Any], generation: int) -> Tape | None:
        """The recorded launches as a `Tape`, None when a result is none of: a parameter, a constant,
        a kernel's output. Devices with `fresh_results` get new outputs per replay (patched in);
        the others reuse the recorded ones (`VM.run` copies them out)."""
        results: list[tuple[Any, ...]] = []
        out_slot: dict[int, int] = {}
        consts = self.vm.device_constants
        for r, v in zip(self.fn.body.results, outs):
            if r.name in self._param_index:
                results.append(("in", self._param_index[r.name]))
            elif id(v) in rec_outs and self.runner.fresh_results:
                out_slot[id(v)] = len(out_slot)
                results.append(("out", out_slot[id(v)], v.shape, v.dtype))
            elif id(v) in rec_outs or any(v is c for c in consts.values()):
                results.append(("fixed", v))
            else:
                return None
        entries = []
        for entry, positions, bufs, tags in rec:
            for pos, k in positions:
                if tags[k] >= 0:
                    entry.slots.append((pos, INPUT, tags[k]))
                elif id(bufs[k]) in out_slot:
                    entry.slots.append((pos, OUTPUT, out_slot[id(bufs[k])]))
            entry.keep = [b for k, b in enumerate(bufs) if tags[k] < 0 and id(b) not in out_slot]
            entries.append(entry)
        return Tape(entries, results, generation)

    def _block(self, block: Block) -> Callable[[Frame], list[Any]]:
        steps = [self._step(b) for b in block.bindings]
        results = [r.name for r in block.results]

        def run(frame: Frame) -> list[Any]:
            for step in steps:
                step(frame)
            return [frame.values[n] for n in results]

        return run

    def _step(self, b: Any) -> Callable[[Frame], None]:
        node = b.node
        if isinstance(node, CallTensor) and self.vm.library is not None:
            return self._kernel_step(b)
        if isinstance(node, Loop):
            return self._loop_step(b)
        if isinstance(node, If):
            return self._if_step(b)
        vm, runner, var, loc = self.vm, self.runner, b.var, b.loc
        scalar = isinstance(var.type, ScalarType)
        checked = not isinstance(node, Constant)  # constants are checked once, when uploaded

        def generic(frame: Frame) -> None:
            val = vm.node(node, var, frame)
            if checked:
                runner.match(val, var.type, frame.dims, f"%{var.name}", loc)
            frame.values[var.name] = val
            if scalar:
                frame.dims[var.name] = int(runner.to_host(val))

        return generic

    def _loop_step(self, b: Any) -> Callable[[Frame], None]:
        node: Loop = b.node
        body = self._block(node.body)
        extent = compile_int(node.extent)
        inits = [v.name for v in node.inits]
        carried = [v.name for v in node.carried]
        index, out = node.index.name, b.var.name
        native = self.runner.records and self.vm.library is not None and _native_loop_body(node)
        launches = sum(isinstance(x.node, CallTensor) for x in node.body.bindings)

        def step(frame: Frame) -> None:
            vals = [frame.values[n] for n in inits]
            sub = Frame(dict(frame.values), dict(frame.dims))
            trips, start = extent(frame.dims), 0
            rec = self._recording
            unroll = rec is None or len(rec) + trips * launches <= MAX_TAPE_ENTRIES
            if native and not unroll or rec is None:
                if native and self.vm.timings is None and trips >= 3:
                    vals, start = self._native_loop(node, body, sub, vals, trips)
            if not unroll and start < trips and self._recording is not None:
                self._recording, self._rec_overflow = None, True  # this run's tape could not be kept
            for i in range(start, trips):
                sub.values[index] = i
                sub.dims[index] = i
                for n, v in zip(carried, vals):
                    sub.values[n] = v
                vals = body(sub)
            frame.values[out] = vals[0] if len(vals) == 1 else tuple(vals)

        return step

    def _native_loop(self, node: Loop, body: Callable[[Frame], list[Any]], sub: Frame, vals: list[Any],
                     trips: int) -> tuple[list[Any], int]:
        """Run a loop of kernels natively: iterations 0 and 1 walk the body, recording its launches;
        the second recording, with the index-dependent dims patched per iteration (affine in the
        index: the difference of the two recordings is the step) and each yielded buffer copied
        into the carried one after the body, runs iterations 2.. in one native call. While a tape
        is being recorded, the loop goes on it as one entry (the inits copied in, then all trips).
        Returns the carried values and the next iteration for the walk (`trips` when the native
        loop ran)."""
        if not all(type(v) is np.ndarray for v in vals):
            return vals, 0
        outer, outer_outs = self._recording, self._rec_outs
        carry = [np.array(v, copy=True) for v in vals]  # the body reads these, its yields are copied back
        recs = []
        for t in (0, 1):
            sub.values[node.index.name] = t
            sub.dims[node.index.name] = t
            for v, c in zip(node.carried, carry):
                sub.values[v.name] = c
            self._recording, self._rec_outs = [], {}
            try:
                ys = body(sub)
            finally:
                rec, made, self._recording, self._rec_outs = self._recording, self._rec_outs, outer, outer_outs
            if not all(type(y) is np.ndarray and id(y) in made and y.shape == c.shape and y.dtype == c.dtype
                       for y, c in zip(ys, carry)):
                return ys, t + 1
            for c, y in zip(carry, ys):
                np.copyto(c, y)
            recs.append(rec)
        first, second = recs
        if len(first) != len(second) or any(a[0].name != b[0].name or a[0].native is None or b[0].native is None
                                            for a, b in zip(first, second)):
            return list(carry), 2
        patches = []
        for (e0, *_), (e1, *_) in zip(first, second):
            base = ctypes.addressof(e1.extra)
            for j, (v0, v1) in enumerate(zip(e0.extra, e1.extra)):
                if v0 != v1:
                    patches.append((base + 8 * j, v0, v1 - v0))
        copies = [_copy_entry(y, c) for y, c in zip(ys, carry)]
        second, copies, patches = self._in_place.loop(second, copies, ys, carry, patches, trips)
        prog = native_replay.program([e.native for e, *_ in second] + [e.native for e in copies])  # type: ignore[misc]
        failed = prog.run_loop(patches, 2, trips)
        if 0 <= failed < len(second) and second[failed][0].check is not None:
            second[failed][0].check()
        if outer is not None:
            self._record_loop(outer, sub, vals, carry, second, copies, prog, patches, trips)
        return list(carry), trips

    def _record_loop(self, outer: list[Any], sub: Frame, inits: list[Any], carry: list[Any], body: list[Any],
                     copies: list[TapeEntry], prog: Any, patches: list[tuple[int, int, int]], trips: int) -> None:
        """Put a native loop on the tape being recorded: the inits copied into the carried buffers,
        then the loop as one entry whose body launches have their own input slots."""
        params = self._args(sub)
        for init, c in zip(inits, carry):
            e = _copy_entry(init, c)
            tag = next((i for i, a in enumerate(params) if a is init), -1)
            outer.append((e, [(0, 0)], [init, c], [tag, -1]))
        inner = []
        for entry, positions, bufs, tags in body:
            entry.slots.extend((pos, INPUT, tags[k]) for pos, k in positions if tags[k] >= 0)
            entry.keep = bufs
            inner.append(entry)
        le = native_replay.loop_entry(prog, patches, 0, trips)

        def check() -> None:
            f = le.dims[4]
            if 0 < f <= len(inner) and inner[f - 1].check is not None:
                inner[f - 1].check()  # type: ignore[misc]

        entry = TapeEntry(le.fn, le.args, le.dims, [], "loop", check, native=le.native, inner=inner)
        keep = [le, *copies, *carry]
        outer.append((entry, [], keep, [-1] * len(keep)))
        for c in carry:
            self._rec_outs[id(c)] = c

    def _if_step(self, b: Any) -> Callable[[Frame], None]:
        node: If = b.node
        then_b, else_b = self._block(node.then_block), self._block(node.else_block)
        cond, out = node.cond.name, b.var.name
        to_host = self.runner.to_host

        def step(frame: Frame) -> None:
            sub = Frame(dict(frame.values), frame.dims)
            vals = (then_b if bool(np.asarray(to_host(frame.values[cond]))) else else_b)(sub)
            frame.values[out] = vals[0] if len(vals) == 1 else tuple(vals)

        return step

    def _kernel_step(self, b: Any) -> Callable[[Frame], None]:
        vm, runner, node, var, loc = self.vm, self.runner, b.node, b.var, b.loc
        single = not isinstance(var.type, TupleType)
        names = [a.name for a in node.args]
        tags = [self._param_index.get(n, -1) for n in names]
        out_name, func, plan = var.name, node.func, self.plan
        site: Site | None = None

        def step(frame: Frame) -> None:
            nonlocal site
            if site is None:
                site = self._prepare(b)
            vals, dims = frame.values, frame.dims
            bufs = runner.prepare_args([vals[n] for n in names], func, loc)
            if single:
                fns, dt = site.outs[0]
                outs = [vm.buffer(out_name, tuple(f(dims) for f in fns), dt, plan)]
            else:
                outs = [runner.alloc(tuple(f(dims) for f in fns), dt) for fns, dt in site.outs]
            bufs.extend(outs)
            kd = [g(bufs, dims) for g in site.getters]
            if site.check_dims is not None:
                site.check_dims(bufs, kd)
            rec = self._recording
            if rec is None:
                site.launch(bufs, kd, vm.timings, None)
            else:
                buf_tags = [t if t >= 0 else next((i for i, a in enumerate(self._args(frame)) if a is x), -1)
                            for t, x in zip(tags, bufs)] + [-1] * len(outs)
                site.launch(bufs, kd, vm.timings, lambda e, pos: rec.append((e, pos, bufs, buf_tags)))
                for o in outs:
                    self._rec_outs[id(o)] = o
            vals[out_name] = outs[0] if single else tuple(outs)

        return step

    def _args(self, frame: Frame) -> list[Any]:
        return [frame.values[p.name] for p in self.fn.params]

    def _prepare(self, b: Any) -> Site:
        """Per call site, once: the kernel's launcher, output shape closures, where each kernel dim
        comes from, and the argument dims the graph types do not prove."""
        vm, node, var, loc = self.vm, b.node, b.var, b.loc
        try:
            prim = vm.module.get(node.func)
        except KeyError:
            raise MlcError(f"no tensor program @{node.func} in the module", node.loc) from None
        if not isinstance(prim, PrimFunc):
            raise MlcError(f"@{node.func} is not a tensor program", node.loc)
        out_types = var.type.fields if isinstance(var.type, TupleType) else (var.type,)
        outs = []
        for t in out_types:
            if not isinstance(t, TensorType) or t.shape is None:
                raise MlcError(f"call_tensor result needs a known tensor shape, got {t}", node.loc)
            outs.append(([compile_int(arith.simplify(d)) for d in t.shape], to_numpy(t.dtype)))
        kernel = vm.library.kernel(node.func)
        shapes = kernel.param_shapes
        # where each kernel dim comes from: an axis of an argument, or an explicit scalar
        scalar_fns = {p.name: compile_int(arith.simplify(e)) for p, e in zip(prim.scalar_params, node.sym_args)}
        getters: list[Callable[[list[Any], dict[str, int]], int]] = []
        for dname in kernel.dims:
            src = next(((i, ax) for i, shape in enumerate(shapes) for ax, d in enumerate(shape)
                        if isinstance(d, Var) and d.name == dname), None)
            if src is not None:
                i, ax = src
                getters.append(lambda arrs, _d, i=i, ax=ax: arrs[i].shape[ax])
            elif dname in scalar_fns:
                f = scalar_fns[dname]
                getters.append(lambda _a, d, f=f: f(d))
            else:
                raise MlcError(f"kernel {node.func}: value of {dname} not given and not a buffer dim", node.loc)
        checks = _unproven_dims(node, list(out_types), kernel.dims, shapes)
        return Site(vm.runner.launcher(kernel, node.func, loc), outs, getters,
                    _dim_checker(checks, kernel.dims, node, loc) if checks else None)


def _copy_entry(src: np.ndarray, dst: np.ndarray) -> TapeEntry:
    """A launch of the native copy `src` -> `dst` (a loop-carried value)."""
    args, dims = (ctypes.c_void_p * 2)(src.ctypes.data, dst.ctypes.data), (ctypes.c_int64 * 1)(dst.nbytes)
    return TapeEntry(native_replay.copy_fn(), args, dims, [], "copy",
                     native=(native_replay.copy_entry(), ctypes.addressof(args), ctypes.addressof(dims), 0))


MAX_TAPE_ENTRIES = 4096  # launches in one tape (loops recorded unrolled): longer runs walk the graph
MAX_TAPE_BYTES = 64 << 20  # bytes of per-iteration buffers a tape may keep alive


def _tapeable(block: Block) -> bool:
    """Kernel calls, constants, checks and index arithmetic (`scalar`: a function of the dims and
    loop indices, which key the tape) only, directly or in the bodies of loops."""
    return all(
        isinstance(b.node, Constant | GetItem | MakeTuple | CallTensor | Scalar)
        or (isinstance(b.node, OpCall) and (b.node.op == "check" or not b.node.args))
        or (isinstance(b.node, Loop) and _tapeable(b.node.body))
        for b in block.bindings
    )


def _native_loop_body(node: Loop) -> bool:
    """A loop body that `Executor._native_loop` can run: kernel calls and constants only, every
    shape free of the index, every kernel scalar affine in it (so two recordings give its step).
    Index arithmetic (`scalar`, e.g. a backward loop's T - 1 - t) is substituted into the kernel
    scalars that use it; walking iterations 0 and 1 evaluates it, the patches do the rest."""
    name = node.index.name
    subs: dict[Var, Expr] = {}
    for b in node.body.bindings:
        if isinstance(b.node, Scalar):
            e = substitute(b.node.value, subs)
            if not _affine(e, name):
                return False
            subs[Var(b.var.name, getattr(b.var.type, "dtype", "i64"))] = e
            continue
        if not isinstance(b.node, Constant | GetItem | MakeTuple | CallTensor):
            return False
        types = b.var.type.fields if isinstance(b.var.type, TupleType) else (b.var.type,)
        for t in types:
            if not isinstance(t, TensorType) or t.shape is None \
                    or any(_mentions(substitute(d, subs), name) for d in t.shape):
                return False
        if isinstance(b.node, CallTensor) and not all(_affine(substitute(e, subs), name) for e in b.node.sym_args):
            return False
    return all(isinstance(v.type, TensorType) for v in node.carried)


def _mentions(e: Expr, name: str) -> bool:
    return any(v.name == name for v in free_vars(e))


def _affine(e: Expr, name: str) -> bool:
    """`e` is a + b * name with a, b free of `name`."""
    if not _mentions(e, name):
        return True
    if isinstance(e, Var):
        return True
    if isinstance(e, Bin) and e.op in ("add", "sub"):
        return _affine(e.a, name) and _affine(e.b, name)
    if isinstance(e, Bin) and e.op == "mul":
        return (not _mentions(e.a, name) and _affine(e.b, name)) or (not _mentions(e.b, name) and _affine(e.a, name))
    return False


def _within_limits(rec: list[tuple[TapeEntry, list[tuple[int, int]], list[Any], list[int]]]) -> bool:
    """A recording small enough to keep: its launches and the distinct buffers it holds."""
    if len(rec) > MAX_TAPE_ENTRIES:
        return False
    seen: dict[int, int] = {}
    for _entry, _pos, bufs, _tags in rec:
        for b in bufs:
            base = b.base if getattr(b, "base", None) is not None else b
            seen[id(base)] = int(getattr(base, "nbytes", 0))
    return sum(seen.values()) <= MAX_TAPE_BYTES


def _unproven_dims(node: CallTensor, out_types: list[Any], dims: Any,
                   shapes: list[tuple[Expr, ...]]) -> list[tuple[int, int, Expr]]:
    """Kernel argument dims the graph types do not prove; they are checked at every call.

    The kernel's dims are bound from argument axes; every other axis of its params must then
    equal the param's shape expression. Where the graph's types make that provable (the usual
    case after shape-infer), no run-time check is needed.
    """
    types = [a.type for a in node.args] + list(out_types)
    graph_dim: dict[str, Expr] = {}
    for dname in dims:
        for i, shape in enumerate(shapes):
            for ax, d in enumerate(shape):
                if isinstance(d, Var) and d.name == dname and dname not in graph_dim:
                    t = types[i]
                    if isinstance(t, TensorType) and t.shape is not None and ax < len(t.shape):
                        graph_dim[dname] = t.shape[ax]
    out: list[tuple[int, int, Expr]] = []
    for i, shape in enumerate(shapes):
        t = types[i]
        if not isinstance(t, TensorType) or t.shape is None or len(t.shape) != len(shape):
            out.extend((i, ax, d) for ax, d in enumerate(shape))
            continue
        for ax, d in enumerate(shape):
            want = substitute(d, {Var(k): v for k, v in graph_dim.items()})
            if not prove_equal(want, t.shape[ax]):
                out.append((i, ax, d))
    return out


def _dim_checker(checks: list[tuple[int, int, Expr]], dim_names: Any, node: CallTensor,
                 loc: Any) -> Callable[[list[Any], list[int]], None]:
    fns = [(i, ax, compile_int(d), d) for i, ax, d in checks]
    names = [a.name for a in node.args] + ["result"] * 8

    def check(arrs: list[Any], kd: list[int]) -> None:
        env = dict(zip(dim_names, kd))
        for i, ax, f, d in fns:
            shape = arrs[i].shape
            want, got = f(env), shape[ax] if ax < len(shape) else None
            if want != got:
                raise MlcError(f"@{node.func}: %{names[i]} dim {ax} is {got}, but the kernel needs {d!r} = {want}", loc)

    return check
