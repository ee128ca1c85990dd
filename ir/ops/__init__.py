"""Graph ops: `import mlc.ir.ops` loads the registry with every op family (see registry.py)."""

from .registry import REQUIRED, OpDef, all_ops, get, load

load()

__all__ = ["REQUIRED", "OpDef", "all_ops", "get"]
