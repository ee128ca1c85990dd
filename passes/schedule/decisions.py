"""Decisions for the sampling instructions of the schedule rules (CPU and GPU alike).

`default` picks the hand-chosen decisions (the design space's default point); else `given[n]` is
used for the n-th sampling call when it is a valid decision of that kind, and anything else is
sampled at random from the schedule's rng. Re-running the rules with given decisions (rather than
replaying a trace) is how search mutates: structure that depends on a decision (whether an input is
packed, a pack tile that must match the register tile) is re-derived from it, where a replayed trace
would keep the old structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlc.ir.diagnostics import MlcError

from .schedule import Schedule
from .trace import LoopRV


@dataclass
class Decisions:
    default: bool
    given: Sequence[Any] = ()
    n: int = 0

    def _next(self) -> Any:
        self.n += 1
        return self.given[self.n - 1] if self.n <= len(self.given) else None

    def tile(self, sch: Schedule, loop: LoopRV, n: int, max_inner: int, want: Sequence[int] | None) -> list[int]:
        """Split factors of `loop` into `n` levels (innermost at most `max_inner`); `want` by default."""
        g = self._next()
        if not self.default and isinstance(g, list | tuple) and all(type(x) is int for x in g):
            try:
                return [int(x) for x in sch.sample_perfect_tile(loop, n, max_inner, decision=list(g))]
            except MlcError:  # not a perfect tiling of this loop: resampled
                pass
        return [int(x) for x in sch.sample_perfect_tile(loop, n, max_inner, decision=want if self.default else None)]

    def cat(self, sch: Schedule, candidates: Sequence[int], want: int) -> int:
        """One of `candidates` (uniformly when sampled); `want` by default."""
        g = self._next()
        probs = [1.0] * len(candidates)
        if not self.default and type(g) is int and 0 <= g < len(candidates):
            return int(sch.sample_categorical(list(candidates), probs, decision=g))
        dec = list(candidates).index(want) if self.default else None
        return int(sch.sample_categorical(list(candidates), probs, decision=dec))
