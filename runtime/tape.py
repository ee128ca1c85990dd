"""One tape for every device: the kernel launches of a straight-line run, replayed for later calls
with the same dims.

Recording a run fixes everything but the addresses of its inputs (and, where a device allocates
them per call, its outputs): each launch keeps its argument values, and the slots that name an
input or an output are patched per replay. The graph walk, shape closures and dim binding of a
normal run disappear. The CPU executor (executor.py) and the CUDA VM (cuda_vm.py) record into it.
Entries with a native form (CPU kernels, native copies and loops) are replayed by one native call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from . import native_replay

INPUT, OUTPUT = 0, 1


@dataclass
class TapeEntry:
    """One launch: `fn(args, extra)`; `slots` are (argument position, INPUT or OUTPUT, index) to patch."""

    fn: Callable[[Any, Any], None]
    args: Any  # a mutable sequence of argument values (a ctypes pointer array, a list)
    extra: Any  # what else the launch takes, fixed (the dims array, the grid and stream)
    slots: list[tuple[int, int, int]]
    name: str  # the kernel, for profiles
    check: Callable[[], None] | None = None  # raises the error of a failed index check, if the kernel checks
    keep: Any = None  # keeps alive what the recorded addresses point to
    native: tuple[int, int, int, int] | None = None  # (entry, args, dims, error slot or 0) addresses, CPU only
    inner: list[TapeEntry] = field(default_factory=list)  # a native loop's body launches (patched, not called)


@dataclass
class Tape:
    """The launches of one run; `results` says, in the device's terms, what the run returns."""

    entries: list[TapeEntry]
    results: Any
    generation: int = 0  # the device's memory generation when recorded (moved arenas void a tape)
    keep: Any = field(default=None, repr=False)
    program: Any = field(default=None, repr=False)  # the native program of an all-native tape, built on first replay
    patches: list[tuple[Any, int, int, int]] = field(default_factory=list, repr=False)  # (args, position, source, index)

    def replay(self, inputs: Sequence[int], outputs: Sequence[int] = (),
               timings: dict[str, list[float]] | None = None, settle: Callable[[], None] | None = None) -> None:
        """Every launch again, with the addresses of this call's inputs and outputs patched in: in one
        native call where every entry has a native form (runtime/native_replay.py), else one by one
        (and always one by one while profiling, to time each kernel; `settle` waits for an
        asynchronous device inside each timed launch)."""
        sources = (inputs, outputs)
        if timings is None and self.program is None and self.entries and all(e.native is not None for e in self.entries):
            self.program = native_replay.program([e.native for e in self.entries])  # type: ignore[misc]
            self.patches = [(e.args, pos, which, k) for e in _flat(self.entries) for pos, which, k in e.slots]
        if timings is None and self.program is not None:
            for args, pos, which, k in self.patches:
                args[pos] = sources[which][k]
            failed = self.program.run()
            if failed >= 0:
                check = self.entries[failed].check
                if check is not None:
                    check()
            return
        for e in self.entries:
            for x in _flat([e]):
                for pos, which, k in x.slots:
                    x.args[pos] = sources[which][k]
            args = e.args
            if timings is None:
                e.fn(args, e.extra)
            else:
                if settle is not None:
                    settle()  # the work queued before this launch is not its time
                t0 = perf_counter()
                e.fn(args, e.extra)
                if settle is not None:
                    settle()
                timings.setdefault(e.name, []).append(perf_counter() - t0)
            if e.check is not None:
                e.check()


def _flat(entries: list[TapeEntry]) -> list[TapeEntry]:
    """The entries with the body launches of their loops, whose argument slots are patched too."""
    out: list[TapeEntry] = []
    for e in entries:
        out.append(e)
        out.extend(_flat(e.inner))
    return out
