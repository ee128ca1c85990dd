"""Schedule traces: the replayable, JSON-serialisable record of primitives and sampling decisions.

Loop and block handles are recorded by name (names are deterministic given the same sequence of
primitives, whatever the sampled numbers), sampled integers by random-variable id, so changing a
decision and replaying re-derives every later instruction from it (MetaSchedule's mutation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from mlc.ir.diagnostics import MlcError

if TYPE_CHECKING:
    from mlc.ir.tir import PrimFunc

    from .schedule import Schedule

SAMPLING = ("sample_perfect_tile", "sample_categorical")
TRACE_VERSION = 1


@dataclass(frozen=True)
class LoopRV:
    """A loop handle: the loop variable's name, re-resolved against the current function."""

    name: str


@dataclass(frozen=True)
class BlockRV:
    name: str


class IntRV(int):
    """A sampled integer that remembers which sampling instruction produced it."""

    rv: str

    def __new__(cls, value: int, rv: str) -> IntRV:
        obj = super().__new__(cls, value)
        obj.rv = rv
        return obj


def encode(v: Any) -> Any:
    if isinstance(v, LoopRV):
        return {"loop": v.name}
    if isinstance(v, BlockRV):
        return {"block": v.name}
    if isinstance(v, IntRV):
        return {"rv": v.rv}
    if isinstance(v, list | tuple):
        return [encode(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise MlcError(f"trace: cannot record a value of type {type(v).__name__}")


def decode(v: Any, env: dict[str, int]) -> Any:
    if isinstance(v, dict):
        if set(v) == {"loop"}:
            return LoopRV(str(v["loop"]))
        if set(v) == {"block"}:
            return BlockRV(str(v["block"]))
        if set(v) == {"rv"}:
            if v["rv"] not in env:
                raise MlcError(f"trace: random variable {v['rv']} used before it is sampled")
            return env[v["rv"]]
        raise MlcError(f"trace: bad value {v!r}")
    if isinstance(v, list):
        return [decode(x, env) for x in v]
    return v


@dataclass(frozen=True)
class Instruction:
    """One primitive call: `kind(*inputs, **attrs) -> outputs`, with its sampling decision if any."""

    kind: str
    inputs: tuple[Any, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[Any, ...] = ()
    decision: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "inputs": list(self.inputs), "attrs": self.attrs,
                "outputs": list(self.outputs), "decision": self.decision}


@dataclass(frozen=True)
class Trace:
    insts: tuple[Instruction, ...] = ()

    def __len__(self) -> int:
        return len(self.insts)

    def append(self, inst: Instruction) -> Trace:
        return Trace(self.insts + (inst,))

    def decisions(self) -> dict[int, Any]:
        """Index of each sampling instruction -> its decision."""
        return {i: x.decision for i, x in enumerate(self.insts) if x.kind in SAMPLING}

    def with_decision(self, index: int, decision: Any) -> Trace:
        if not 0 <= index < len(self.insts) or self.insts[index].kind not in SAMPLING:
            raise MlcError(f"trace: instruction {index} is not a sampling instruction")
        insts = list(self.insts)
        insts[index] = replace(insts[index], decision=decision)
        return Trace(tuple(insts))

    def replay(self, func: PrimFunc, seed: int = 0) -> Schedule:
        """Run the trace on the unscheduled `func`; recorded decisions are reused (None: sample anew)."""
        from .schedule import Schedule

        sch = Schedule(func, seed=seed)
        env: dict[str, int] = {}
        for n, inst in enumerate(self.insts):
            method = getattr(sch, inst.kind, None)
            if method is None or inst.kind.startswith("_") or not getattr(method, "_is_instruction", False):
                raise MlcError(f"trace: unknown instruction {inst.kind!r}")
            args = decode(list(inst.inputs), env)
            kwargs = {k: decode(v, env) for k, v in inst.attrs.items()}
            if inst.kind in SAMPLING:
                kwargs["decision"] = inst.decision
            try:
                out = method(*args, **kwargs)
            except (TypeError, ValueError, AttributeError) as e:  # malformed arguments from a stored trace
                raise MlcError(f"trace: instruction {n} ({inst.kind}) has bad arguments: {e}") from None
            outs = out if isinstance(out, list | tuple) else [out]
            for rec, val in zip(inst.outputs, outs):
                if isinstance(rec, dict) and "rv" in rec:
                    env[rec["rv"]] = val
        return sch

    def apply(self, func: PrimFunc) -> PrimFunc:
        return self.replay(func).func

    def to_json(self) -> str:
        return json.dumps({"version": TRACE_VERSION, "insts": [i.to_dict() for i in self.insts]})

    @staticmethod
    def from_json(text: str) -> Trace:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MlcError(f"trace: invalid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != TRACE_VERSION or not isinstance(data.get("insts"), list):
            raise MlcError(f"trace: expected a version {TRACE_VERSION} trace object")
        insts = []
        for d in data["insts"]:
            if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or not isinstance(d.get("inputs"), list):
                raise MlcError(f"trace: malformed instruction {d!r}")
            insts.append(Instruction(d["kind"], tuple(d["inputs"]), dict(d.get("attrs") or {}),
                                     tuple(d.get("outputs") or ()), d.get("decision")))
        return Trace(tuple(insts))
