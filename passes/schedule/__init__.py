"""TensorIR schedule primitives and MetaSchedule-style traces."""

from .schedule import Schedule, normalize
from .tensorize import gemm_intrin, get_intrin, register_intrin
from .trace import BlockRV, Instruction, IntRV, LoopRV, Trace

__all__ = ["Schedule", "normalize", "BlockRV", "Instruction", "IntRV", "LoopRV", "Trace", "gemm_intrin",
    "get_intrin", "register_intrin"]
