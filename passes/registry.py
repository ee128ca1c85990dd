"""The pass registry: each stage is registered once and is reachable both as its own
subcommand (`mlc NAME`) and as a step of a YAML pipeline (`mlc opt --pipeline P.yaml`).

A pass is `fn(module, ctx, **options) -> Module`. It declares its options (name, type, default,
help) so the driver can build the subcommand's flags and validate pipeline YAML against them,
and, as LLVM passes do, what it requires of its input and what it preserves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlc.ir.module import Module


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[str, ...] = ()


@dataclass
class PassContext:
    """What a pass may need beyond the module: the constants, the target, where files are."""

    constants: dict[str, np.ndarray] | None = None
    constants_changed: bool = False
    search_dirs: list[Path] = field(default_factory=list)
    target: str = "cpu"
    log: Callable[[str], None] = lambda _msg: None

    def set_constants(self, arrays: dict[str, np.ndarray]) -> None:
        """A pass that adds or folds constants calls this; the driver writes a new side file."""
        self.constants = arrays
        self.constants_changed = True


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: Callable[..., Module]
    options: tuple[Option, ...] = ()
    requires: tuple[str, ...] = ()  # properties the input must have, e.g. "shapes-inferred"
    establishes: tuple[str, ...] = ()  # properties the output has
    needs_constants: bool = False
    doc: str = ""

    def validate_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Options from YAML or the command line, type-checked, with defaults filled in."""
        from mlc.ir.diagnostics import MlcError

        known = {o.name: o for o in self.options}
        out: dict[str, Any] = {}
        for k, v in given.items():
            key = k.replace("-", "_")
            if key not in known:
                raise MlcError(f"pass '{self.name}' has no option '{k}' (options: {', '.join(known) or 'none'})")
            o = known[key]
            if v is None:
                continue
            if o.type is bool and not isinstance(v, bool):
                raise MlcError(f"pass '{self.name}': option '{k}' must be true or false, got {v!r}")
            if o.type in (int, float) and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise MlcError(f"pass '{self.name}': option '{k}' must be a number, got {v!r}")
            if o.type is str and not isinstance(v, str):
                raise MlcError(f"pass '{self.name}': option '{k}' must be a string, got {v!r}")
            if o.choices and v not in o.choices:
                raise MlcError(f"pass '{self.name}': option '{k}' must be one of {', '.join(o.choices)}, got {v!r}")
            out[key] = o.type(v)
        for o in self.options:
            out.setdefault(o.name, o.default)
        return out


_PASSES: dict[str, PassInfo] = {}


def register_pass(
    name: str,
    options: tuple[Option, ...] = (),
    requires: tuple[str, ...] = (),
    establishes: tuple[str, ...] = (),
    needs_constants: bool = False,
) -> Callable[[Callable[..., Module]], Callable[..., Module]]:
    def deco(fn: Callable[..., Module]) -> Callable[..., Module]:
        if name in _PASSES:
            raise ValueError(f"pass {name} registered twice")
        doc = (fn.__doc__ or "").strip()
        _PASSES[name] = PassInfo(name, fn, options, requires, establishes, needs_constants, doc)
        return fn

    return deco


def get_pass(name: str) -> PassInfo | None:
    load_all()
    return _PASSES.get(name)


def all_passes() -> dict[str, PassInfo]:
    load_all()
    return dict(_PASSES)


_LOADED = False


def load_all() -> None:
    """Import every pass module so their registrations run (one list, here)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for mod in PASS_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


PASS_MODULES: tuple[str, ...] = (
    "mlc.passes.canonicalize",
    "mlc.passes.shape_infer",
    "mlc.passes.lower",
    "mlc.passes.fuse",
    "mlc.passes.schedule_pass",
    "mlc.passes.lower_tir",
)
