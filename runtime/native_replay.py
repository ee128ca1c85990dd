"""A recorded tape replayed by one native call: no Python per kernel.

A tape (runtime/tape.py) of CPU kernel launches is a list of (entry point, argument pointer array,
dims array, index-error slot). Replaying it from Python costs a ctypes call per kernel (~1 us, as much
as a small kernel), so small models and unrolled recurrent loops were dominated by it. Here the
entries are written once into a flat array of `{fn, args, dims, err}` records and a dozen lines of
LLVM IR, compiled once per process, call them in order. The argument arrays are the tape's own, so
the input and output addresses patched into them per call are what the native loop reads. After a
kernel that checks indices the loop reads its error slot and stops at the first failure, returning
that entry's position, so the caller raises the same located error the Python replay does.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llvmlite.binding as llvm
import numpy as np
from mlc.codegen.cpu import host_target, init_llvm
from mlc.ir import arith
from mlc.ir.expr import Bin, Const, Load, Select, Var, free_vars
from mlc.ir.flatten import unflatten_func
from mlc.ir.tir import For, IfStmt, Let, PrimFunc, Store
from mlc.ir.tir_visit import conjuncts, nodes, simp, stores_in

_IR = r"""
define i64 @mlc_replay(ptr %prog, i64 %n) {
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %done, label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %cont]
  %pf = getelementptr [4 x ptr], ptr %prog, i64 %i, i64 0
  %fn = load ptr, ptr %pf
  %pa = getelementptr [4 x ptr], ptr %prog, i64 %i, i64 1
  %args = load ptr, ptr %pa
  %pd = getelementptr [4 x ptr], ptr %prog, i64 %i, i64 2
  %dims = load ptr, ptr %pd
  %pe = getelementptr [4 x ptr], ptr %prog, i64 %i, i64 3
  %err = load ptr, ptr %pe
  call void %fn(ptr %args, ptr %dims)
  %has = icmp ne ptr %err, null
  br i1 %has, label %chk, label %cont
chk:
  %e = load volatile i64, ptr %err
  %bad = icmp ne i64 %e, 0
  br i1 %bad, label %fail, label %cont
fail:
  ret i64 %i
cont:
  %next = add i64 %i, 1
  %more = icmp slt i64 %next, %n
  br i1 %more, label %loop, label %done
done:
  ret i64 -1
}
"""

_LOOP_IR = r"""
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)

; an entry of the kernel ABI that copies args[0] to args[1], dims[0] bytes: a loop-carried value
define void @mlc_copy(ptr %args, ptr %dims) {
  %src = load ptr, ptr %args
  %pd = getelementptr ptr, ptr %args, i64 1
  %dst = load ptr, ptr %pd
  %n = load i64, ptr %dims
  call void @llvm.memcpy.p0.p0.i64(ptr %dst, ptr %src, i64 %n, i1 false)
  ret void
}

; iterations t0..t1 of a program: before each, every patch {i64* slot, base, step} gets base + step * t
define i64 @mlc_replay_loop(ptr %prog, i64 %n, ptr %patches, i64 %np, i64 %t0, i64 %t1) {
entry:
  %go = icmp slt i64 %t0, %t1
  br i1 %go, label %iter, label %done
iter:
  %t = phi i64 [%t0, %entry], [%tn, %next]
  %hp = icmp sgt i64 %np, 0
  br i1 %hp, label %patch, label %run
patch:
  %j = phi i64 [0, %iter], [%jn, %patch]
  %ps = getelementptr [3 x i64], ptr %patches, i64 %j, i64 0
  %slot = load ptr, ptr %ps
  %pb = getelementptr [3 x i64], ptr %patches, i64 %j, i64 1
  %base = load i64, ptr %pb
  %pst = getelementptr [3 x i64], ptr %patches, i64 %j, i64 2
  %step = load i64, ptr %pst
  %m = mul i64 %step, %t
  %v = add i64 %base, %m
  store i64 %v, ptr %slot
  %jn = add i64 %j, 1
  %jm = icmp slt i64 %jn, %np
  br i1 %jm, label %patch, label %run
run:
  %r = call i64 @mlc_replay(ptr %prog, i64 %n)
  %bad = icmp sge i64 %r, 0
  br i1 %bad, label %fail, label %next
fail:
  ret i64 %r
next:
  %tn = add i64 %t, 1
  %more = icmp slt i64 %tn, %t1
  br i1 %more, label %iter, label %done
done:
  ret i64 -1
}
"""

_ENTRY_IR = r"""
; a whole loop as one entry of the kernel ABI, so it can sit in a program (a tape) of its own:
; args = {program, patches}, dims = {entries, patches, begin, end, failed}; failed = 0, or 1 + the
; position of the body entry whose check failed (the outer replay reads it as this entry's error slot)
define void @mlc_loop_entry(ptr %args, ptr %dims) {
  %prog = load ptr, ptr %args
  %pp = getelementptr ptr, ptr %args, i64 1
  %patches = load ptr, ptr %pp
  %n = load i64, ptr %dims
  %p1 = getelementptr i64, ptr %dims, i64 1
  %np = load i64, ptr %p1
  %p2 = getelementptr i64, ptr %dims, i64 2
  %t0 = load i64, ptr %p2
  %p3 = getelementptr i64, ptr %dims, i64 3
  %t1 = load i64, ptr %p3
  %r = call i64 @mlc_replay_loop(ptr %prog, i64 %n, ptr %patches, i64 %np, i64 %t0, i64 %t1)
  %f = add i64 %r, 1
  %p4 = getelementptr i64, ptr %dims, i64 4
  store volatile i64 %f, ptr %p4
  ret void
}
"""

_REPLAY_CFUNC = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)
_ENTRY_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_LOOP_CFUNC = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_int64)


@dataclass
class NativeProgram:
    """The entry records of one tape; `run()` -> -1, or the position of the entry whose check failed."""

    records: ctypes.Array  # type: ignore[type-arg]
    count: int
    address: int  # of the records, kept so a run makes no ctypes.addressof call
    replay: Any  # the native replay loop

    def run(self) -> int:
        return int(self.replay(self.address, self.count))

    def run_loop(self, patches: Sequence[tuple[int, int, int]], begin: int, end: int) -> int:
        """Iterations `begin..end` of the program, each after writing `base + step * t` to every
        patch's i64 slot (the dims that depend on the loop index); -1, or the failed entry's position."""
        flat = (ctypes.c_int64 * max(1, 3 * len(patches)))(*[v for p in patches for v in p])
        return int(_native()["loop"](ctypes.addressof(self.records), self.count, ctypes.addressof(flat),
                                     len(patches), begin, end))


@dataclass
class LoopEntry:
    """A native loop as one kernel-ABI entry (`mlc_loop_entry`): `args`/`dims` are its arrays;
    dims[4] is its error slot (0, or 1 + the failed body entry)."""

    program: NativeProgram
    patch_array: ctypes.Array  # type: ignore[type-arg]
    args: ctypes.Array  # type: ignore[type-arg]
    dims: ctypes.Array  # type: ignore[type-arg]
    fn: Any

    @property
    def native(self) -> tuple[int, int, int, int]:
        return (int(_native()["entry"]), ctypes.addressof(self.args), ctypes.addressof(self.dims),
                ctypes.addressof(self.dims) + 4 * 8)


def loop_entry(prog: NativeProgram, patches: Sequence[tuple[int, int, int]], begin: int, end: int) -> LoopEntry:
    """Iterations `begin..end` of `prog` (patched as in `run_loop`) as one entry of a program."""
    flat = (ctypes.c_int64 * max(1, 3 * len(patches)))(*[v for p in patches for v in p])
    args = (ctypes.c_void_p * 2)(ctypes.addressof(prog.records), ctypes.addressof(flat))
    dims = (ctypes.c_int64 * 5)(prog.count, len(patches), begin, end, 0)
    return LoopEntry(prog, flat, args, dims, _ENTRY_CFUNC(int(_native()["entry"])))


def copy_fn() -> Any:
    """The copy entry as a callable `(args, dims)`, for a replay that calls entries one by one."""
    return _ENTRY_CFUNC(copy_entry())


def copy_entry() -> int:
    """The address of the native `copy(args = {src, dst}, dims = {bytes})` entry."""
    return int(_native()["copy"])


def program(entries: Sequence[tuple[int, int, int, int]]) -> NativeProgram:
    """(entry point, argument array, dims array, error slot or 0) addresses -> a native program."""
    flat = [a for e in entries for a in e]
    records = (ctypes.c_uint64 * max(1, len(flat)))(*flat)
    return NativeProgram(records, len(entries), ctypes.addressof(records), _native()["replay"])


def _data_field() -> int | None:
    """The byte offset of an ndarray object's data pointer (the `data` field of numpy's
    PyArrayObject_fields, what its C macro PyArray_DATA reads), confirmed against `ctypes.data` on
    probe arrays (views at an offset included); None when the layout differs."""
    base = np.arange(40, dtype=np.float32).reshape(5, 8)
    probes = [base, base[1:], base[2:, 3:], np.zeros(0, np.int64), np.ones((3, 1), np.float64)]
    for off in (16, 24):
        if all(ctypes.c_uint64.from_address(id(a) + off).value == a.ctypes.data for a in probes):
            return off
    return None


_DATA_AT = _data_field()
_word_at = ctypes.c_uint64.from_address


def array_address(a: np.ndarray) -> int:
    """`a.ctypes.data`, read straight from the array object (0.2 us instead of 1-3 us: the entry of a
    replayed tape takes one per input)."""
    if _DATA_AT is not None and type(a) is np.ndarray:
        return int(_word_at(id(a) + _DATA_AT).value)
    return int(a.ctypes.data)


_lock = threading.Lock()
_state: dict[str, Any] = {}


def _native() -> dict[str, Any]:
    """The replay loops, compiled on first use (once per process)."""
    if "replay" not in _state:
        with _lock:
            if "replay" not in _state:
                init_llvm()
                target = host_target()
                mod = llvm.parse_assembly(_IR + _LOOP_IR + _ENTRY_IR)
                mod.triple = target.triple
                mod.verify()
                engine = llvm.create_mcjit_compiler(mod, target.target_machine(2))
                engine.finalize_object()
                _state["engine"] = engine  # owns the code: kept for the process
                _state["copy"] = engine.get_function_address("mlc_copy")
                _state["entry"] = engine.get_function_address("mlc_loop_entry")
                _state["loop"] = _LOOP_CFUNC(engine.get_function_address("mlc_replay_loop"))
                _state["replay"] = _REPLAY_CFUNC(engine.get_function_address("mlc_replay"))
    return _state


# ---- window updates in place --------------------------------------------------------------------
# A recurrent loop writes step t into its output with `dynamic_update_slice`: a kernel that copies the
# whole base tensor with one window replaced. Unrolled onto a tape, or run as a native loop, that is
# O(S) bytes per step, O(S^2) per sequence (seq2seq at S=64: most of its time). Where the base is dead
# after the update (nothing later reads it, and it is this run's own buffer), the launch becomes a
# native copy of the window into the base, and later launches read the base where they read the
# kernel's output.


@dataclass(frozen=True)
class WindowUpdate:
    """A kernel computing `out = base` except rows `s .. s + width` of axis 0, which are `update`."""

    update: int  # parameter positions
    base: int
    out: int
    start: int  # position of `s` in the kernel's dims
    width: int


def window_update(func: PrimFunc, dims: Sequence[str]) -> WindowUpdate | None:
    """The loop-level program as a window update, or None: one store `out[i] = select(s <= i0 < s + w,
    U[.., i1, ..], base[i])`, under loops, lets and the guards of split loops (a kernel computes its
    whole output, so every element is written once)."""
    nd = unflatten_func(func)  # read per dimension, through the flat views lower-tir declared
    if nd is None:
        return None
    func = nd
    if func.num_outputs != 1 or any(not isinstance(x, For | Let | Store | IfStmt) or isinstance(x, IfStmt) and x.orelse
                                    for x in nodes(func.body)):
        return None
    st = stores_in(func.body)
    out = func.params[-1]
    if len(st) != 1 or st[0].buffer.name != out.name or not isinstance(st[0].value, Select):
        return None
    idx, sel = st[0].indices, st[0].value
    pos = {b.name: k for k, b in enumerate(func.params[:-1])}
    base, upd = sel.f, sel.t
    if not (idx and all(isinstance(i, Var) for i in idx) and len(set(idx)) == len(idx)
            and isinstance(base, Load) and base.indices == idx and isinstance(upd, Load)
            and base.buffer.name in pos and upd.buffer.name in pos and base.buffer.name != upd.buffer.name
            and base.buffer.dtype == out.dtype == upd.buffer.dtype and base.buffer.shape == out.shape):
        return None
    terms = conjuncts(sel.cond)
    if len(terms) != 2 or not all(isinstance(t, Bin) and isinstance(t.b, Const) for t in terms):
        return None
    lo, hi = sorted(terms, key=lambda t: t.op)  # type: ignore[attr-defined]
    assert isinstance(lo, Bin) and isinstance(hi, Bin)
    width = arith.as_int(hi.b)
    if lo.op != "ge" or arith.as_int(lo.b) != 0 or hi.op != "lt" or width is None or width < 1 \
            or arith.as_int(simp(lo.a - hi.a)) != 0:
        return None
    rel = lo.a  # i0 - s
    shift = simp(rel - idx[0])
    scalars = {p.name for p in func.scalar_params}
    s = next(iter(free_vars(shift)), None)
    if s is None or len(free_vars(shift)) != 1 or s.name not in scalars or s.name not in dims \
            or arith.as_int(simp(shift + s)) != 0:
        return None
    ui = list(upd.indices)
    while len(ui) > len(idx) - 1 and arith.as_int(ui[0]) == 0 and not (len(ui) == len(idx) and width > 1):
        ui.pop(0)
    tail = tuple(ui[1:]) if len(ui) == len(idx) else tuple(ui)
    if tail != idx[1:] or (len(ui) == len(idx) and arith.as_int(simp(ui[0] - rel)) != 0) \
            or (len(ui) != len(idx) and width != 1):
        return None
    return WindowUpdate(pos[upd.buffer.name], pos[base.buffer.name], len(func.params) - 1,
                        list(dims).index(s.name), width)


Launch = tuple[Any, list[tuple[int, int]], list[Any], list[int]]  # (TapeEntry, [(arg position, buffer)], buffers, input tags)


def _span(a: Any) -> tuple[int, int]:
    return (int(a.ctypes.data), int(a.ctypes.data) + int(a.nbytes))


def _overlap(a: Any, b: Any) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


class InPlace:
    """Window updates of recorded launches turned into in-place copies (see above), for one module."""

    def __init__(self, module: Any, library: Any):
        self.module, self.library = module, library
        self._plans: dict[str, WindowUpdate | None] = {}

    def plan(self, name: str) -> WindowUpdate | None:
        if name not in self._plans:
            try:
                func = self.module.get(name)
                dims = self.library.kernel(name).dims
            except (KeyError, AttributeError):
                func = None
            self._plans[name] = window_update(func, dims) if isinstance(func, PrimFunc) else None
        return self._plans[name]

    def tape(self, rec: list[Launch], owned: Any, results: Sequence[Any]) -> list[Launch]:
        """A straight-line recording: a base qualifies if a launch of it made it (`owned`: ids) and it
        is no result."""
        out, _ = self._rewrite(rec, lambda b: id(b) in owned and not any(
            type(r) is np.ndarray and _overlap(r, b) for r in results), list(results), {}, 1)
        return out

    def loop(self, body: list[Launch], copies: list[Any], ys: Sequence[Any], carry: Sequence[Any],
             patches: list[tuple[int, int, int]], trips: int) -> tuple[list[Launch], list[Any], list[tuple[int, int, int]]]:
        """A native loop's body (iterations 0..trips, index-dependent dims `patches`), followed by the
        copies of its yields `ys` into the carried buffers: a base qualifies if it is carried and the
        update's output is what is copied into it."""
        tail = [(c, [(0, 0), (1, 1)], [y, k], [-1, -1]) for c, y, k in zip(copies, ys, carry)]
        by_carry = {id(k): y for y, k in zip(ys, carry)}
        patch = {slot: (b, st) for slot, b, st in patches}
        rec, done = self._rewrite(body + tail, lambda b: id(b) in by_carry, [], patch, trips,
                                  lambda b, o: by_carry.get(id(b)) is o)
        if not done:
            return body, copies, patches
        dropped = {id(e) for e, *_ in rec[len(body):] if _self_copy(e)}
        new_copies = [c for c, *_ in rec[len(body):] if id(c) not in dropped]
        dead = [_span_of_array(e.extra) for e in done]
        kept = [(s, b, st) for s, (b, st) in patch.items() if not any(a <= s < z for a, z in dead)]
        return rec[:len(body)], new_copies, kept

    def _rewrite(self, rec: list[Launch], may: Any, results: list[Any], patch: dict[int, tuple[int, int]],
                 trips: int, carried_as: Any = None) -> tuple[list[Launch], list[Any]]:
        rec = [(e, list(p), list(b), list(t)) for e, p, b, t in rec]
        done: list[Any] = []
        for i, (e, _positions, bufs, tags) in enumerate(rec):
            wu = self.plan(e.name) if e.native is not None and not is_copy(e) else None
            if wu is None or not all(type(b) is np.ndarray for b in bufs):
                continue
            base, upd, out = bufs[wu.base], bufs[wu.update], bufs[wu.out]
            if not (may(base) and (carried_as is None or carried_as(base, out)) and _window_ok(base, upd, out, wu)):
                continue
            if any(type(r) is np.ndarray and _overlap(r, out) for r in results):
                continue
            row = base.nbytes // base.shape[0]
            slot = ctypes.addressof(e.extra) + 8 * wu.start
            s0, step = patch.get(slot, (int(e.extra[wu.start]), 0))
            last = s0 + step * (trips - 1)
            if min(s0, last) < 0 or max(s0, last) + wu.width > base.shape[0]:
                continue
            if not _dead_after(rec, i, base, out):
                continue
            args = (ctypes.c_void_p * 2)(upd.ctypes.data, base.ctypes.data + s0 * row)
            dims = (ctypes.c_int64 * 1)(wu.width * row)
            from .tape import TapeEntry  # tape imports this module

            copy = TapeEntry(copy_fn(), args, dims, [], e.name, native=(copy_entry(), ctypes.addressof(args),
                                                                          ctypes.addressof(dims), 0), keep=(args, dims))
            if step:
                patch[ctypes.addressof(args) + 8] = (base.ctypes.data + s0 * row, step * row)
            rec[i] = (copy, [(0, 0)], [upd, base], [tags[wu.update], -1])
            for e2, positions, bufs2, _ in rec[i + 1:]:
                for pos, k in positions:
                    if bufs2[k] is out:
                        e2.args[pos] = base.ctypes.data
                        bufs2[k] = base
            done.append(e)
        return rec, done


def _window_ok(base: np.ndarray, upd: np.ndarray, out: np.ndarray, wu: WindowUpdate) -> bool:
    """The buffers as the plan needs them: contiguous, the update exactly the window's rows."""
    if base.shape != out.shape or base.dtype != out.dtype or upd.dtype != base.dtype or not base.shape:
        return False
    if not (base.flags.c_contiguous and upd.flags.c_contiguous and out.flags.c_contiguous):
        return False
    shape = list(upd.shape)
    while len(shape) > base.ndim - 1 and shape[0] == 1 and not (len(shape) == base.ndim and wu.width > 1):
        shape.pop(0)
    want = (wu.width, *base.shape[1:]) if len(shape) == base.ndim else base.shape[1:] if wu.width == 1 else None
    return tuple(shape) == want and not _overlap(upd, base) and not _overlap(out, base)


def _dead_after(rec: list[Launch], i: int, base: np.ndarray, out: np.ndarray) -> bool:
    """Nothing after launch `i` reads `base` (but a copy of `out` into it, which becomes a no-op), and
    until the last use of `out` no other buffer shares `base`'s memory (a memory plan reuses it)."""
    last = max((j for j in range(i + 1, len(rec)) if any(b is out for b in rec[j][2])), default=i)
    for j in range(i + 1, len(rec)):
        e, _, bufs, _ = rec[j]
        if is_copy(e) and len(bufs) == 2 and bufs[0] is out and bufs[1] is base:
            continue
        for b in [*bufs, *(b for x in e.inner for b in (x.keep if isinstance(x.keep, list) else []))]:
            if b is base:
                return False
            if j <= last and b is not out and type(b) is np.ndarray and _overlap(b, base):
                return False
    return True


def is_copy(e: Any) -> bool:
    """A launch of the native copy (a loop-carried value, or a window update done in place, which keeps
    the name of the kernel it stands for so that profiles count that kernel's calls)."""
    return e.native is not None and e.native[0] == copy_entry()


def _self_copy(e: Any) -> bool:
    return is_copy(e) and e.args[0] == e.args[1]


def _span_of_array(a: Any) -> tuple[int, int]:
    return ctypes.addressof(a), ctypes.addressof(a) + ctypes.sizeof(a)
