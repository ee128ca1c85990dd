"""Generated hostile input for every subcommand (issue 19): tests/test_bad_input.py's cases are
written by hand; these are generated from the commands themselves and from the good files.

- Options: every option of every (sub)command, read from click, gets bad values for its type
  (not a number, out of its range, nan, an unknown choice, a malformed NAME=VALUE). Each must be a
  usage error (exit 2) or a located user error (exit 1) with one error line.
- Files (conformance only): every input kind (ONNX, text IR, weights, artifact, inputs, index) is
  truncated at random offsets, has random bytes flipped, or is swapped for another kind's file.
  A mutated file may still be valid (a flipped weight is still a weight), so exit 0 is allowed; a
  crash, a traceback, an internal error (exit 3) or a changed file on failure is not.

Cases run through test_bad_input's zygote (a forked process per case, the real `mlc.cli` main), so
each is a fresh process with its own streams, directory snapshot before and after, and exit status.
`make test` runs one bad value per option (on the ONNX model and its import only); `make conformance`
runs them all, on every material, and the file mutations.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import click
import pytest
from test_bad_input import CARET, GARBAGE, HEAD, Case, Result, S, Shared, make_shared, run_all, snapshot

# a valid command line per command (the materials test_bad_input's make_shared writes), so that a
# bad option is the only thing wrong; commands not listed are swept with these arguments missing
BASE: dict[str, tuple[str, ...]] = {
    "import": (f"{S}/mlp.onnx", "-o", "o.ir"),
    "verify": (f"{S}/m.ir",),
    "opt": (f"{S}/m.ir", "-o", "o.ir"),
    "run": (f"{S}/mlp.mlc", "--inputs", f"{S}/in.npz", "-o", "o.npz"),
    "codegen": (f"{S}/m.ir", "-o", "o.mlc"),
    "build": (f"{S}/mlp.onnx", "-o", "o.mlc"),
    "bench": (f"{S}/mlp.mlc",),
    "zoo": ("mlp", "-o", "."),
    "tune": (f"{S}/m.ir", "-o", "o.ir"),
    "ann-index build": (f"{S}/base.npy", "-o", "i.bin"),
    "ann-index search": (f"{S}/idx.bin", f"{S}/q.npy", "-o", "r.npy"),
    "ann-index eval": (f"{S}/idx.bin", f"{S}/q.npy", f"{S}/gt.npy"),
    "sparse-kernel": ("spmm", "-o", "k.ir"),
}
STAGE_INPUT = (f"{S}/m.ir", "-o", "o.ir")  # every pass subcommand

# string options with a grammar of their own: a value that breaks it
STRING_BAD: dict[str, list[str]] = {
    "--dim": ["N", "=8", "N=", "N=-3", "N=a-b"],
    "--dim-bound": ["N", "N=x", "N=0"],
    "--target": ["tpu", "cuda:sm_x", "\x1b[31mcpu"],
    "--emit": ["frob", "llvm,frob"],
    "--executor": ["frob", "ray:"],
    "--format": ["frob", "ell:x", "bsr:0"],
    "--pipeline": ["nothere.yaml"],
    "--loss": ["frob", "mse:"],
}


def bad_values(p: click.Option) -> list[str]:
    """Values of `p`'s type that no command may accept."""
    t = p.type
    if isinstance(t, click.Choice):
        return ["nope"] + ([""] if "" not in t.choices and p.default != "" else [])  # "" may mean "none"
    if isinstance(t, click.IntRange):
        out = ["x", "1.5"]
        if t.min is not None:
            out.append(str(t.min - 1 if not t.min_open else t.min))
        if t.max is not None:
            out.append(str(t.max + 1 if not t.max_open else t.max))
        return out
    if isinstance(t, click.FloatRange):
        out = ["x", "nan"]
        if t.min is not None:
            out += [str(t.min - 1), "-inf"]
        if t.max is not None:
            out += [str(t.max + 1), "inf"]
        return out
    if t is click.INT or isinstance(t, click.types.IntParamType):
        return ["x", "1.5", ""]
    if t is click.FLOAT or isinstance(t, click.types.FloatParamType):
        return ["x", ""]
    return STRING_BAD.get(p.opts[0], [])


def commands() -> dict[str, click.Command]:
    from mlc.cli import commands as _  # noqa: F401  (registers subcommands)
    from mlc.cli.main import cli

    out: dict[str, click.Command] = {}

    def walk(c: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(c, click.Group):
            for n, sub in c.commands.items():
                walk(sub, path + (n,))
        else:
            out[" ".join(path)] = c

    walk(cli, ())
    return out


def option_cases(all_values: bool) -> list[Case]:
    from mlc.passes.registry import all_passes

    stages = set(all_passes())
    cases = []
    for name, cmd in sorted(commands().items()):
        base = BASE.get(name, STAGE_INPUT if name in stages else ())
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.is_flag or p.name == "help":
                continue
            values = bad_values(p)
            for k, v in enumerate(values if all_values else values[:1]):
                cases.append(Case(f"gen:{name}:{p.opts[0]}={v!r}#{k}", (*name.split(), *base, p.opts[0], v),
                                  code=-1))
    return cases


def check(case: Case, r: Result, allow_success: bool = False) -> None:
    """The contract of docs/cli.md for a generated case (exit 1 or 2 allowed: which one is the
    command's choice; exit 0 only where the input may still be valid)."""
    err = r.stderr
    where = f"\n--- {case.id} {case.argv}: exit {r.rc}\nstderr:\n{err[:3000]}"
    assert "Traceback" not in err and "Traceback" not in r.stdout, where
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", err), where
    assert r.rc in ((0, 1, 2) if allow_success else (1, 2)), where
    if r.rc == 0:
        return
    assert r.after == r.before, f"files changed: {sorted(set(r.after) ^ set(r.before))}" + where
    lines = err.rstrip("\n").split("\n")
    if r.rc == 2:
        assert sum("error:" in ln.lower() for ln in lines) == 1, where
        return
    assert r.stdout == "", where
    assert len(lines) in (1, 3) and HEAD.match(lines[0]) and lines[0].count("error:") == 1, where
    if len(lines) == 3:
        assert re.match(r"^\S+:\d+:\d+: error: ", lines[0]) and CARET.match(lines[2]), where


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    return make_shared(tmp_path_factory.mktemp("shared"))


def _run(cases: list[Case], shared: Shared, root: Path) -> dict[str, Result]:
    before = snapshot(shared.dir)
    res = run_all(cases, shared, root)
    assert snapshot(shared.dir) == before, "a failing command changed the shared inputs"
    return res


SAMPLE = option_cases(all_values=False)


def light_shared(d: Path) -> Shared:
    """The ONNX model and its import only (no artifact, no index: seconds, not a minute): a bad
    option fails before its command reads those, and the full sweep has them all."""
    from click.testing import CliRunner
    from mlc.cli.main import cli
    from mlc.frontend import zoo

    s = Shared(d)
    s.onnx = zoo.build("mlp").SerializeToString()
    (d / "mlp.onnx").write_bytes(s.onnx)
    r = CliRunner().invoke(cli, ["import", str(d / "mlp.onnx"), "-o", str(d / "m.ir")])
    assert r.exit_code == 0, r.output
    return s


@pytest.fixture(scope="module")
def sample_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    commands()  # registers the subcommands before light_shared invokes one
    return _run(SAMPLE, light_shared(tmp_path_factory.mktemp("light")), tmp_path_factory.mktemp("sample"))


@pytest.mark.parametrize("case", SAMPLE, ids=[c.id for c in SAMPLE])
def test_bad_option_value(case: Case, sample_results: dict[str, Result]) -> None:
    check(case, sample_results[case.id])


def test_every_typed_option_is_swept() -> None:
    """A new option of a checkable type is in the sweep without anyone listing it."""
    swept = {(c.id.split(":")[1], c.id.split(":")[2].split("=")[0]) for c in SAMPLE}
    for name, cmd in commands().items():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.is_flag and bad_values(p):
                assert (name, p.opts[0]) in swept


# ----- file mutations (conformance) -------------------------------------------------------------------

# (command line with FILE where the mutated file goes, the good file's name in the shared dir, file name)
FILE_USES: list[tuple[tuple[str, ...], str, str]] = [
    (("import", "FILE", "-o", "o.ir"), "mlp.onnx", "x.onnx"),
    (("build", "FILE", "-o", "o.mlc"), "mlp.onnx", "x.onnx"),
    (("verify", "FILE"), "m.ir", "x.ir"),
    (("shape-infer", "FILE", "-o", "o.ir"), "m.ir", "x.ir"),
    (("run", "FILE", "--inputs", f"{S}/in.npz", "-o", "o.npz"), "m.ir", "x.ir"),
    (("run", "FILE", "--inputs", f"{S}/in.npz", "-o", "o.npz"), "mlp.mlc", "x.mlc"),
    (("bench", "FILE", "--runs", "1"), "mlp.mlc", "x.mlc"),
    (("run", f"{S}/mlp.mlc", "--inputs", "FILE", "-o", "o.npz"), "in.npz", "x.npz"),
    (("ann-index", "search", "FILE", f"{S}/q.npy", "-o", "r.npy"), "idx.bin", "x.bin"),
    (("ann-index", "build", "FILE", "-M", "2", "-K", "16", "--no-progress", "-o", "i.bin"), "base.npy", "x.npy"),
]
GOOD = ["mlp.onnx", "m.ir", "mlp.mlc", "in.npz", "idx.bin", "base.npy"]


def file_cases(seed: int, per_use: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for argv, good, name in FILE_USES:
        for k in range(per_use):
            kind = ("truncate", "flip", "swap", "garbage")[k % 4]
            at, n, other = rng.random(), rng.randint(1, 8), rng.choice([g for g in GOOD if g != good])

            def make(s: Shared, kind: str = kind, good: str = good, at: float = at, n: int = n, other: str = other,
                     seed: int = rng.randrange(1 << 30)) -> bytes:
                data = (s.dir / good).read_bytes()
                if kind == "truncate":
                    return data[: int(len(data) * at)]
                if kind == "flip":
                    r, b = random.Random(seed), bytearray(data)
                    for _ in range(n):
                        b[r.randrange(len(b))] ^= 1 << r.randrange(8)
                    return bytes(b)
                if kind == "swap":
                    return (s.dir / other).read_bytes()
                return GARBAGE[: int(len(GARBAGE) * at)]

            cases.append(Case(f"file:{' '.join(argv[:2])}:{good}:{kind}#{k}",
                              tuple(a.replace("FILE", name) for a in argv), {name: make}, code=-1))
    return cases


# cases that fail for a known bug in a file this sweep's owner may not edit: the id's prefix, why, and
# where the fix goes (checked strictly: a fixed bug must leave this list)
KNOWN: dict[str, str] = {}


@pytest.mark.conformance
def test_generated_sweep_full(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every bad value of every option, and 24 mutations of every input kind per use."""
    opts = option_cases(all_values=True)
    files = file_cases(19, 24)
    res = _run(opts + files, shared, tmp_path_factory.mktemp("full"))
    failures, known = [], set()
    for c in opts + files:
        try:
            check(c, res[c.id], allow_success=c in files)
        except AssertionError as e:
            prefix = next((k for k in KNOWN if c.id.startswith(k)), None)
            if prefix is None:
                failures.append(str(e).split("\nassert")[0])
            known.add(prefix)
    assert not failures, f"{len(failures)} of {len(res)} cases:\n" + "\n".join(failures)
    assert known == set(KNOWN), f"fixed, take off KNOWN: {set(KNOWN) - known}"
