"""Models exported by today's torch.onnx (tests/models/export_torch.py), stored without their large
random weights; `load` refills them with seeded random values of the exported scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).parent
REPORT = HERE / "export_report.json"


def exported() -> list[str]:
    """File names of the exports that succeeded, in the report's order."""
    if not REPORT.is_file():
        return []
    rep = json.loads(REPORT.read_text())
    return [k for k, v in rep.items() if isinstance(v, dict) and v.get("ok") and (HERE / k).is_file()]


def load(name: str, seed: int = 0) -> onnx.ModelProto:
    model = onnx.load(str(HERE / name), load_external_data=False)
    stripped = json.loads(REPORT.read_text())[name]["stripped"]
    rng = np.random.default_rng(seed)
    by_name = {t.name: t for t in model.graph.initializer}
    for key, info in stripped.items():
        arr = rng.normal(info["mean"], max(info["std"], 1e-3), info["shape"]).astype(info["dtype"])
        by_name[key].CopyFrom(numpy_helper.from_array(arr, key))
    return model
