"""The module: graph functions, tensor programs, metadata and the constants side file."""

from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import UNKNOWN, Loc
from .graph import Attrs, Function
from .tir import PrimFunc

IR_VERSION = 1


@dataclass(frozen=True)
class ConstantsRef:
    """The side file holding large constants: path (as written in the text) and sha256 of its bytes."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Module:
    """Functions keyed by name (`@main`, `@fused_add`), in printing order."""

    functions: tuple[Function | PrimFunc, ...]
    meta: Attrs = ()
    constants: ConstantsRef | None = None
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    def get(self, name: str) -> Function | PrimFunc:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)

    def graph_functions(self) -> list[Function]:
        return [f for f in self.functions if isinstance(f, Function)]

    def prim_functions(self) -> list[PrimFunc]:
        return [f for f in self.functions if isinstance(f, PrimFunc)]

    def with_function(self, f: Function | PrimFunc) -> Module:
        """A copy with `f` replacing the function of the same name (or appended)."""
        fs = [g for g in self.functions if g.name != f.name]
        idx = next((i for i, g in enumerate(self.functions) if g.name == f.name), len(fs))
        fs.insert(idx, f)
        return Module(tuple(fs), self.meta, self.constants, self.loc)
