"""ONNX's backend test suite (the node tests of `onnx.backend.test`) run through `mlc.backend`.

Helpers for tests/test_onnx_conformance.py and a script:

    .venv/bin/python -m tests.conformance [--mode compiled,interpreted] [--jobs 2] [--json out.json]
                                          [--only REGEX] [--timeout 60] [--record tests/data/conformance_expected.json]

prints the counts per path and writes the per-case classification (`--json`). Every case is one of:

* `pass`      outputs match ONNX's expected outputs (the suite's own rtol/atol);
* `wrong`     outputs differ (values, shape or dtype);
* `refused`   mlc raised `MlcError` (import, build or run: an unsupported attribute, dtype, ...);
* `error`     another exception (a bug in mlc);
* `crash`     the worker process died (a segfault in a compiled kernel);
* `timeout`   the case ran past the time limit;
* `excluded`  not run: an op outside the importer's table (frontend/onnx_ops.py HANDLERS), a
              pattern of EXCLUDED below (each with its reason), an element type of UNREPRESENTABLE,
              or a sequence / optional / map graph input or output.

Cases run in worker processes (spawned, one case at a time; a worker that dies or hangs is
replaced), so a crash is recorded as a crash of that case and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("pass", "wrong", "refused", "error", "crash", "timeout", "excluded")
MODES = ("compiled", "interpreted")
EXPECTED = Path(__file__).parent / "data" / "conformance_expected.json"

# Cases not run although every op is in HANDLERS: (regex on the case name, reason). Keep each one
# justified; a failing case of a supported op is recorded as failing, never excluded here.
EXCLUDED: list[tuple[str, str]] = [
    (r"^test_cast_.*(FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2|FLOAT6|e4m3|e5m2|e8m0|e2m1)",
     "float8/float4/int4/int2 element types: mlc has no such dtype"),
    (r"^test_cast_.*STRING|^test_cast_.*_to_STRING|^test_cast_STRING", "string tensors: mlc has no string dtype"),
]
# Element types no mlc op can take (the importer refuses them); a case whose model uses one is
# excluded with this reason instead of being reported as refused.
UNREPRESENTABLE = {"STRING", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                   "FLOAT8E5M2FNUZ", "UINT4", "INT4", "FLOAT4E2M1", "FLOAT8E8M0", "UINT2", "INT2",
                   "FLOAT6E2M3", "FLOAT6E3M2"}


@dataclass
class Case:
    name: str
    model: bytes
    data_sets: list[tuple[list[Any], list[Any]]]
    rtol: float
    atol: float
    ops: tuple[str, ...]  # op types (with a domain prefix outside the default domain), subgraphs included


def _ops_of(graph: Any) -> set[str]:
    import onnx

    out: set[str] = set()
    for n in graph.node:
        out.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}")
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out |= _ops_of(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    out |= _ops_of(g)
    return out


def _elem_types(model: Any) -> set[str]:
    import onnx

    g = model.graph
    codes = {vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.output)}
    codes |= {t.data_type for t in g.initializer}
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                codes.add(a.t.data_type)
            if a.name == "to" and a.type == onnx.AttributeProto.INT:
                codes.add(a.i)
    return {onnx.TensorProto.DataType.Name(c) for c in codes if c}


def load_cases(only: str | None = None, op_types: Iterable[str] | None = None) -> list[Case]:
    """The node test cases of the installed onnx (generated in memory), optionally filtered by a
    name regex or to cases whose ops are all in `op_types`."""
    from onnx.backend.test.loader import load_model_tests
    from onnx.numpy_helper import to_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tests = load_model_tests(kind="node")
    pat = re.compile(only) if only else None
    keep = set(op_types) if op_types is not None else None
    cases = []
    for t in tests:
        if pat is not None and not pat.search(t.name):
            continue
        ops = tuple(sorted(_ops_of(t.model.graph)))
        if keep is not None and not set(ops) <= keep:
            continue
        sets = [([to_array(x) if hasattr(x, "SerializeToString") else x for x in ins],
                 [to_array(x) if hasattr(x, "SerializeToString") else x for x in outs]) for ins, outs in t.data_sets]
        cases.append(Case(t.name, t.model.SerializeToString(), sets, t.rtol, t.atol, ops))
    return cases


def handled_ops() -> set[str]:
    from mlc.frontend.onnx_ops import HANDLERS

    return set(HANDLERS)


def exclusion(case: Case, handled: set[str]) -> str | None:
    """Why `case` is not run, or None."""
    missing = sorted(set(case.ops) - handled)
    if missing:
        return f"op(s) not in HANDLERS: {', '.join(missing)}"
    for pat, why in EXCLUDED:
        if re.search(pat, case.name):
            return why
    import onnx

    model = onnx.load_from_string(case.model)
    bad = _elem_types(model) & UNREPRESENTABLE
    if bad:
        return f"element type(s) mlc cannot represent: {', '.join(sorted(bad))}"
    if any(not vi.type.HasField("tensor_type") for vi in list(model.graph.input) + list(model.graph.output)):
        return "sequence / optional / map values: mlc has tensors only"
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0][:300] if s else ''}"


def run_case(case: Case, mode: str, specialize: bool = True) -> tuple[str, str]:
    """(status, detail) of one case on one path, in this process. A pass that needed the backend's
    value specialization says so in its detail ("specialized on ...")."""
    import onnx
    from mlc.ir.diagnostics import MlcError
    from onnx.backend.test.runner import Runner

    from mlc.backend import BACKENDS

    model = onnx.load_from_string(case.model)
    stage = "prepare"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = BACKENDS[mode].prepare(model, specialize=specialize)
            for ins, refs in case.data_sets:
                stage = "run"
                outs = rep.run(ins)
                stage = "compare"
                Runner.assert_similar_outputs(refs, list(outs), rtol=case.rtol, atol=case.atol)
    except MlcError as e:
        return "refused", f"{stage}: {_first_line(e)}"
    except AssertionError as e:
        if stage == "compare":
            return "wrong", _first_line(e)[:300].replace("\n", " ")
        return "error", f"{stage}: {_first_line(e)}"
    except Exception as e:  # noqa: BLE001 - every other failure is a bug to report
        return "error", f"{stage}: {_first_line(e)}"
    return "pass", f"specialized on {', '.join(rep.specialized_on)}" if rep.specialized_on else ""


def _worker(conn: Any, mode: str, specialize: bool) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(run_case(msg, mode, specialize))


class _Slot:
    """One worker process; replaced when it dies or hangs."""

    def __init__(self, ctx: Any, mode: str, specialize: bool) -> None:
        self.ctx, self.mode, self.specialize = ctx, mode, specialize
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.mode, self.specialize), daemon=True)
        self.proc.start()
        child.close()
        self.case: Case | None = None
        self.t0 = 0.0

    def kill(self) -> None:
        self.proc.kill()  # our own worker, by its handle
        self.proc.join(5)
        self.conn.close()


def run_cases(cases: Sequence[Case], mode: str, jobs: int = 2, timeout: float = 60.0,
              progress: bool = False, specialize: bool = True) -> dict[str, dict[str, Any]]:
    """Classify every case on one path; returns name -> {status, detail, ops, seconds}."""
    handled = handled_ops()
    out: dict[str, dict[str, Any]] = {}
    todo: list[Case] = []
    for c in cases:
        why = exclusion(c, handled)
        if why is not None:
            out[c.name] = {"status": "excluded", "detail": why, "ops": list(c.ops), "seconds": 0.0}
        else:
            todo.append(c)
    ctx = mp.get_context("spawn")
    slots = [_Slot(ctx, mode, specialize) for _ in range(max(1, min(jobs, len(todo))))] if todo else []
    queue = list(reversed(todo))
    done = 0
    try:
        while queue or any(s.case is not None for s in slots):
            for s in slots:
                if s.case is None and queue:
                    s.case, s.t0 = queue.pop(), time.monotonic()
                    s.conn.send(s.case)
            for s in slots:
                if s.case is None:
                    continue
                res: tuple[str, str] | None = None
                if s.conn.poll(0.02):
                    try:
                        res = s.conn.recv()
                    except (EOFError, OSError):
                        s.proc.join(2)
                        res = ("crash", f"worker died (exit code {s.proc.exitcode})")
                        s.kill()
                elif not s.proc.is_alive():
                    s.proc.join(1)
                    res = ("crash", f"worker died (exit code {s.proc.exitcode})")
                    s.kill()
                elif time.monotonic() - s.t0 > timeout:
                    res = ("timeout", f"over {timeout:.0f} s")
                    s.kill()
                if res is None:
                    continue
                case = s.case
                assert case is not None
                out[case.name] = {"status": res[0], "detail": res[1], "ops": list(case.ops),
                                  "seconds": round(time.monotonic() - s.t0, 3)}
                done += 1
                if progress:
                    print(f"[{mode} {done}/{len(todo)}] {case.name}: {res[0]} {res[1][:120]}", file=sys.stderr, flush=True)
                if not s.proc.is_alive() or res[0] in ("crash", "timeout"):
                    s.start()
                else:
                    s.case = None
    finally:
        for s in slots:
            if s.proc.is_alive():
                try:
                    s.conn.send(None)
                except OSError:
                    pass
                s.proc.join(5)
                if s.proc.is_alive():
                    s.kill()
    return {k: out[k] for k in sorted(out)}


def counts(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Cases per status, and `specialized`: the passes that needed the backend's value specialization."""
    c = Counter(r["status"] for r in results.values())
    out = {s: c.get(s, 0) for s in STATUSES}
    out["specialized"] = sum(1 for r in results.values() if r["status"] == "pass" and r["detail"])
    return out


def load_expected(path: Path = EXPECTED) -> dict[str, list[str]]:
    if not path.is_file():
        return {m: [] for m in MODES}
    return json.loads(path.read_text())


def compare_expected(results: dict[str, dict[str, Any]], expected: Iterable[str]) -> tuple[list[str], list[str]]:
    """(regressions: expected to pass and did not; newly passing), over the cases in `results`."""
    exp = set(expected)
    regress = sorted(n for n in results if n in exp and results[n]["status"] != "pass")
    new = sorted(n for n, r in results.items() if r["status"] == "pass" and n not in exp)
    return regress, new


def check_expected(results: dict[str, dict[str, Any]], expected: Iterable[str], mode: str, what: str,
                   record: str) -> None:
    """For tests: fail on a listed pass that no longer passes; warn about new passes (update `record`)."""
    import warnings

    regress, new = compare_expected(results, expected)
    if new:
        warnings.warn(f"{mode}: {len(new)} {what} newly pass (update {record}): {', '.join(new)}", stacklevel=3)
    assert not regress, f"{mode}: {len(regress)} {what} that passed now fail:\n" + "\n".join(
        f"  {n}: {results[n]['status']} {results[n]['detail']}" for n in regress)


def _table(all_res: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [f"{'path':<12} " + " ".join(f"{s:>8}" for s in STATUSES) + f" {'run':>6} {'total':>6}"
             + "  (pass includes N specialized)"]
    for mode, res in all_res.items():
        c = counts(res)
        run = len(res) - c["excluded"]
        lines.append(f"{mode:<12} " + " ".join(f"{c[s]:>8}" for s in STATUSES) + f" {run:>6} {len(res):>6}"
                     + f"  ({c['specialized']})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="compiled,interpreted", help="paths to run: compiled,interpreted")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    ap.add_argument("--only", help="regex on case names")
    ap.add_argument("--json", help="write the per-case classification here")
    ap.add_argument("--record", help="write the names of passing cases per path here (the expected list)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--no-specialize", action="store_true",
                    help="no value specialization in the backend: shape-fixing run-time inputs are refused")
    args = ap.parse_args(argv)
    modes = [m for m in args.mode.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}")
    t0 = time.monotonic()
    cases = load_cases(args.only)
    all_res = {m: run_cases(cases, m, args.jobs, args.timeout, args.progress,
                                not args.no_specialize) for m in modes}
    print(_table(all_res))
    print(f"{len(cases)} cases, {time.monotonic() - t0:.0f} s")
    if args.json:
        import platform

        meta = {"onnx": __import__("onnx").__version__, "python": platform.python_version(),
                "specialize": not args.no_specialize,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "counts": {m: counts(r) for m, r in all_res.items()}}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": all_res}, indent=1) + "\n")
    if args.record:
        rec = load_expected(Path(args.record)) if Path(args.record).is_file() else {}
        for m, r in all_res.items():
            rec[m] = sorted(n for n, x in r.items() if x["status"] == "pass")
        Path(args.record).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
