"""TensorIR schedule primitives and MetaSchedule-style traces."""

from .schedule import Schedule, normalize
from .trace import BlockRV, Instruction, IntRV, LoopRV, Trace

__all__ = ["Schedule", "normalize", "BlockRV", "Instruction", "IntRV", "LoopRV", "Trace"]
