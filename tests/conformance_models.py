"""ONNX's shipped model sets (onnx/backend/test/data/{light,simple,pytorch-converted,pytorch-operator})
run through `mlc.backend` on both paths.

Helpers for tests/test_onnx_model_sets.py and a script:

    .venv/bin/python -m tests.conformance_models [--sets light,simple,...] [--mode compiled,interpreted]
                                                 [--jobs 2] [--json out.json] [--only REGEX]
                                                 [--timeout 60] [--light-timeout 900]
                                                 [--record tests/data/model_sets_expected.json]

prints the counts per set and path and writes the per-model classification (`--json`). A model's
name is `<set>/<test name>` (`light/test_resnet50`, `simple/test_sign_model`, ...).

The models are loaded as onnx's BackendTest loads them (`onnx.backend.test.loader.load_model_tests`):

* `simple`, `pytorch-converted`, `pytorch-operator`: a folder per test with `model.onnx` and
  `test_data_set_*/input_*.pb`, `output_*.pb`;
* `light`: the `real` test entries whose url is `onnx/backend/test/data/light/light_<name>.onnx`; the
  input is BackendTest's dummy input (`Runner.generate_dummy_data(random=False)`: `arange(n) / n`,
  float32, unknown dims 1) and the expected outputs are `light_<name>_output_*.pb`.

Each model is imported as shipped (opsets 6..28, never converted). Tolerances are BackendTest's:
the loader's rtol=1e-3 / atol=1e-7, or the test's data.json (densenet121: rtol=2e-3).

Running and classifying reuse tests/conformance.py (`run_cases`, `exclusion`, `counts`, ...): every
model is `pass`, `wrong`, `refused`, `error`, `crash`, `timeout` or `excluded` (an op outside the
importer's table `HANDLERS`, an element type mlc cannot represent, or a sequence / optional / map graph
input or output), each with its detail.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import conformance as conf  # pytest (tests/ on sys.path)
except ImportError:  # python -m tests.conformance_models
    from tests import conformance as conf

SETS = ("light", "simple", "pytorch-converted", "pytorch-operator")
EXPECTED = Path(__file__).parent / "data" / "model_sets_expected.json"
LIGHT_URL = "onnx/backend/test/data/light/"


def data_dir() -> Path:
    from onnx.backend.test.loader import DATA_DIR

    return Path(DATA_DIR)


def _load_pb(path: str, type_proto: Any) -> Any:
    import onnx
    from onnx import numpy_helper

    raw = Path(path).read_bytes()
    if type_proto is not None and type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(raw)
        return numpy_helper.to_list(seq)
    if type_proto is not None and type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(raw)
        return numpy_helper.to_optional(opt)
    t = onnx.TensorProto()
    t.ParseFromString(raw)
    return numpy_helper.to_array(t)


def _dir_case(kind: str, t: Any) -> conf.Case:
    """A test folder: model.onnx + test_data_set_*/{input,output}_*.pb (as Runner reads them)."""
    import onnx

    model = onnx.load(os.path.join(t.model_dir, "model.onnx"))
    sets = []
    for d in sorted(glob.glob(os.path.join(t.model_dir, "test_data_set*"))):
        n_in = len(glob.glob(os.path.join(d, "input_*.pb")))
        n_out = len(glob.glob(os.path.join(d, "output_*.pb")))
        ins = [_load_pb(os.path.join(d, f"input_{i}.pb"), model.graph.input[i].type if i < len(model.graph.input)
                        else None) for i in range(n_in)]
        outs = [_load_pb(os.path.join(d, f"output_{i}.pb"), model.graph.output[i].type
                         if i < len(model.graph.output) else None) for i in range(n_out)]
        sets.append((ins, outs))
    return conf.Case(f"{kind}/{t.name}", model.SerializeToString(), sets, t.rtol, t.atol,
                     tuple(sorted(conf._ops_of(model.graph))))


def _light_case(t: Any) -> conf.Case | None:
    """A `light` model: BackendTest's dummy input and the shipped expected outputs."""
    import onnx
    from onnx.backend.test.runner import Runner

    path = data_dir().parent.parent.parent.parent / t.url  # as Runner resolves it
    if not path.is_file():
        path = data_dir() / "light" / os.path.basename(t.url)
    if not path.is_file():
        return None
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    ins = [Runner.generate_dummy_data(x, seed=0, name=t.model_name, random=False)
           for x in model.graph.input if x.name not in inits]
    prefix = str(path)[: -len(".onnx")]
    outs = []
    for i, o in enumerate(model.graph.output):
        f = f"{prefix}_output_{i}.pb"
        if not os.path.exists(f):
            return None
        outs.append(_load_pb(f, o.type))
    return conf.Case(f"light/{t.name}", model.SerializeToString(), [(ins, outs)], t.rtol, t.atol,
                     tuple(sorted(conf._ops_of(model.graph))))


def load_model_cases(sets: Sequence[str] = SETS, only: str | None = None) -> list[conf.Case]:
    """The models of `sets` (names `<set>/<test>`), optionally filtered by a regex on the name."""
    from onnx.backend.test.loader import load_model_tests

    pat = re.compile(only) if only else None
    cases: list[conf.Case] = []
    for kind in sets:
        if kind not in SETS:
            raise ValueError(f"unknown model set {kind!r} (one of {', '.join(SETS)})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tests = load_model_tests(kind="real" if kind == "light" else kind)
        for t in sorted(tests, key=lambda t: t.name):
            name = f"{kind}/{t.name}"
            if pat is not None and not pat.search(name):
                continue
            if kind == "light":
                if t.url is None or not t.url.startswith(LIGHT_URL):
                    continue
                c = _light_case(t)
                if c is not None:
                    cases.append(c)
            elif t.model_dir is not None:
                cases.append(_dir_case(kind, t))
    return cases


def set_of(name: str) -> str:
    return name.split("/", 1)[0]


def run_models(cases: Sequence[conf.Case], mode: str, jobs: int = 2, timeout: float = 60.0,
               light_timeout: float = 900.0, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Classify every model on one path (tests/conformance.py's worker processes); the `light`
    models (whole ImageNet networks at 224x224) get `light_timeout` seconds each."""
    light = [c for c in cases if set_of(c.name) == "light"]
    rest = [c for c in cases if set_of(c.name) != "light"]
    out: dict[str, dict[str, Any]] = {}
    if rest:
        out.update(conf.run_cases(rest, mode, jobs, timeout, progress))
    if light:
        out.update(conf.run_cases(light, mode, jobs, light_timeout, progress))
    return {k: out[k] for k in sorted(out)}


def counts_by_set(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per set (and `all`): models per status, `run` (not excluded) and `total`."""
    out = {}
    for s in [*SETS, "all"]:
        sub = {n: r for n, r in results.items() if s == "all" or set_of(n) == s}
        if not sub:
            continue
        c = conf.counts(sub)
        c["run"] = len(sub) - c["excluded"]
        c["total"] = len(sub)
        out[s] = c
    return out


def load_expected(path: Path = EXPECTED) -> dict[str, list[str]]:
    return conf.load_expected(path)


def table(all_res: dict[str, dict[str, dict[str, Any]]]) -> str:
    cols = [s for s in conf.STATUSES]
    lines = [f"{'set':<18} {'path':<12} " + " ".join(f"{s:>8}" for s in cols) + f" {'run':>5} {'total':>5}"]
    for mode, res in all_res.items():
        for s, c in counts_by_set(res).items():
            lines.append(f"{s:<18} {mode:<12} " + " ".join(f"{c[k]:>8}" for k in cols)
                         + f" {c['run']:>5} {c['total']:>5}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.conformance_models", description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=",".join(SETS), help="model sets: " + ",".join(SETS))
    ap.add_argument("--mode", default="compiled,interpreted", help="paths to run: compiled,interpreted")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per model (light: --light-timeout)")
    ap.add_argument("--light-timeout", type=float, default=900.0, help="seconds per light model")
    ap.add_argument("--only", help="regex on model names (<set>/<test>)")
    ap.add_argument("--json", help="write the per-model classification here")
    ap.add_argument("--record", help="write the names of passing models per path here (the expected list)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    modes = [m for m in args.mode.split(",") if m]
    bad = [m for m in modes if m not in conf.MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}")
    sets = [s for s in args.sets.split(",") if s]
    t0 = time.monotonic()
    cases = load_model_cases(sets, args.only)
    all_res = {m: run_models(cases, m, args.jobs, args.timeout, args.light_timeout, args.progress) for m in modes}
    print(table(all_res))
    print(f"{len(cases)} models, {time.monotonic() - t0:.0f} s")
    if args.json:
        import platform

        meta = {"onnx": __import__("onnx").__version__, "numpy": __import__("numpy").__version__,
                "python": platform.python_version(), "sets": sets,
                "command": "python -m tests.conformance_models " + " ".join(argv if argv is not None else sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "counts": {m: counts_by_set(r) for m, r in all_res.items()}}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": all_res}, indent=1) + "\n")
    if args.record:
        rec = load_expected(Path(args.record)) if Path(args.record).is_file() else {}
        for m, r in all_res.items():
            old = [n for n in rec.get(m, []) if n not in r]  # models not run this time keep their entry
            rec[m] = sorted(old + [n for n, x in r.items() if x["status"] == "pass"])
        Path(args.record).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
