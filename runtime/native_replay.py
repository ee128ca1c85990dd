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

_REPLAY_CFUNC = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)


@dataclass
class NativeProgram:
    """The entry records of one tape; `run()` -> -1, or the position of the entry whose check failed."""

    records: ctypes.Array  # type: ignore[type-arg]
    count: int

    def run(self) -> int:
        return int(_replayer()(ctypes.addressof(self.records), self.count))


def program(entries: Sequence[tuple[int, int, int, int]]) -> NativeProgram:
    """(entry point, argument array, dims array, error slot or 0) addresses -> a native program."""
    flat = [a for e in entries for a in e]
    return NativeProgram((ctypes.c_uint64 * max(1, len(flat)))(*flat), len(entries))


_lock = threading.Lock()
_state: dict[str, object] = {}


def _replayer() -> ctypes._CFuncPtr:
    fn = _state.get("fn")
    if fn is None:
        with _lock:
            fn = _state.get("fn")
            if fn is None:
                init_llvm()
                target = host_target()
                mod = llvm.parse_assembly(_IR)
                mod.triple = target.triple
                mod.verify()
                engine = llvm.create_mcjit_compiler(mod, target.target_machine(2))
                engine.finalize_object()
                fn = _REPLAY_CFUNC(engine.get_function_address("mlc_replay"))
                _state["engine"], _state["fn"] = engine, fn  # the engine owns the code: keep it
    return fn  # type: ignore[return-value]
