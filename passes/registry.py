"""The pass registry: each stage is registered once and is reachable both as its own
subcommand (`mlc NAME`) and as a step of a YAML pipeline (`mlc opt --pipeline P.yaml`).

A pass is a frozen dataclass deriving `ModulePass` (xDSL's style): its fields are its options, so
name, type, default and help are declared once, and `apply(module, ctx)` rewrites the module. The
driver builds the subcommand's flags and validates pipeline YAML from those fields.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from mlc.ir.diagnostics import Loc, printable
from mlc.ir.module import Module


def option(default: Any, help: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A pass option: a dataclass field with its help text (and allowed values) beside the default."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diagnostic:
    """One message of a pass that is not an error: severity ("warning" or "info"), text, and where
    in the input it points (None: the module as a whole)."""

    severity: str
    message: str
    loc: Loc | None = None

    def render(self) -> str:
        """As the driver prints it: `FILE:LINE:COL: warning: ...` (or `mlc: info: ...`), escaped."""
        return "\n".join(printable(ln) for ln in f"{self.loc or 'mlc'}: {self.severity}: {self.message}".split("\n"))


Sink = Callable[[Diagnostic], None]


def warnings_to_stderr(d: Diagnostic) -> None:
    """The library's default sink: warnings on stderr as they come, info kept quiet."""
    if d.severity != "info":
        print(d.render(), file=sys.stderr)


_SINK: dict[str, Sink] = {"default": warnings_to_stderr}


def set_default_sink(sink: Sink) -> Sink:
    """Where the diagnostics of every PassContext made from now on go (the CLI's -v/-q policy);
    returns the previous sink, for the caller to put back."""
    prev, _SINK["default"] = _SINK["default"], sink
    return prev


@dataclass
class PassContext:
    """What a pass may need beyond the module: the constants, the target, where files are; and the
    one channel for its diagnostics (`info`, `warning`): kept in `diagnostics`, handed to `sink`."""

    constants: dict[str, np.ndarray] | None = None
    constants_changed: bool = False
    search_dirs: list[Path] = field(default_factory=list)
    target: str = "cpu"
    sink: Sink | None = field(default_factory=lambda: _SINK["default"])
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def report(self, severity: str, message: str, loc: Loc | None = None) -> None:
        d = Diagnostic(severity, message, loc)
        self.diagnostics.append(d)
        if self.sink is not None:
            self.sink(d)

    def info(self, message: str, loc: Loc | None = None) -> None:
        """What a pass did (statistics): shown by `mlc -v`."""
        self.report("info", message, loc)

    def warning(self, message: str, loc: Loc | None = None) -> None:
        """Something the user should know that does not stop the pass: shown unless `mlc -q`."""
        self.report("warning", message, loc)

    def set_constants(self, arrays: dict[str, np.ndarray]) -> None:
        """A pass that adds or folds constants calls this; the driver writes a new side file."""
        self.constants = arrays
        self.constants_changed = True


@dataclass(frozen=True)
class ModulePass:
    """Base of every pass. Subclasses are frozen dataclasses whose fields are the options."""

    name: ClassVar[str] = ""
    needs_constants: ClassVar[bool] = False  # the pass reads or writes constants' values

    def apply(self, module: Module, ctx: PassContext) -> Module:
        raise NotImplementedError


@dataclass(frozen=True)
class PassInfo:
    """What the driver knows of a registered pass: its options (from the dataclass fields)."""

    name: str
    cls: type[ModulePass]
    options: tuple[Option, ...] = ()
    needs_constants: bool = False
    doc: str = ""

    @staticmethod
    def of(cls: type[ModulePass]) -> PassInfo:
        hints = typing.get_type_hints(cls)
        opts = tuple(Option(f.name, hints[f.name], f.default, f.metadata.get("help", ""),
                            tuple(f.metadata.get("choices", ())))
                     for f in dataclasses.fields(cls))
        return PassInfo(cls.name, cls, opts, cls.needs_constants, (cls.__doc__ or "").strip())

    def fn(self, module: Module, ctx: PassContext, **options: Any) -> Module:
        """Run the pass with validated options (see validate_options)."""
        return self.cls(**options).apply(module, ctx)

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
P = TypeVar("P", bound=type[ModulePass])


def register_pass(cls: P) -> P:
    """Class decorator: make `cls` a subcommand and a pipeline step under `cls.name`."""
    if not cls.name or cls.name in _PASSES:
        raise ValueError(f"pass {cls.__name__}: name {cls.name!r} missing or registered twice")
    _PASSES[cls.name] = PassInfo.of(cls)
    return cls


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
    "mlc.passes.bounds",
    "mlc.passes.sparse_lower",
    "mlc.passes.sparse_format",
    "mlc.passes.schedule.sparse_gpu",
    "mlc.passes.sparsify",
    "mlc.passes.alter_layout",
    "mlc.passes.activation_layout",
    "mlc.passes.autodiff",
    "mlc.passes.amp",
    "mlc.passes.remat",
    "mlc.passes.conv_gemm",
)
