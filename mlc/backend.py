"""mlc as an ONNX backend (`onnx.backend.base.Backend`), for ONNX's backend test suite and for callers
that speak that API.

Two backends, one per execution path:

* `mlc.backend.Compiled` (also `mlc.backend.prepare`, `run_model`, ...): `mlc.compile(model)`, the
  CPU build pipeline and native kernels;
* `mlc.backend.Interpreted`: `import_onnx` and the numpy reference interpreter (`mlc.ir.interp`) on
  the imported graph, as `mlc run` does for a text module.

`prepare(model, device="CPU", mode=None)` takes an `onnx.ModelProto` (or bytes / a path); `mode=`
("compiled" or "interpreted") overrides the class's own path, so `Compiled.prepare(m, mode="interpreted")`
is the same as `Interpreted.prepare(m)`. The returned `BackendRep.run(inputs)` takes the inputs
positionally, in the order of the graph's non-initializer inputs (the importer sanitizes names, so
inputs are matched by position, never by name), or as a dict keyed by the ONNX input names, and returns
the outputs as a list in graph output order (an `onnx.backend.base.namedtupledict`). Only the CPU
device is supported.

`specialize=True` (the default): when the importer refuses a model only because a small graph input
(rank <= 1, at most 64 elements: reduction axes, a target shape, Split sizes, Range bounds, ...)
fixes an output shape, the model is built at `run` time for the values given (those inputs become
initializers; one build per distinct set of values, cached; `rep.specialized_on` names them).
`specialize=False` raises the importer's error at `prepare`. Errors of mlc
(`mlc.ir.diagnostics.MlcError`: an unsupported op or attribute, a shape mismatch) propagate unchanged.

    import onnx, mlc.backend
    rep = mlc.backend.Compiled.prepare(onnx.load("m.onnx"))
    (y,) = rep.run([x])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from mlc.ir.diagnostics import MlcError

MODES = ("compiled", "interpreted")


def _as_model(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model))


class _Built:
    """One imported (interpreted) or compiled model: `call(arrays in graph input order) -> outputs`."""

    def __init__(self, model: onnx.ModelProto, mode: str) -> None:
        inits = {i.name for i in model.graph.initializer}
        self.onnx_inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.onnx_outputs = [o.name for o in model.graph.output]
        self.mode = mode
        if mode == "compiled":
            import mlc

            self._model = mlc.compile(model)
            self.input_names: list[str] = list(self._model.input_names)
        else:
            from mlc.frontend.onnx_import import import_onnx
            from mlc.ir.graph import Function

            self._module, self._consts = import_onnx(model)
            fn = self._module.get("main")
            assert isinstance(fn, Function)
            self.input_names = [p.name for p in fn.params]
        if len(self.input_names) != len(self.onnx_inputs):
            raise MlcError(f"the imported graph takes {len(self.input_names)} input(s), the ONNX graph "
                           f"{len(self.onnx_inputs)}")

    def call(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self.input_names, arrays))
        if self.mode == "compiled":
            outs = self._model(**feeds)
        else:
            from mlc.ir.interp import run_function

            outs = run_function(self._module, feeds, self._consts)
        values = list(outs.values())
        if len(values) != len(self.onnx_outputs):  # two graph outputs bound to one value name
            from mlc.frontend.onnx_import import sanitize

            values = [outs[sanitize(n)] for n in self.onnx_outputs]
        return [np.asarray(v) for v in values]


# MlcError messages of the importer that a value known at run time would settle.
_NEEDS_VALUE = re.compile(r"run time|must be (a )?constants?|data-dependent|constants or shape expressions")
SPECIALIZE_MAX_ELEMS = 64


class MlcRep(BackendRep):
    """A prepared model: `run(inputs)` -> outputs in graph output order.

    With `specialize` (the default), a model that the importer refuses only because a small graph
    input (rank <= 1, at most 64 elements: reduction axes, a target shape, Range bounds, ...) fixes
    an output shape is built at `run` time for the values given, with those inputs turned into
    initializers; one build per distinct set of values, cached. `specialized_on` names those inputs
    (empty when the model was built once, at prepare)."""

    def __init__(self, model: onnx.ModelProto, mode: str, specialize: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self._onnx = mode, model
        inits = {i.name for i in model.graph.initializer}
        self.onnx_inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.onnx_outputs = [o.name for o in model.graph.output]
        self.specialized_on: list[str] = []
        self._cache: dict[tuple[Any, ...], _Built] = {}
        self._built: _Built | None = None
        try:
            self._built = _Built(model, mode)
        except MlcError as e:
            self.specialized_on = self._candidates() if specialize and _NEEDS_VALUE.search(e.message) else []
            if not self.specialized_on:
                raise

    def _candidates(self) -> list[str]:
        out = []
        for vi in self._onnx.graph.input:
            if vi.name not in self.onnx_inputs or not vi.type.HasField("tensor_type"):
                continue
            dims = vi.type.tensor_type.shape.dim
            if len(dims) <= 1 and all(d.HasField("dim_value") and d.dim_value <= SPECIALIZE_MAX_ELEMS for d in dims):
                out.append(vi.name)
        return out

    def _feeds(self, inputs: Any) -> list[np.ndarray]:
        if isinstance(inputs, Mapping):
            missing = [n for n in self.onnx_inputs if n not in inputs]
            if missing:
                raise MlcError(f"missing input(s) {', '.join(missing)}")
            seq: Sequence[Any] = [inputs[n] for n in self.onnx_inputs]
        elif isinstance(inputs, np.ndarray):
            seq = [inputs]
        else:
            seq = list(inputs)
        if len(seq) != len(self.onnx_inputs):
            raise MlcError(f"the model takes {len(self.onnx_inputs)} input(s) "
                           f"({', '.join(self.onnx_inputs)}), got {len(seq)}")
        # bfloat16 (ml_dtypes) travels as f32, mlc's numpy form of bf16
        return [np.asarray(a, np.float32) if np.asarray(a).dtype.name == "bfloat16" else np.asarray(a) for a in seq]

    def _specialized(self, arrays: list[np.ndarray]) -> tuple[_Built, list[np.ndarray]]:
        from onnx import numpy_helper

        fixed = {n: a for n, a in zip(self.onnx_inputs, arrays) if n in self.specialized_on}
        key = tuple((n, a.dtype.str, a.shape, a.tobytes()) for n, a in fixed.items())
        built = self._cache.get(key)
        if built is None:
            m = onnx.ModelProto()
            m.CopyFrom(self._onnx)
            keep = [vi for vi in m.graph.input if vi.name not in fixed]
            del m.graph.input[:]
            m.graph.input.extend(keep)
            m.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in fixed.items())
            built = self._cache[key] = _Built(m, self.mode)
        return built, [a for n, a in zip(self.onnx_inputs, arrays) if n not in fixed]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        arrays = self._feeds(inputs)
        if self._built is not None:
            values = self._built.call(arrays)
        else:
            built, rest = self._specialized(arrays)
            values = built.call(rest)
        for i, o in enumerate(self._onnx.graph.output):
            if o.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 and i < len(values):
                import ml_dtypes

                values[i] = values[i].astype(ml_dtypes.bfloat16)
        return namedtupledict("Outputs", [f"o{i}" for i in range(len(values))])(*values)


class Compiled(Backend):
    """The compiled CPU path: `mlc.compile(model)`."""

    mode = "compiled"

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", mode: str | None = None, specialize: bool = True,
                **kwargs: Any) -> MlcRep:
        if not cls.supports_device(device):
            raise MlcError(f"device {device} is not supported by the mlc ONNX backend (CPU only)")
        return MlcRep(_as_model(model), mode or cls.mode, specialize)

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", outputs_info: Any = None,
                 **kwargs: Any) -> tuple[Any, ...] | None:
        raise MlcError("mlc runs whole models: build a one-node model and use run_model")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            return Device(device).type == DeviceType.CPU
        except Exception:  # noqa: BLE001 - onnx raises on unknown device strings
            return False


class Interpreted(Compiled):
    """The reference path: `import_onnx` + the numpy interpreter."""

    mode = "interpreted"


BACKENDS: dict[str, type[Compiled]] = {"compiled": Compiled, "interpreted": Interpreted}

prepare = Compiled.prepare
run_model = Compiled.run_model
run_node = Compiled.run_node
supports_device = Compiled.supports_device

__all__ = ["Compiled", "Interpreted", "MlcRep", "BACKENDS", "prepare", "run_model", "supports_device"]
