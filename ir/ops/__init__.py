"""Graph ops: `import mlc.ir.ops` loads the registry with definitions, shape inference and references."""

from . import defs, reference, shapes
from .registry import REQUIRED, OpDef, all_ops, get

__all__ = ["defs", "shapes", "reference", "REQUIRED", "OpDef", "all_ops", "get"]
