"""What a wheel needs, checked without building one (`make wheel-check` builds and uses a real wheel):
every package folder is listed in pyproject.toml, every shipped data file is matched by package-data,
the pipelines are found through importlib.resources, and no library module finds files relative to
the source tree."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
LIBRARY = ("mlc", "cli", "ir", "passes", "codegen", "runtime", "frontend", "ann", "configs")


def _package_of(folder: Path) -> str | None:
    """The installed package name of a source folder, through [tool.setuptools.package-dir]."""
    rel = folder.relative_to(ROOT).as_posix()
    for pkg, src in sorted(SETUPTOOLS["package-dir"].items(), key=lambda kv: -len(kv[1])):
        if rel == src or rel.startswith(src + "/"):
            return pkg + rel[len(src):].replace("/", ".")
    return None


def _library_folders() -> list[Path]:
    out = []
    for top in LIBRARY:
        for d in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            if "__pycache__" in d.parts:
                continue
            if any(d.glob("*.py")) or any(d.glob("*.yaml")):
                out.append(d)
    return out


def test_every_package_folder_is_installed() -> None:
    listed = set(SETUPTOOLS["packages"])
    missing = {str(d.relative_to(ROOT)): _package_of(d) for d in _library_folders() if _package_of(d) not in listed}
    assert not missing, f"folders a wheel would leave out (add them to [tool.setuptools] packages): {missing}"


def test_every_data_file_is_package_data() -> None:
    data = SETUPTOOLS["package-data"]
    left_out = []
    for d in _library_folders():
        pkg = _package_of(d)
        for f in d.iterdir():
            if f.is_file() and f.suffix not in (".py", ".pyc") and not f.name.startswith("."):
                if not any(fnmatch.fnmatch(f.name, g) for g in data.get(pkg, [])):
                    left_out.append(str(f.relative_to(ROOT)))
    assert not left_out, f"files a wheel would leave out (add them to package-data): {left_out}"


def test_pipelines_are_found_as_package_resources() -> None:
    from mlc.ir.target import Target, known_targets
    from mlc.passes.pipeline import load_pipeline

    from mlc.compiler import default_pipeline

    assert {"cpu", "cuda", "cuda-sm90"} <= set(known_targets())  # configs/targets, read as package data
    assert Target.parse("cuda-sm90").arch == "sm_90"
    for name in ("default", "lower", "build-cpu", "build-cuda"):
        assert load_pipeline(default_pipeline(name)), name


def test_no_library_module_looks_in_the_source_tree() -> None:
    """`Path(__file__).parent.parent / "configs"` works in a checkout and not in a wheel."""
    pattern = re.compile(r"__file__|\.parent\.parent|parents\[\d\]")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for top in LIBRARY for p in (ROOT / top).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_click_code_lives_in_cli() -> None:
    """Library packages hold library code; every click command is in cli/ (docs/cli.md)."""
    hits = [str(p.relative_to(ROOT)) for top in LIBRARY if top != "cli" for p in (ROOT / top).rglob("*.py")
            if re.search(r"^\s*(import click|from click)", p.read_text(), re.M)]
    assert not hits, hits
