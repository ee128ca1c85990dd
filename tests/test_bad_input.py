"""Bad input, end to end through the real `mlc` command: every subcommand, every kind of broken file.

The contract (docs/cli.md): one clear located message (`FILE:LINE:COL: error: ...` + source line +
caret, or `mlc: error: ...`), exit 1 for user errors and 2 for usage errors, no traceback, nothing
on stdout, no output file created and nothing already on disk changed.

Each case runs in its own fresh directory; the directory is snapshotted (names and bytes, hidden
temp files included) before and after, so any file created, removed or changed fails the case.
All cases run once, in parallel, in a module fixture; each parametrized test checks one result.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

MLC = (sys.executable, "-m", "mlc.cli")
PRECIOUS = b"precious: must survive a failed command\n"


@dataclass
class Shared:
    """Good materials every case derives its bad input from (built once)."""

    dir: Path
    onnx: bytes = b""
    ir: str = ""
    weights: bytes = b""
    artifact: bytes = b""
    index: bytes = b""
    side: str = "m.weights.npz"  # the name `mlc import` gave the side file (its hash): `{side}` in a case's file names

    def ir_with(self, old: str, new: str) -> bytes:
        assert old in self.ir, old
        return self.ir.replace(old, new, 1).encode()

    def ir_for_weights(self, weights: bytes) -> bytes:
        """The module pointing at a side file `m.weights.npz` whose hash matches `weights`."""
        return re.sub(r'sha256 "[0-9a-f]+"', f'sha256 "{hashlib.sha256(weights).hexdigest()}"', self.ir).encode()


FileMaker = Callable[[Shared], bytes]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    files: dict[str, bytes | FileMaker] = field(default_factory=dict)
    code: int = 1
    stdin: bytes | FileMaker = b""
    mention: str = ""  # a substring the error line must contain (the file it is about, the key, ...)
    xfail: str = ""  # a known bug in a file this sweep's owner may not edit: why, and where the fix goes
    stdout_to: str = ""  # where the command's stdout goes (default: a file the test reads)


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    before: dict[str, bytes]
    after: dict[str, bytes]
    cwd: str = ""

    def norm_stderr(self) -> str:
        return self.stderr.replace(self.cwd, "<cwd>")


# ----- ways to break things ---------------------------------------------------------------------------

GARBAGE = bytes(range(256)) * 4 + b"\x00\xff\xfe" * 50
# a reduction across threadIdx.x that lower-tir cannot make an allreduce (a located error)
NOT_AN_UPDATE = b"""mlc.module v1

prim @bad(%x: buffer<4 x 32 x f32>, %y: buffer<4 x f32>) outputs 1 {
  for i in 0..4 thread "blockIdx.x" {
    for t in 0..32 thread "threadIdx.x" {
      block "r"(S vi = i in 0..4, R vt = t in 0..32) {
        %y[vi] = %x[vi, vt]
      }
    }
  }
}
"""


def truncated(data: bytes, frac: float = 0.5) -> bytes:
    return data[: int(len(data) * frac)]


def flipped(data: bytes, at: float) -> bytes:
    b = bytearray(data)
    i = int(len(b) * at)
    b[i] ^= 0xFF
    return bytes(b)


def npz(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays are pickled inside: mlc must refuse them
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def onnx_model(edit: Callable[[object], None]) -> FileMaker:
    def make(s: Shared) -> bytes:
        import onnx

        m = onnx.load_from_string(s.onnx)
        edit(m)
        return m.SerializeToString()

    return make


def _unsupported_op(m: object) -> None:
    m.graph.node[0].op_type = "NoSuchOpAnywhere"  # type: ignore[attr-defined]


def _no_input_shape(m: object) -> None:
    m.graph.input[0].type.tensor_type.ClearField("shape")  # type: ignore[attr-defined]


def _complex_input(m: object) -> None:
    m.graph.input[0].type.tensor_type.elem_type = 14  # type: ignore[attr-defined]  # COMPLEX64


def _dangling_input(m: object) -> None:
    m.graph.node[0].input[0] = "nothere"  # type: ignore[attr-defined]


def _bad_opset(m: object) -> None:
    m.opset_import[0].version = 3  # type: ignore[attr-defined]


def artifact_with(section: str, payload: bytes) -> FileMaker:
    """A well-formed artifact (checksums valid) whose one section holds `payload`."""

    def make(s: Shared) -> bytes:
        from mlc.runtime.artifact import dumps, loads

        art = loads(s.artifact)
        art.sections[section] = payload
        return dumps(art)

    return make


def artifact_version(s: Shared) -> bytes:
    return s.artifact[:8] + (99).to_bytes(4, "little") + s.artifact[12:]


def ir_program_edit(old: str, new: str) -> FileMaker:
    def make(s: Shared) -> bytes:
        from mlc.runtime.artifact import loads

        program = loads(s.artifact).sections["program"].decode()
        assert old in program, old
        return artifact_with("program", program.replace(old, new, 1).encode())(s)

    return make


X = np.zeros((3, 64), np.float32)
PICKLED = npz(w_2=np.array([{}], dtype=object))


def other_weights(s: Shared) -> bytes:
    """The module's side file with one constant of the wrong shape (its hash made to match)."""
    with np.load(io.BytesIO(s.weights)) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["w_2"] = np.zeros(7, np.float32)
    return npz(**arrays)


S = "{S}"  # the shared directory, substituted at run time
GOOD_IN = f"{S}/in.npz"

# ----- the sweep ----------------------------------------------------------------------------------------

FULL_DEVICE = Path("/dev/full").is_char_device()  # writes to it fail with ENOSPC
IR_STAGES = ("shape-infer", "fold-constants", "cse", "dce", "lower", "fuse")


def ir_reader_cases(cmd: tuple[str, ...], out: tuple[str, ...] = ("-o", "out.ir"), name: str = "",
                    loads_constants: bool = False) -> list[Case]:
    """Broken text modules, for every command that reads one.

    Every reader checks that the side file exists and has the hash the module names; only commands
    that load the constants can tell that a file with the right hash is not a usable .npz.
    """
    name = name or cmd[0]
    ir = Case  # short, so each case fits on a line or two
    return [
        ir(f"{name}:missing", (*cmd, "nothere.ir", *out), mention="nothere.ir"),
        ir(f"{name}:directory", (*cmd, S, *out), mention=S),
        ir(f"{name}:empty", (*cmd, "e.ir", *out), {"e.ir": b""}, mention="e.ir"),
        ir(f"{name}:garbage", (*cmd, "g.ir", *out), {"g.ir": GARBAGE}, mention="g.ir"),
        ir(f"{name}:version", (*cmd, "v.ir", *out), {"v.ir": lambda s: s.ir_with("mlc.module v1", "mlc.module v9")},
           mention="v.ir:1:"),
        ir(f"{name}:side-file-missing", (*cmd, "m.ir", *out), {"m.ir": lambda s: s.ir.encode()},
           mention="m.weights.npz"),
        ir(f"{name}:side-file-altered", (*cmd, "m.ir", *out),
           {"m.ir": lambda s: s.ir.encode(), "m.weights.npz": lambda s: flipped(s.weights, 0.7)},
           mention="m.weights.npz"),
    ] + ([
        ir(f"{name}:side-file-not-npz", (*cmd, "m.ir", *out),
           {"m.ir": lambda s: s.ir_for_weights(GARBAGE), "m.weights.npz": GARBAGE},
           mention="'m.weights.npz' is not an .npz archive"),
        ir(f"{name}:side-file-pickled", (*cmd, "m.ir", *out),
           {"m.ir": lambda s: s.ir_for_weights(PICKLED), "m.weights.npz": PICKLED}, mention="m.weights.npz"),
        ir(f"{name}:side-file-wrong-const", (*cmd, "m.ir", *out),
           {"m.ir": lambda s: s.ir_for_weights(other_weights(s)), "m.weights.npz": other_weights}, mention="w_2"),
    ] if loads_constants else [])


def ir_semantic_cases(cmd: tuple[str, ...], out: tuple[str, ...] = ("-o", "out.ir"), name: str = "") -> list[Case]:
    """Well-formed text whose meaning is wrong: bad shapes, undefined values, unknown ops."""
    name = name or cmd[0]
    shared_ir = {"m.weights.npz": lambda s: s.weights}
    return [
        Case(f"{name}:wrong-shape", (*cmd, "m.ir", *out),
             {**shared_ir, "m.ir": lambda s: s.ir_with("tensor<64 x 128 x f32> = const", "tensor<65 x 128 x f32> = const")},
             mention="m.ir:"),
        Case(f"{name}:undefined-value", (*cmd, "m.ir", *out),
             {**shared_ir, "m.ir": lambda s: s.ir_with("relu(%gemm_3)", "relu(%nothere)")}, mention="m.ir:"),
        Case(f"{name}:unknown-op", (*cmd, "m.ir", *out),
             {**shared_ir, "m.ir": lambda s: s.ir_with("relu(%gemm_3)", "frobnicate(%gemm_3)")}, mention="m.ir:"),
    ]


def output_cases(cmd: tuple[str, ...], args: tuple[str, ...], ext: str, name: str = "") -> list[Case]:
    """A good input but an output that cannot be written."""
    name = name or cmd[0]
    return [
        Case(f"{name}:out-missing-dir", (*cmd, *args, "-o", f"nodir/out{ext}")),
        Case(f"{name}:out-is-dir", (*cmd, *args, "-o", "adir"), {"adir/keep": b"x"}),
        Case(f"{name}:out-under-file", (*cmd, *args, "-o", f"afile/out{ext}"), {"afile": PRECIOUS}),
    ]


def keep_existing(cmd: tuple[str, ...], ext: str) -> Case:
    """A failing command must leave an existing output file byte-identical."""
    name = cmd[0]
    return Case(f"{name}:keeps-existing-output", (*cmd, "g.in", "-o", f"out{ext}"), {"g.in": GARBAGE, f"out{ext}": PRECIOUS})


def stage_cases() -> list[Case]:
    cases: list[Case] = []
    for st in IR_STAGES:
        cases += ir_reader_cases((st,), loads_constants=st == "fold-constants")
        cases += output_cases((st,), (f"{S}/m.ir",), ".ir")
        cases.append(keep_existing((st,), ".ir"))
        cases.append(Case(f"{st}:stdin-garbage", (st, "-o", "out.ir"), stdin=GARBAGE, mention="<stdin>"))
        cases.append(Case(f"{st}:stdin-empty", (st,), stdin=b"", mention="<stdin>"))
        if FULL_DEVICE:
            cases.append(Case(f"{st}:stdout-full", (st, f"{S}/m.ir"), stdout_to="/dev/full", mention="stdout"))
        cases.append(Case(f"{st}:unknown-option", (st, f"{S}/m.ir", "--no-such-option"), code=2))
    cases += ir_semantic_cases(("shape-infer",)) + ir_semantic_cases(("fuse",))
    cases += [
        Case("fold-constants:bad-option-type", ("fold-constants", f"{S}/m.ir", "--max-elements", "lots"), code=2),
        Case("schedule:missing", ("schedule", "nothere.ir", "-o", "out.ir"), mention="nothere.ir"),
        Case("schedule:garbage", ("schedule", "g.ir", "-o", "out.ir"), {"g.ir": GARBAGE}, mention="g.ir"),
        Case("autodiff:missing", ("autodiff", "nothere.ir", "-o", "out.ir"), mention="nothere.ir"),
        Case("autodiff:unknown-wrt", ("autodiff", f"{S}/m.ir", "--wrt", "nope", "-o", "out.ir"), mention="'nope'"),
        Case("autodiff:non-scalar-loss", ("autodiff", f"{S}/m.ir", "--loss", "mse:x", "-o", "out.ir"),
             mention="would not be a scalar"),
        Case("lower-tir:missing", ("lower-tir", "nothere.ir", "-o", "out.ir"), mention="nothere.ir"),
        Case("lower-tir:garbage", ("lower-tir", "g.ir", "-o", "out.ir"), {"g.ir": GARBAGE}, mention="g.ir"),
        Case("lower-tir:not-an-update", ("lower-tir", "x.ir", "-o", "out.ir"), {"x.ir": NOT_AN_UPDATE},
             mention="reduces across threads but is not an update"),
    ]
    return cases


def verify_cases() -> list[Case]:
    return ir_reader_cases(("verify",), (), loads_constants=True) + ir_semantic_cases(("verify",), ()) + [
        Case("verify:two-inputs", ("verify", f"{S}/m.ir", f"{S}/m.ir"), code=2),
        # terminal escapes in the input are shown escaped, never sent to the terminal
        Case("verify:escape-sequence", ("verify", "e.ir"), {"e.ir": b"x\x1b[2J\x1b]0;owned\x07"}, mention="U+001B"),
    ]


PIPELINES: dict[str, bytes] = {
    "yaml-syntax": b"name: x\npasses: [shape-infer\n  - : :\n",
    "not-mapping": b"- shape-infer\n- dce\n",
    "no-passes": b"name: x\n",
    "unknown-pass": b"name: x\npasses:\n  - shape-infer\n  - frobnicate\n",
    "unknown-option": b"name: x\npasses:\n  - fold-constants: {frob: 1}\n",
    "option-type": b"name: x\npasses:\n  - fold-constants: {max_elements: lots}\n",
    "options-not-mapping": b"name: x\npasses:\n  - fold-constants: [1, 2]\n",
    "python-tag": b"name: !!python/object/apply:os.system ['echo pwned']\npasses: [dce]\n",
    "binary": GARBAGE,
    "empty": b"",
}


PIPELINE_XFAIL: dict[str, str] = {}  # none left


def opt_cases() -> list[Case]:
    cases = ir_reader_cases(("opt", "-p", f"{S}/p.yaml")) + ir_semantic_cases(("opt", "-p", f"{S}/p.yaml"))
    cases += output_cases(("opt", "-p", f"{S}/p.yaml"), (f"{S}/m.ir",), ".ir")
    for k, text in PIPELINES.items():
        cases.append(Case(f"opt:pipeline-{k}", ("opt", f"{S}/m.ir", "-p", "p.yaml", "-o", "out.ir"), {"p.yaml": text},
                          mention="p.yaml", xfail=PIPELINE_XFAIL.get(k, "")))
    cases += [
        Case("opt:pipeline-missing", ("opt", f"{S}/m.ir", "-p", "nothere.yaml", "-o", "out.ir"), mention="nothere.yaml"),
        Case("opt:pipeline-is-dir", ("opt", f"{S}/m.ir", "-p", S, "-o", "out.ir"), mention=S),
        Case("opt:no-pipeline", ("opt", f"{S}/m.ir"), code=2),
        Case("opt:dump-dir-is-file", ("opt", f"{S}/m.ir", "-p", f"{S}/p.yaml", "--ir-dump-dir", "afile", "-o", "out.ir"),
             {"afile": PRECIOUS}, code=2),
        Case("opt:dump-dir-under-file", ("opt", f"{S}/m.ir", "-p", f"{S}/p.yaml", "--ir-dump-dir", "afile/d", "-o", "o.ir"),
             {"afile": PRECIOUS}, mention="afile/d"),
        Case("opt:keeps-existing-output", ("opt", f"{S}/m.ir", "-p", "p.yaml", "-o", "out.ir"),
             {"p.yaml": PIPELINES["unknown-pass"], "out.ir": PRECIOUS}, mention="p.yaml"),
    ]
    return cases


def import_cases() -> list[Case]:
    cases = [
        Case("import:missing", ("import", "nothere.onnx", "-o", "m.ir"), mention="nothere.onnx"),
        Case("import:directory", ("import", S, "-o", "m.ir"), mention="is a directory"),
        Case("import:empty", ("import", "e.onnx", "-o", "m.ir"), {"e.onnx": b""}, mention="e.onnx"),
        Case("import:garbage", ("import", "g.onnx", "-o", "m.ir"), {"g.onnx": GARBAGE}, mention="g.onnx"),
        Case("import:unsupported-op", ("import", "u.onnx", "-o", "m.ir"), {"u.onnx": onnx_model(_unsupported_op)},
             mention="NoSuchOpAnywhere"),
        Case("import:old-opset", ("import", "o.onnx", "-o", "m.ir"), {"o.onnx": onnx_model(_bad_opset)}, mention="o.onnx"),
        Case("import:no-input-shape", ("import", "s.onnx", "-o", "m.ir"), {"s.onnx": onnx_model(_no_input_shape)},
             mention="s.onnx"),
        Case("import:complex-input", ("import", "c.onnx", "-o", "m.ir"), {"c.onnx": onnx_model(_complex_input)},
             mention="c.onnx"),
        Case("import:dangling-input", ("import", "d.onnx", "-o", "m.ir"), {"d.onnx": onnx_model(_dangling_input)},
             mention="d.onnx"),
        Case("import:dim-not-in-model", ("import", f"{S}/mlp.onnx", "--dim", "Q=q", "-o", "m.ir"),
             mention="mlp.onnx: error: --dim Q: no such dynamic axis"),
        Case("build:dim-not-in-model", ("build", f"{S}/mlp.onnx", "--dim", "x:7=q", "-o", "m.mlc"),
             mention="--dim x:7: no such dynamic axis"),
        Case("import:bad-dim-syntax", ("import", f"{S}/mlp.onnx", "--dim", "N"), code=2),
        Case("import:bad-dim-symbol", ("import", f"{S}/mlp.onnx", "--dim", "N=1x"), code=2),
        Case("import:no-model", ("import",), code=2),
        Case("import:keeps-existing-output", ("import", "g.onnx", "-o", "m.ir"), {"g.onnx": GARBAGE, "m.ir": PRECIOUS},
             mention="g.onnx"),
        Case("import:weights-path-is-dir", ("import", f"{S}/mlp.onnx", "-o", "m.ir"), {"{side}/x": b""},
             mention=".weights.npz"),
        Case("import:keeps-existing-weights", ("import", "g.onnx", "-o", "m.ir"),
             {"g.onnx": GARBAGE, "m.weights.npz": PRECIOUS}, mention="g.onnx"),
    ]
    for frac in (0.1, 0.5, 0.9, 0.999):
        cases.append(Case(f"import:truncated-{frac}", ("import", "t.onnx", "-o", "m.ir"),
                          {"t.onnx": lambda s, f=frac: truncated(s.onnx, f)}, mention="t.onnx"))
    for at in (0.0, 0.001):  # the protobuf framing near the start (a flip inside weight data is undetectable)
        cases.append(Case(f"import:bitflip-{at}", ("import", "b.onnx", "-o", "m.ir"),
                          {"b.onnx": lambda s, a=at: flipped(s.onnx, a)}, mention="b.onnx"))
    cases += output_cases(("import",), (f"{S}/mlp.onnx",), ".ir")
    return cases


def build_cases() -> list[Case]:
    cases = [
        Case("build:missing-onnx", ("build", "nothere.onnx", "-o", "m.mlc"), mention="nothere.onnx"),
        Case("build:dir-onnx", ("build", "d.onnx", "-o", "m.mlc"), {"d.onnx/x": b""}, mention="'d.onnx': is a directory"),
        Case("build:truncated-onnx", ("build", "t.onnx", "-o", "m.mlc"), {"t.onnx": lambda s: truncated(s.onnx)},
             mention="t.onnx"),
        Case("build:unsupported-op", ("build", "u.onnx", "-o", "m.mlc"), {"u.onnx": onnx_model(_unsupported_op)},
             mention="NoSuchOpAnywhere"),
        Case("build:bad-target", ("build", f"{S}/mlp.onnx", "--target", "tpu", "-o", "m.mlc"), mention="unknown target 'tpu'"),
        Case("build:bad-emit", ("build", f"{S}/mlp.onnx", "--emit", "pdf", "-o", "m.mlc"), code=2),
        Case("build:bad-dim-bound", ("build", f"{S}/mlp.onnx", "--dim-bound", "N=big", "-o", "m.mlc"), code=2),
        Case("build:no-output", ("build", f"{S}/mlp.onnx"), code=2),
        Case("build:pipeline-missing", ("build", f"{S}/mlp.onnx", "-p", "nothere.yaml", "-o", "m.mlc"),
             mention="nothere.yaml"),
        Case("build:pipeline-unknown-pass", ("build", f"{S}/mlp.onnx", "-p", "p.yaml", "-o", "m.mlc"),
             {"p.yaml": PIPELINES["unknown-pass"]}, mention="p.yaml"),
        Case("build:db-missing", ("build", f"{S}/mlp.onnx", "--db", "nothere.jsonl", "-o", "m.mlc"), mention="nothere.jsonl"),
        Case("build:db-garbage", ("build", f"{S}/mlp.onnx", "--db", "g.jsonl", "-o", "m.mlc"), {"g.jsonl": GARBAGE},
             mention="g.jsonl"),
        Case("build:db-malformed", ("build", f"{S}/mlp.onnx", "--db", "g.jsonl", "-o", "m.mlc"), {"g.jsonl": b"{not json\n{x\n"},
             mention="g.jsonl:1"),
        Case("build:keeps-existing-output", ("build", "t.onnx", "-o", "m.mlc"),
             {"t.onnx": lambda s: truncated(s.onnx), "m.mlc": PRECIOUS}, mention="t.onnx"),
    ]
    cases += ir_reader_cases(("build",), ("-o", "m.mlc"), loads_constants=True)
    cases += output_cases(("build",), (f"{S}/mlp.onnx",), ".mlc")
    return cases


def codegen_cases() -> list[Case]:
    return ir_reader_cases(("codegen",), ("-o", "m.mlc"), loads_constants=True) + output_cases(("codegen",), (f"{S}/m.ir",), ".mlc") + [
        Case("codegen:emit-path-is-dir", ("codegen", f"{S}/m.ir", "--emit", "llvm", "-o", "m.mlc"), {"m.ll/x": b""},
             mention="m.ll"),
        Case("codegen:bad-target", ("codegen", f"{S}/m.ir", "--target", "tpu", "-o", "m.mlc"), mention="tpu"),
        Case("codegen:bad-emit", ("codegen", f"{S}/m.ir", "--emit", "llvm,pdf", "-o", "m.mlc"), code=2),
        Case("codegen:no-output", ("codegen", f"{S}/m.ir"), code=2),
        Case("codegen:keeps-existing-output", ("codegen", "g.ir", "-o", "m.mlc"), {"g.ir": GARBAGE, "m.mlc": PRECIOUS},
             mention="g.ir"),
    ]


BAD_INPUTS: dict[str, tuple[bytes | FileMaker, str]] = {  # name -> (inputs .npz, what the message names)
    "missing-key": (npz(y=X), "x"),
    "extra-key": (npz(x=X, y=X), "y"),
    "wrong-dtype": (npz(x=X.astype(np.float64)), "x"),
    "int-dtype": (npz(x=X.astype(np.int32)), "x"),
    "wrong-rank": (npz(x=X[0]), "x"),
    "wrong-dim": (npz(x=np.zeros((3, 63), np.float32)), "dim 1 is 63, but the type says 64"),
    "pickled": (npz(x=np.array([{"a": 1}], dtype=object)), "in.npz"),
    "not-zip": (GARBAGE, "'in.npz' is not an .npz archive"),
    "empty": (b"", "'in.npz' is not an .npz archive (empty file)"),
    "truncated": (truncated(npz(x=X)), "in.npz"),
    "npy-not-npz": (npy(X), "in.npz"),
}


def run_cases() -> list[Case]:
    cases: list[Case] = []
    for target, model in (("ir", f"{S}/m.ir"), ("mlc", f"{S}/mlp.mlc")):
        for k, (data, mention) in BAD_INPUTS.items():
            cases.append(Case(f"run-{target}:inputs-{k}", ("run", model, "--inputs", "in.npz", "-o", "out.npz"),
                              {"in.npz": data}, mention=mention))
        cases += [
            Case(f"run-{target}:inputs-missing", ("run", model, "--inputs", "nothere.npz"), mention="nothere.npz"),
            Case(f"run-{target}:inputs-devnull", ("run", model, "--inputs", "/dev/null"), mention="(empty file)"),
            Case(f"run-{target}:inputs-dir", ("run", model, "--inputs", S), mention=S),
            Case(f"run-{target}:no-inputs", ("run", model, "-o", "out.npz"), mention="x"),
            Case(f"run-{target}:bad-func", ("run", model, "--inputs", GOOD_IN, "--func", "nothere", "-o", "out.npz"),
                 mention="nothere"),
            Case(f"run-{target}:keeps-existing-output", ("run", model, "--inputs", "in.npz", "-o", "out.npz"),
                 {"in.npz": npz(y=X), "out.npz": PRECIOUS}, mention="x"),
        ]
        cases += output_cases(("run",), (model, "--inputs", GOOD_IN), ".npz", f"run-{target}")
    cases += ir_reader_cases(("run",), ("--inputs", GOOD_IN, "-o", "out.npz"), loads_constants=True)
    cases += artifact_cases(("run",), ("--inputs", GOOD_IN, "-o", "out.npz"))
    cases.append(Case("run:no-module", ("run",), code=2))
    return cases


def artifact_cases(cmd: tuple[str, ...], rest: tuple[str, ...]) -> list[Case]:
    name = cmd[0]
    arts: dict[str, tuple[bytes | FileMaker, str]] = {
        "empty": (b"", "a.mlc: not a valid mlc artifact"),
        "truncated-header": (lambda s: s.artifact[:40], "a.mlc"),
        "truncated-payload": (lambda s: truncated(s.artifact, 0.8), "a.mlc"),
        "truncated-last-byte": (lambda s: s.artifact[:-1], "a.mlc"),
        "flip-header": (lambda s: flipped(s.artifact, 0.002), "a.mlc"),
        "flip-payload": (lambda s: flipped(s.artifact, 0.9), "a.mlc"),
        "version": (artifact_version, "a.mlc"),
        "program-garbage": (artifact_with("program", b"not ir at all"), "a.mlc"),
        "program-binary": (artifact_with("program", GARBAGE), "a.mlc"),
        "program-wrong-shape": (ir_program_edit("x: tensor<N x 64 x f32>", "x: tensor<N x 64 x f32, 7>"), "a.mlc"),
        "params-not-npz": (artifact_with("params", GARBAGE), "a.mlc: the artifact's parameter section is not an .npz"),
        "params-pickled": (artifact_with("params", npz(w=np.array([{}], dtype=object))), "a.mlc"),
        "params-missing-const": (artifact_with("params", npz(nothing=X)), "a.mlc"),
        "object-garbage": (artifact_with("object", GARBAGE), "a.mlc"),
    }
    return [Case(f"{name}:artifact-{k}", (*cmd, "a.mlc", *rest), {"a.mlc": data}, mention=m)
            for k, (data, m) in arts.items()]


def bench_cases() -> list[Case]:
    art = f"{S}/mlp.mlc"
    return artifact_cases(("bench",), ("--shape", "N=2", "--runs", "1")) + [
        Case("bench:missing", ("bench", "nothere.mlc", "--shape", "N=2"), mention="nothere.mlc"),
        Case("bench:directory", ("bench", S, "--shape", "N=2"), mention=S),
        Case("bench:text-ir", ("bench", f"{S}/m.ir", "--shape", "N=2"), mention="m.ir"),
        Case("bench:shape-syntax", ("bench", art, "--shape", "N"), code=2),
        Case("bench:shape-negative", ("bench", art, "--shape", "N=-2"), code=2),
        Case("bench:shape-unbound", ("bench", art, "--runs", "1"), mention="N"),
        Case("bench:shape-unknown-dim", ("bench", art, "--shape", "N=2", "--shape", "Q=3", "--runs", "1"), mention="Q"),
        Case("bench:runs-zero", ("bench", art, "--shape", "N=2", "--runs", "0"), code=2),
        Case("bench:runs-not-int", ("bench", art, "--shape", "N=2", "--runs", "many"), code=2),
        Case("bench:onnx-missing", ("bench", art, "--shape", "N=2", "--runs", "1", "--onnx", "nothere.onnx"),
             mention="nothere.onnx"),
        Case("bench:onnx-garbage", ("bench", art, "--shape", "N=2", "--runs", "1", "--onnx", "g.onnx"),
             {"g.onnx": GARBAGE}, mention="g.onnx"),
    ]


def zoo_cases() -> list[Case]:
    return [
        Case("zoo:unknown-model", ("zoo", "nothere", "-o", "models"), mention="nothere"),
        Case("zoo:out-is-file", ("zoo", "mlp", "-o", "afile"), {"afile": PRECIOUS}, code=2),
        Case("zoo:out-under-file", ("zoo", "mlp", "-o", "afile/models"), {"afile": PRECIOUS}, mention="afile"),
        Case("zoo:no-output", ("zoo", "mlp"), code=2),
    ]


def ann_cases() -> list[Case]:
    idx, q = f"{S}/idx.bin", f"{S}/q.npy"
    small = ("-M", "2", "-K", "16", "--no-progress")
    index_breaks: dict[str, bytes | FileMaker] = {
        "empty": b"",
        "garbage": GARBAGE,
        "truncated": lambda s: truncated(s.index),
        "flipped": lambda s: flipped(s.index, 0.5),
        "npz-not-index": npz(x=X),
    }
    cases = [
        Case("ann-build:missing-base", ("ann-index", "build", "nothere.npy", *small, "-o", "i.bin"), mention="nothere.npy"),
        Case("ann-build:base-garbage-fvecs", ("ann-index", "build", "b.fvecs", *small, "-o", "i.bin"),
             {"b.fvecs": GARBAGE}, mention="b.fvecs"),
        Case("ann-build:base-truncated-fvecs", ("ann-index", "build", "b.fvecs", *small, "-o", "i.bin"),
             {"b.fvecs": np.concatenate([np.full((5, 1), 8, "<i4").view("<f4"), np.ones((5, 8), "<f4")], 1).tobytes()[:-3]},
             mention="b.fvecs"),
        Case("ann-build:base-pickled", ("ann-index", "build", "b.npy", *small, "-o", "i.bin"),
             {"b.npy": npy(np.array([[{}]], dtype=object))}, mention="b.npy"),
        Case("ann-build:base-1d", ("ann-index", "build", "b.npy", *small, "-o", "i.bin"),
             {"b.npy": npy(np.ones(64, np.float32))}, mention="b.npy"),
        Case("ann-build:base-ext", ("ann-index", "build", "b.txt", *small, "-o", "i.bin"), {"b.txt": b"1 2 3\n"},
             mention="b.txt"),
        Case("ann-build:base-too-small", ("ann-index", "build", "b.npy", *small, "-o", "i.bin"),
             {"b.npy": npy(np.ones((3, 8), np.float32))}, mention="got 3"),
        Case("ann-build:base-nan", ("ann-index", "build", "b.npy", *small, "-o", "i.bin"),
             {"b.npy": npy(np.full((64, 8), np.nan, np.float32))}, mention="b.npy: error: base vectors: contains NaN"),
        Case("ann-build:codebooks-zero", ("ann-index", "build", f"{S}/base.npy", "-M", "0", "-K", "16", "-o", "i.bin"),
             code=2, mention="--codebooks"),
        Case("ann-build:codebooks-huge", ("ann-index", "build", f"{S}/base.npy", "-M", "100000", "-K", "16", "-o",
                                          "i.bin"), code=2, mention="--codebooks"),
        Case("ann-build:train-size-negative", ("ann-index", "build", f"{S}/base.npy", *small, "--train-size", "-5",
                                               "-o", "i.bin"), code=2, mention="--train-size"),
        Case("ann-build:sweeps-negative", ("ann-index", "build", f"{S}/base.npy", *small, "--method", "da", "--sweeps",
                                           "-1", "-o", "i.bin"), code=2, mention="--sweeps"),
        Case("ann-build:seed-negative", ("ann-index", "build", f"{S}/base.npy", *small, "--seed", "-1", "-o", "i.bin"),
             code=2, mention="--seed"),
        Case("ann-build:pq-indivisible", ("ann-index", "build", f"{S}/base.npy", "--method", "pq", "-M", "3", "-K", "16",
                                          "-o", "i.bin"), mention="3"),
        Case("ann-build:train-size-zero", ("ann-index", "build", f"{S}/base.npy", *small, "--train-size", "0",
                                           "-o", "i.bin"), code=2, mention="train"),
        Case("ann-build:codewords-huge", ("ann-index", "build", f"{S}/base.npy", "-M", "2", "-K", "100000", "-o", "i.bin"),
             code=2, mention="100000"),
        Case("ann-build:beam-zero", ("ann-index", "build", f"{S}/base.npy", *small, "-L", "0", "-o", "i.bin"), code=2,
             mention="beam"),
        Case("ann-build:out-missing-dir", ("ann-index", "build", f"{S}/base.npy", *small, "-o", "nodir/i.bin"),
             mention="nodir"),
        Case("ann-build:out-is-dir", ("ann-index", "build", f"{S}/base.npy", *small, "-o", "adir"), {"adir/k": b""}, code=2),
        Case("ann-build:ir-path-is-dir", ("ann-index", "build", f"{S}/base.npy", *small, "-o", "i.bin"),
             {"i.bin.ir/k": b""}, mention="i.bin.ir"),
        Case("ann-build:bad-method", ("ann-index", "build", f"{S}/base.npy", "--method", "lsh", "-o", "i.bin"), code=2),
        Case("ann-search:wrong-dim-queries", ("ann-index", "search", idx, "q.npy", "-o", "r.npy"),
             {"q.npy": npy(np.ones((4, 7), np.float32))}, mention="q.npy: error: queries: dimension 7"),
        Case("ann-search:queries-missing", ("ann-index", "search", idx, "nothere.npy", "-o", "r.npy"), mention="nothere.npy"),
        Case("ann-search:queries-garbage", ("ann-index", "search", idx, "q.fvecs", "-o", "r.npy"), {"q.fvecs": GARBAGE},
             mention="q.fvecs"),
        Case("ann-search:index-missing", ("ann-index", "search", "nothere.bin", q, "-o", "r.npy"), mention="nothere.bin"),
        Case("ann-search:index-dir", ("ann-index", "search", S, q, "-o", "r.npy"), code=2),
        Case("ann-search:result-ext", ("ann-index", "search", idx, q, "-o", "r.txt"), mention="r.txt"),
        Case("ann-search:rerank-negative", ("ann-index", "search", idx, q, "--rerank", "-3", "-o", "r.npy"), code=2),
        Case("ann-search:k-zero", ("ann-index", "search", idx, q, "--k", "0", "-o", "r.npy"), code=2, mention="k"),
        Case("ann-search:k-huge", ("ann-index", "search", idx, q, "--k", str(2**40), "-o", "r.npy"), mention="--k"),
        Case("ann-search:beam-zero", ("ann-index", "search", idx, q, "--beam", "0", "-o", "r.npy"), code=2, mention="beam"),
        Case("ann-search:rerank-no-base", ("ann-index", "search", f"{S}/idx-nobase.bin", q, "--rerank", "5", "-o", "r.npy"),
             mention="--keep-base"),
        Case("ann-search:out-missing-dir", ("ann-index", "search", idx, q, "-o", "nodir/r.npy"), mention="nodir"),
        Case("ann-search:keeps-existing-output", ("ann-index", "search", idx, "q.npy", "-o", "r.npy"),
             {"q.npy": npy(np.ones((4, 7), np.float32)), "r.npy": PRECIOUS}, mention="q.npy: error: queries"),
        Case("ann-eval:gt-rows", ("ann-index", "eval", idx, q, "gt.ivecs"),
             {"gt.ivecs": lambda s: ivecs(np.zeros((3, 10), np.int32))}, mention="ground truth"),
        Case("ann-eval:gt-range", ("ann-index", "eval", idx, q, "gt.npy"),
             {"gt.npy": npy(np.full((4, 10), 10**6, np.int32))}, mention="ground truth"),
        Case("ann-eval:gt-float", ("ann-index", "eval", idx, q, "gt.npy"),
             {"gt.npy": npy(np.zeros((4, 10), np.float32))}, mention="ground truth"),
        Case("ann-eval:wrong-dim-queries", ("ann-index", "eval", idx, "q.npy", f"{S}/gt.npy"),
             {"q.npy": npy(np.ones((4, 7), np.float32))}, mention="q.npy: error: queries: dimension 7"),
        Case("ann-eval:gt-missing", ("ann-index", "eval", idx, q, "nothere.ivecs"), mention="nothere.ivecs"),
    ]
    for k, data in index_breaks.items():
        cases.append(Case(f"ann-search:index-{k}", ("ann-index", "search", "i.bin", q, "-o", "r.npy"), {"i.bin": data},
                          mention="i.bin"))
        cases.append(Case(f"ann-eval:index-{k}", ("ann-index", "eval", "i.bin", q, f"{S}/gt.npy"), {"i.bin": data},
                          mention="i.bin"))
    return cases


def ivecs(a: np.ndarray) -> bytes:
    n, d = a.shape
    return np.concatenate([np.full((n, 1), d, "<i4"), a.astype("<i4")], 1).tobytes()


def generated_pass_cases(hand: list[Case]) -> list[Case]:
    """Every registered pass is a subcommand: one without hand-written cases gets the broken-module
    cases of its reader (a pass added later is swept without anyone listing it)."""
    from mlc.passes.registry import all_passes

    swept = {c.argv[0] for c in hand}
    # side-file cases are left out: a pass may refuse its options before it reads the constants
    return [c for name in sorted(all_passes()) if name not in swept for c in
            ir_reader_cases((name,)) + [Case(f"{name}:unknown-option", (name, f"{S}/m.ir", "--no-such-option"), code=2)]
            if ":side-file" not in c.id]


def misc_cases() -> list[Case]:
    return [
        Case("train:missing", ("train", "nothere.ir", "--data", "d.npz", "-o", "t.ir"), mention="nothere.ir"),
        Case("train:data-missing", ("train", f"{S}/m.ir", "--data", "nothere.npz", "-o", "t.ir"),
             mention="nothere.npz"),
        Case("export:missing", ("export", "nothere.ir", "--onnx", f"{S}/mlp.onnx", "-o", "y.onnx"),
             mention="nothere.ir"),
        Case("export:no-onnx-option", ("export", f"{S}/m.ir", "-o", "y.onnx"), code=2),
        Case("doctor:extra-argument", ("doctor", "x"), code=2),
        Case("doctor:unknown-option", ("doctor", "--frob"), code=2),
        Case("mlc:unknown-command", ("frobnicate",), code=2),
        Case("ann-index:unknown-command", ("ann-index", "frob"), code=2),
    ]


def sparse_cases() -> list[Case]:
    """sparse-lower, sparse-kernel, sparse-inputs (docs/sparse.md)."""
    import io

    def csr(indptr: list[int]) -> bytes:  # a scipy.sparse.save_npz file with the given indptr
        buf = io.BytesIO()
        np.savez(buf, format=np.array(b"csr"), shape=np.array([3, 4]), indptr=np.array(indptr, np.int32),
                 indices=np.array([0, 1, 2], np.int32), data=np.ones(3, np.float32))
        return buf.getvalue()

    return [
        Case("sparse-lower:missing", ("sparse-lower", "nothere.ir", "-o", "out.ir"), mention="nothere.ir"),
        Case("sparse-lower:bad-stage", ("sparse-lower", f"{S}/m.ir", "--stage", "4", "-o", "out.ir"),
             mention="--stage must be 2 or 3"),
        Case("sparse-kernel:bad-format", ("sparse-kernel", "spmm", "--format", "ell:0", "-o", "k.ir"),
             mention="unknown sparse format"),
        Case("sparse-kernel:unknown-op", ("sparse-kernel", "frob", "-o", "k.ir"), code=2),
        Case("sparse-inputs:garbage", ("sparse-inputs", "a.npz", "-o", "g.npz"), {"a.npz": GARBAGE}, mention="a.npz"),
        Case("sparse-inputs:not-monotone", ("sparse-inputs", "a.npz", "-o", "g.npz"), {"a.npz": csr([0, 2, 1, 3])},
             mention="indptr is not monotone"),
    ]


CASES: list[Case] = (stage_cases() + verify_cases() + opt_cases() + import_cases() + build_cases() + codegen_cases()
                     + run_cases() + bench_cases() + zoo_cases() + ann_cases() + misc_cases() + sparse_cases())
CASES += generated_pass_cases(CASES)
assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"

# ----- running -------------------------------------------------------------------------------------------


ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def mlc(*args: str, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*MLC, *args], cwd=cwd, input=stdin, capture_output=True, env=ENV, timeout=120)


# `python -m mlc.cli` spends ~0.5 s importing (numpy, scipy, the op registry) before it looks at its
# arguments; 350 cases of that would take minutes on 2 cores. So one process imports exactly what
# `python -m mlc.cli` imports, then forks a child per case that redirects fds 0/1/2, chdirs, and runs
# the same `mlc.cli.__main__` with the case's argv: a fresh process per case with the real exit
# status, streams and files, minus the import cost. test_zygote_matches_real_binary checks that
# this agrees with real `python -m mlc.cli` runs.
ZYGOTE = r"""
import json, os, runpy, sys
import mlc.cli.commands, mlc.cli.main  # what `python -m mlc.cli` imports before parsing argv
jobs, workers, running, done = json.load(open(sys.argv[1])), int(sys.argv[2]), {}, {}

def start(job):
    pid = os.fork()
    if pid:
        running[pid] = job["id"]
        return
    code = 3
    try:
        os.chdir(job["cwd"])
        for fd, name, mode in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY | os.O_CREAT),
                               (2, "stderr", os.O_WRONLY | os.O_CREAT)):
            os.dup2(os.open(job[name], mode, 0o644), fd)
        sys.argv = ["mlc", *job["argv"]]
        try:
            runpy.run_module("mlc.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)

for job in jobs:
    while len(running) >= workers:
        pid, status = os.wait()
        done[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    start(job)
while running:
    pid, status = os.wait()
    done[running.pop(pid)] = os.waitstatus_to_exitcode(status)
json.dump(done, open(sys.argv[1] + ".rc", "w"))
"""


def snapshot(d: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel + ("/" if p.is_dir() else "")] = b"" if p.is_dir() else p.read_bytes()
    return out


def make_shared(d: Path) -> Shared:
    """The good materials, each made by the real command once."""
    from mlc.frontend import zoo

    s = Shared(d)
    s.onnx = zoo.build("mlp").SerializeToString()
    (d / "mlp.onnx").write_bytes(s.onnx)
    rng = np.random.default_rng(0)
    np.save(d / "base.npy", rng.standard_normal((256, 8)).astype(np.float32))
    np.save(d / "q.npy", rng.standard_normal((4, 8)).astype(np.float32))
    np.save(d / "gt.npy", rng.integers(0, 256, (4, 10)).astype(np.int32))
    np.savez(d / "in.npz", x=rng.standard_normal((3, 64)).astype(np.float32))
    (d / "p.yaml").write_text("name: t\npasses:\n  - shape-infer\n  - dce\n")
    small = ("-M", "2", "-K", "16", "--no-progress")
    jobs = [
        ("import", "mlp.onnx", "-o", "m.ir"),
        ("build", "mlp.onnx", "-o", "mlp.mlc"),
        ("ann-index", "build", "base.npy", *small, "-o", "idx.bin"),
        ("ann-index", "build", "base.npy", *small, "--no-keep-base", "-o", "idx-nobase.bin"),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for r in pool.map(lambda a: mlc(*a, cwd=d), jobs):
            assert r.returncode == 0, r.stderr.decode()
    (side,) = d.glob("m.*.weights.npz")  # named by its hash: the cases name it m.weights.npz
    s.ir = (d / "m.ir").read_text().replace(f'"{side.name}"', '"m.weights.npz"')
    s.weights = side.read_bytes()
    s.side = side.name
    s.artifact = (d / "mlp.mlc").read_bytes()
    s.index = (d / "idx.bin").read_bytes()
    return s


def prepare(case: Case, shared: Shared, root: Path) -> dict[str, object]:
    """The case's fresh directory with its files, and the job the zygote runs."""
    d = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", case.id)
    io_dir = root.parent / (root.name + "-io") / d.name
    d.mkdir()
    io_dir.mkdir(parents=True)
    for name, data in case.files.items():
        p = d / name.replace("{side}", shared.side)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data(shared) if callable(data) else data)
    (io_dir / "stdin").write_bytes(case.stdin(shared) if callable(case.stdin) else case.stdin)
    return {"id": case.id, "cwd": str(d), "argv": [a.replace(S, str(shared.dir)) for a in case.argv],
            "stdin": str(io_dir / "stdin"), "stdout": case.stdout_to or str(io_dir / "stdout"),
            "stderr": str(io_dir / "stderr")}


def _read_out(p: Path) -> str:
    return p.read_text(errors="replace") if p.is_file() else ""


def run_all(cases: list[Case], shared: Shared, root: Path) -> dict[str, Result]:
    jobs = [prepare(c, shared, root) for c in cases]
    before = {j["id"]: snapshot(Path(str(j["cwd"]))) for j in jobs}
    spec = root.parent / (root.name + "-jobs.json")
    spec.write_text(json.dumps(jobs))
    workers = max(2, os.cpu_count() or 2)
    r = subprocess.run([sys.executable, "-c", ZYGOTE, str(spec), str(workers)], env=ENV, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    rcs = json.loads(Path(f"{spec}.rc").read_text())
    return {str(j["id"]): Result(rcs[j["id"]], _read_out(Path(str(j["stdout"]))),
                                 Path(str(j["stderr"])).read_text(errors="replace"), before[str(j["id"])],
                                 snapshot(Path(str(j["cwd"]))), str(j["cwd"])) for j in jobs}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    return make_shared(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def results(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    before = snapshot(shared.dir)
    res = run_all(CASES, shared, tmp_path_factory.mktemp("cases"))
    assert snapshot(shared.dir) == before, "a failing command changed the shared inputs"
    return res


CARET = re.compile(r"^ *\^$")
HEAD = re.compile(r"^(mlc: error: |\S.*?: error: )\S")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input(case: Case, results: dict[str, Result], shared: Shared) -> None:
    r = results[case.id]
    err = r.stderr
    where = f"\n--- {case.id}: exit {r.rc}\nstderr:\n{err}\nstdout:\n{r.stdout[:2000]}"
    assert "Traceback" not in err and "Traceback" not in r.stdout, where
    assert "unsafely" not in err, where  # numpy's advice for non-zip files: never pass it on
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", err), where  # no control characters reach the terminal
    assert r.rc == case.code, where
    assert r.stdout == "", where
    assert r.after == r.before, f"files changed: {sorted(set(r.after) ^ set(r.before))}" + where
    lines = err.rstrip("\n").split("\n")
    if case.code == 2:  # click's usage message: Usage/Try lines, then exactly one `Error:` line
        assert sum("error:" in ln.lower() for ln in lines) == 1, where
        return
    assert len(lines) in (1, 3), where  # one line, or a located line + source line + caret
    assert HEAD.match(lines[0]) and lines[0].count("error:") == 1, where
    if len(lines) == 3:
        assert re.match(r"^\S+:\d+:\d+: error: ", lines[0]) and CARET.match(lines[2]), where
    assert case.mention.replace(S, str(shared.dir)) in lines[0], where


def test_sweep_covers_every_subcommand() -> None:
    from mlc.cli import commands  # noqa: F401  (registers subcommands)
    from mlc.cli.main import cli

    swept = {c.argv[0] for c in CASES}
    missing = set(cli.commands) - swept - {"tune"}  # tune: searched by its own tests (needs a scheduled module)
    assert not missing, missing


REAL = ("verify:garbage", "import:truncated-0.5", "run-mlc:inputs-wrong-dim", "run:artifact-flip-payload",
        "opt:pipeline-unknown-pass", "ann-search:index-garbage", "shape-infer:stdin-garbage", "bench:shape-syntax")


@pytest.mark.parametrize("case_id", REAL)
def test_zygote_matches_real_binary(case_id: str, results: dict[str, Result], shared: Shared,
                                    tmp_path: Path) -> None:
    """A sample of cases, rerun as real `python -m mlc.cli` processes, give the same result."""
    case = next(c for c in CASES if c.id == case_id)
    real = run_real(case, shared, tmp_path)
    z = results[case_id]
    assert (real.rc, real.stdout, real.after == real.before) == (z.rc, z.stdout, z.after == z.before)
    assert real.norm_stderr() == z.norm_stderr()


def run_real(case: Case, shared: Shared, root: Path) -> Result:
    (root / "cases").mkdir()
    job = prepare(case, shared, root / "cases")
    d = Path(str(job["cwd"]))
    before = snapshot(d)
    r = mlc(*job["argv"], cwd=d, stdin=Path(str(job["stdin"])).read_bytes())  # type: ignore[arg-type]
    return Result(r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"), before,
                  snapshot(d), str(d))


def test_output_to_a_pipe_is_written_in_place(shared: Shared, tmp_path: Path) -> None:
    """`-o FIFO` (like -o /dev/stdout) is written into, not replaced by a regular file."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = mlc("shape-infer", str(shared.dir / "m.ir"), "-o", str(fifo), cwd=tmp_path)
    reader.join(timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    assert fifo.is_fifo() and got and got[0].startswith(b"mlc.module v1\n")
