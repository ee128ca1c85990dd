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
device is supported. Errors of mlc (`mlc.ir.diagnostics.MlcError`: an unsupported op or attribute,
a shape mismatch) propagate unchanged.

    import onnx, mlc.backend
    rep = mlc.backend.Compiled.prepare(onnx.load("m.onnx"))
    (y,) = rep.run([x])
"""

from __future__ import annotations

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


class MlcRep(BackendRep):
    """A prepared model: `run(inputs)` -> outputs in graph output order."""

    def __init__(self, model: onnx.ModelProto, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        inits = {i.name for i in model.graph.initializer}
        self.onnx_inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.onnx_outputs = [o.name for o in model.graph.output]
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

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            missing = [n for n in self.onnx_inputs if n not in inputs]
            if missing:
                raise MlcError(f"missing input(s) {', '.join(missing)}")
            seq: Sequence[Any] = [inputs[n] for n in self.onnx_inputs]
        elif isinstance(inputs, np.ndarray):
            seq = [inputs]
        else:
            seq = list(inputs)
        if len(seq) != len(self.input_names):
            raise MlcError(f"the model takes {len(self.input_names)} input(s) "
                           f"({', '.join(self.onnx_inputs)}), got {len(seq)}")
        return {n: np.asarray(a) for n, a in zip(self.input_names, seq)}

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        feeds = self._feeds(inputs)
        if self.mode == "compiled":
            outs = self._model(**feeds)
        else:
            from mlc.ir.interp import run_function

            outs = run_function(self._module, feeds, self._consts)
        values = list(outs.values())
        if len(values) != len(self.onnx_outputs):  # two graph outputs bound to one value name
            from mlc.frontend.onnx_import import sanitize

            values = [outs[sanitize(n)] for n in self.onnx_outputs]
        values = [np.asarray(v) for v in values]
        return namedtupledict("Outputs", [f"o{i}" for i in range(len(values))])(*values)


class Compiled(Backend):
    """The compiled CPU path: `mlc.compile(model)`."""

    mode = "compiled"

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", mode: str | None = None, **kwargs: Any) -> MlcRep:
        if not cls.supports_device(device):
            raise MlcError(f"device {device} is not supported by the mlc ONNX backend (CPU only)")
        return MlcRep(_as_model(model), mode or cls.mode)

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
