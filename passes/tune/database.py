"""The tuning database: JSON lines of measured schedules, keyed by workload + target + mlc version.

A workload's key is the sha256 of its printed (unscheduled) PrimFunc with the function name
removed, so the same program from two models shares records. The file is append-only (one
record per line, flushed as measured), which makes an interrupted run resumable. A kill mid-write
can leave a torn last line: loading ignores it with a warning (every earlier record is kept), and
the next append cuts it off first, so it never becomes a malformed line in the middle of the file.
Only one process appends to a file (the tuning driver; Ray workers send their results to it).
Records store the trace JSON, never code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlc.ir.diagnostics import Loc, MlcError
from mlc.ir.files import read_bytes
from mlc.ir.tir import PrimFunc

from ..schedule.gpu_rules import register_trace_intrins
from ..schedule.trace import Trace


def mlc_version() -> str:
    """Part of every record's key: a release that changes code generation or how candidates are
    timed (0.2.0: the native entry, not the checked Python call; 0.3.0: constant operands' packs folded,
    as the build does) starts from fresh records."""
    from mlc import __version__

    return __version__


def workload_key(func: PrimFunc) -> str:
    """Structural hash of a tensor program: its printed text under a fixed name."""
    from mlc.ir.module import Module
    from mlc.ir.printer import print_module

    text = print_module(Module((replace(func, name="workload", attrs=()),)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Record:
    """One measurement: the trace applied to the workload and its run times (inf: failed)."""

    workload: str
    target: str
    version: str
    trace: Trace
    times: tuple[float, ...]
    func_name: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.times) and all(math.isfinite(t) for t in self.times)

    @property
    def mean(self) -> float:
        return sum(self.times) / len(self.times) if self.ok else math.inf

    @property
    def cost(self) -> float:
        """What search ranks by: the mean on CPU; the median on GPUs, whose samples (CUDA-event timed
        batches) have rare large outliers (clock ramps, other work on the device)."""
        if not self.ok:
            return math.inf
        if not self.target.startswith("cuda"):
            return self.mean
        t = sorted(self.times)
        mid = len(t) // 2
        return t[mid] if len(t) % 2 else (t[mid - 1] + t[mid]) / 2

    def to_json(self) -> str:
        return json.dumps({"workload": self.workload, "target": self.target, "version": self.version,
                           "func": self.func_name, "trace": json.loads(self.trace.to_json()),
                           "times": [t if math.isfinite(t) else None for t in self.times], "error": self.error})

    @staticmethod
    def from_json(line: str) -> Record:
        d: Any = json.loads(line)
        if not isinstance(d, dict) or not isinstance(d.get("workload"), str):
            raise ValueError("not a record")
        times = tuple(math.inf if t is None else float(t) for t in d.get("times") or ())
        trace = Trace.from_json(json.dumps(d["trace"]))
        register_trace_intrins(trace)  # so that a GEMM record replays in a fresh process
        return Record(d["workload"], str(d.get("target", "")), str(d.get("version", "")), trace, times,
                      str(d.get("func", "")), str(d.get("error") or ""))


class Database:
    """Records in memory plus the JSON-lines file they are appended to (if a path is given)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.records: list[Record] = []
        self.skipped = 0  # torn last lines ignored (0 or 1)
        self._tail: tuple[str, int] = ("", 0)  # a last line to repair before appending: kind, offset
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        data = read_bytes(self.path, f"tuning database '{self.path}'")  # bounded; a FIFO without a writer is an error
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, as every complete write does
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode()
            except UnicodeDecodeError:
                raise MlcError(f"cannot read tuning database '{self.path}': not a UTF-8 text file") from None
            try:
                self.records.append(Record.from_json(line))
            except (ValueError, MlcError, KeyError, TypeError) as e:
                raise MlcError(f"malformed tuning record: {e}", Loc(str(self.path), n, 1), line) from None
        if not tail.strip():
            return
        try:  # a last line without its newline: complete (the kill came just before it) or torn
            self.records.append(Record.from_json(tail.decode()))
            self._tail = ("newline", len(data))
        except (ValueError, MlcError, KeyError, TypeError, UnicodeDecodeError):
            self.skipped += 1
            self._tail = ("torn", len(data) - len(tail))
            print(f"mlc: warning: {self.path}:{len(lines) + 1}: ignoring a torn last record (an interrupted "
                  f"write); the {len(self.records)} records before it are kept", file=sys.stderr)

    def add(self, rec: Record) -> None:
        self.records.append(rec)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(self._repair_tail(fh) + (rec.to_json() + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def _repair_tail(self, fh: Any) -> bytes:
        """Before the first append: cut a torn last line off (truncate to the last newline), or end a
        complete one with its newline; the bytes to write first."""
        kind, at = self._tail
        self._tail = ("", 0)
        if not kind or fh.seek(0, os.SEEK_END) < at:  # nothing to repair, or the file was replaced
            return b""
        if kind == "torn":
            fh.truncate(at)
            return b""
        return b"\n" if fh.tell() == at else b""

    def for_workload(self, workload: str, target: str, version: str | None = None) -> list[Record]:
        v = version or mlc_version()
        return [r for r in self.records if r.workload == workload and r.target == target and r.version == v]

    def stale_versions(self, target: str) -> list[str]:
        """The mlc versions of `target`'s records when none is this one's (such records are never
        applied: code generation or timing changed between versions); else []."""
        versions = {r.version for r in self.records if r.target == target}
        return [] if mlc_version() in versions else sorted(versions)

    def best(self, workload: str, target: str, k: int = 1) -> list[Record]:
        """The k fastest successful traces, fastest first, one record each.

        A trace measured more than once (search re-measures its leaders at the end) is ranked by
        the median of its records' costs, so one lucky measurement on a noisy machine cannot win."""
        by_trace: dict[str, list[Record]] = {}
        for r in self.for_workload(workload, target):
            if r.ok:
                by_trace.setdefault(r.trace.to_json(), []).append(r)
        ranked = sorted((_median([r.cost for r in rs]), i, rs[0]) for i, rs in enumerate(by_trace.values()))
        return [r for _, _, r in ranked[:k]]

    def trace_cost(self, workload: str, target: str, trace: Trace) -> float:
        """The median cost of every successful record of `trace` (inf if none)."""
        key = trace.to_json()
        costs = [r.cost for r in self.for_workload(workload, target) if r.ok and r.trace.to_json() == key]
        return _median(costs) if costs else math.inf

    def measured(self, workload: str, target: str) -> set[str]:
        """Trace JSON of every record of the workload (search skips re-measuring them)."""
        return {r.trace.to_json() for r in self.for_workload(workload, target)}


def _median(xs: list[float]) -> float:
    t = sorted(xs)
    mid = len(t) // 2
    return t[mid] if len(t) % 2 else (t[mid - 1] + t[mid]) / 2
