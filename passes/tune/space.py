"""The design space a target's schedules are searched in: its default point and random points.

CPU schedules come from the generic rules (`schedule.rules`); CUDA ones from the GPU rules
(`schedule.gpu_rules`), which only produce what the CUDA codegen can emit (no vthreads, no parallel
loops, GEMMs as templates). Both re-run the rules with given decisions, which is how search mutates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc

from ..schedule.schedule import Schedule


@dataclass(frozen=True)
class DesignSpace:
    target: Target

    @property
    def gpu(self) -> bool:
        return self.target.gpu

    def default(self, func: PrimFunc) -> Schedule:
        """The hand-picked point (its trace holds every sampling instruction with its default decision)."""
        if self.gpu:
            from ..schedule.gpu_rules import default_gpu_trace

            return default_gpu_trace(func)
        from ..schedule.rules import default_schedule

        return default_schedule(func, self.target)

    def sample(self, func: PrimFunc, seed: int = 0, decisions: Sequence[Any] = ()) -> Schedule:
        """A random point; `decisions` fix the sampling instructions in order (None or invalid: sampled)."""
        if self.gpu:
            from ..schedule.gpu_rules import sample_gpu_schedule

            return sample_gpu_schedule(func, seed=seed, decisions=decisions)
        from ..schedule.rules import sample_schedule

        return sample_schedule(func, self.target, seed=seed, decisions=decisions)


def design_space(target: str | Target | None) -> DesignSpace:
    """The space of a target (`Target.parse` spelling); an unknown one is a user error."""
    return DesignSpace(Target.parse(target))


__all__ = ["DesignSpace", "design_space"]
