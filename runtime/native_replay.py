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
from mlc.codegen.cpu import host_target, init_llvm

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

    def run(self) -> int:
        return int(_native()["replay"](ctypes.addressof(self.records), self.count))

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
    return NativeProgram((ctypes.c_uint64 * max(1, len(flat)))(*flat), len(entries))


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
