"""An artifact and its `--emit` listings are one output set (ir/files.write_output_set): a kill at
any point leaves the old set or the new one, never a mix, and the next write succeeds and leaves
no temp file or stale generation behind (issue 19).

The writer is killed (SIGKILL, in a forked child) before each of its file-system calls in turn, from
every kind of starting state, so every step boundary is tried; real `mlc build --emit` runs are
killed at random points under `slow`, with both models' sets built beforehand as the oracle.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlc.ir.diagnostics import MlcError
from mlc.ir.files import write_output_set

KINDS = (".mlc", ".ll", ".s")
STEPS = ("replace", "rename", "symlink", "link", "unlink", "rmdir", "mkdir")


def _visible(d: Path, stem: str = "m") -> dict[str, bytes]:
    """What a reader sees at the member names (a dangling link is an absent file)."""
    return {k: (d / f"{stem}{k}").read_bytes() for k in KINDS if (d / f"{stem}{k}").is_file()}


def _write(d: Path, tag: str, kinds: tuple[str, ...]) -> dict[str, bytes]:
    """Write set `tag` with the given member kinds; returns what a reader should then see."""
    want = {k: f"{tag}{k}".encode() for k in kinds}
    write_output_set([(d / f"m{k}", want.get(k)) for k in KINDS])
    return want


def _killed_at(d: Path, step: int, tag: str, kinds: tuple[str, ...]) -> bool:
    """Run the write in a child that SIGKILLs itself before its `step`-th file-system call; True when killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        calls = [0]

        def counted(fn):  # noqa: ANN001, ANN202
            def call(*a, **kw):  # noqa: ANN002, ANN003, ANN202
                calls[0] += 1
                if calls[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*a, **kw)
            return call

        for name in STEPS:
            setattr(os, name, counted(getattr(os, name)))
        try:
            _write(d, tag, kinds)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def _leftovers(d: Path) -> list[str]:
    gens = [p.name for p in d.iterdir() if p.name.endswith(".d")]
    return sorted([p.name for p in d.iterdir() if p.name.endswith(".tmp")] + gens[1:])


STARTS = {  # how the directory looks before the killed write
    "nothing": [],
    "plain artifact": [("a", (".mlc",))],
    "set with listings": [("a", KINDS)],
    "set with one listing": [("a", (".mlc", ".ll"))],
}
NEW = {"two listings": KINDS, "one listing": (".mlc", ".s"), "no listing": (".mlc",)}


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("new", list(NEW))
def test_kill_before_every_step_leaves_old_or_new_set(tmp_path: Path, start: str, new: str) -> None:
    if start == "nothing" and new == "no listing":
        pytest.skip("a single plain file: atomic_write_files, tested elsewhere")
    steps, old_seen, new_seen = 0, 0, 0
    while True:
        d = tmp_path / f"s{steps}"
        d.mkdir()
        old = {}
        for tag, kinds in STARTS[start]:
            old = _write(d, tag, kinds)
        if start == "plain artifact":  # a set written before this scheme: plain files at every name
            for k in KINDS[1:]:
                (d / f"m{k}").write_bytes(f"a{k}".encode())
            old = {k: f"a{k}".encode() for k in KINDS}
        steps += 1
        killed = _killed_at(d, steps, "b", NEW[new])
        seen = _visible(d)
        want = {k: f"b{k}".encode() for k in NEW[new]}
        assert seen in (old, want), f"killed before step {steps}: a mix {seen}"
        old_seen += seen == old
        new_seen += seen == want
        final = _write(d, "c", NEW[new])  # the next write succeeds and cleans up after the killed one
        assert _visible(d) == final and _leftovers(d) == [], (steps, sorted(os.listdir(d)))
        if not killed:
            break
    assert steps > 3 and old_seen and new_seen  # the kills did land on both sides of the commit


def test_set_back_to_plain_file_and_errors(tmp_path: Path) -> None:
    _write(tmp_path, "a", KINDS)
    assert (tmp_path / "m.mlc").is_symlink()
    _write(tmp_path, "b", (".mlc",))
    assert sorted(os.listdir(tmp_path)) == ["m.mlc"] and not (tmp_path / "m.mlc").is_symlink()
    (tmp_path / "m.ll").mkdir()  # a directory in a listing's place: nothing is written
    with pytest.raises(MlcError, match="m.ll"):
        _write(tmp_path, "c", KINDS)
    assert sorted(os.listdir(tmp_path)) == ["m.ll", "m.mlc"] and _visible(tmp_path) == {".mlc": b"b.mlc"}
    with pytest.raises(MlcError, match="nodir"):
        write_output_set([(tmp_path / "nodir" / "m.mlc", b"x"), (tmp_path / "nodir" / "m.ll", b"y")])


MLC = (sys.executable, "-m", "mlc.cli")


@pytest.mark.slow
@pytest.mark.conformance  # (suite time: tests/test_reliability_kill.py keeps a kill test in make test)
@pytest.mark.parametrize("seed", [19])
def test_sigkill_during_build_emit(tmp_path: Path, seed: int) -> None:
    """mlp with a symbolic and with a fixed batch (other kernels), built in turn to one output and
    killed at random points; each set in place must be one of the two, byte for byte."""
    from mlc.frontend import zoo

    (tmp_path / "mlp.onnx").write_bytes(zoo.build("mlp").SerializeToString())
    builds = {"sym": [], "fixed": ["--dim", "N=4"]}
    sets, walls = {}, []
    for name, extra in builds.items():
        t = time.monotonic()
        subprocess.run([*MLC, "build", "mlp.onnx", "-o", f"{name}.mlc", "--emit", "llvm,asm", *extra], cwd=tmp_path,
                       check=True, capture_output=True)
        walls.append(time.monotonic() - t)
        sets[name] = _visible(tmp_path, name)
    assert sets["sym"][".ll"] != sets["fixed"][".ll"]
    d = tmp_path / "out"
    d.mkdir()
    rng = random.Random(seed)
    for k in range(4):
        extra = list(builds.values())[k % 2]
        delay = max(walls) * (rng.uniform(0.8, 1.1) if k % 2 else rng.uniform(0.0, 1.1))
        p = subprocess.Popen([*MLC, "build", "../mlp.onnx", "-o", "m.mlc", "--emit", "llvm,asm", *extra], cwd=d,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        now = _visible(d)
        assert now == {} or now in sets.values(), f"a torn set after kill {k}: {sorted(now)}"
    subprocess.run([*MLC, "build", "../mlp.onnx", "-o", "m.mlc", "--emit", "llvm,asm"], cwd=d, check=True,
                   capture_output=True)
    assert _visible(d) == sets["sym"] and _leftovers(d) == []
