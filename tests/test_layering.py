"""The library's import graph: top-level folders import only downward, and no module imports another
module's private names. An AST scan of the source (imports inside functions included), so a lazy
import cannot hide a cycle.

Layers, bottom up: ir; passes and codegen (each on ir alone); runtime (on codegen); frontend, ann and
tune (beside each other; tune measures schedules by building and running them); mlc (the driver:
compiler, backend); cli on top. `KNOWN` lists the upward edges that remain, each with its reason:
the test fails on a new one, and on a listed one that is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVEL = {"ir": 0, "passes": 1, "codegen": 1, "runtime": 2, "frontend": 3, "ann": 3, "tune": 3, "mlc": 4, "cli": 5}
ALLOWED_SIDEWAYS: set[tuple[str, str]] = set()
KNOWN: dict[tuple[str, str], str] = {}


def _modules() -> list[tuple[str, Path]]:
    return [(top, f) for top in LEVEL for f in sorted((ROOT / top).rglob("*.py"))]


def _imports(top: str, f: Path) -> list[tuple[str, str, int]]:
    """(imported module path with `mlc.` dropped, imported name or '', line) for each import in f."""
    out = []
    for n in ast.walk(ast.parse(f.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = list(f.relative_to(ROOT).parent.parts)[: len(f.relative_to(ROOT).parent.parts) - (n.level - 1)]
                mod = ".".join(base + ([n.module] if n.module else []))
            else:
                mod = (n.module or "").removeprefix("mlc.")
            out += [(mod, a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.Import):
            out += [(a.name.removeprefix("mlc."), "", n.lineno) for a in n.names]
    return out


def test_top_level_folders_import_only_downward() -> None:
    edges: dict[tuple[str, str], list[str]] = {}
    for top, f in _modules():
        for mod, name, line in _imports(top, f):
            first = mod.split(".")[0] if mod not in ("mlc", "") else "mlc"
            if mod == "mlc" and name == "__version__":
                continue  # the package version, from the namespace root
            if first not in LEVEL or first == top:
                continue
            if LEVEL[first] >= LEVEL[top] and (top, first) not in ALLOWED_SIDEWAYS:
                edges.setdefault((top, first), []).append(f"{f.relative_to(ROOT)}:{line}")
    new = {e: w for e, w in edges.items() if e not in KNOWN}
    assert not new, f"imports that point up or sideways: {new}"
    gone = sorted(set(KNOWN) - set(edges))
    assert not gone, f"fixed, so drop from KNOWN: {gone}"


def test_no_private_names_imported_across_modules() -> None:
    bad = [f"{f.relative_to(ROOT)}:{line}: {name} from {mod}"
           for top, f in _modules() for mod, name, line in _imports(top, f)
           if name.startswith("_") and not name.startswith("__")]
    assert not bad, bad
