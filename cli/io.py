"""File plumbing every subcommand shares: read a file or stdin, write a file or stdout atomically,
and keep modules pointing at their constants side file across directories and pipes."""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlc.ir.constants import check_constant_types, check_constants, load_constants, pack_constants, rebase
from mlc.ir.diagnostics import MlcError
from mlc.ir.files import atomic_write_bytes, atomic_write_files, read_bytes
from mlc.ir.module import ConstantsRef, Module


@dataclass
class Source:
    """A module as read: where it came from decides where its side file is looked for."""

    module: Module
    filename: str
    search_dirs: list[Path]
    text: str = ""

    def constants(self) -> dict[str, np.ndarray]:
        """The side file's arrays, checked against the module's `const` declarations."""
        if self.module.constants is None:
            return {}
        arrays = load_constants(self.module.constants, self.search_dirs)
        check_constant_types(self.module, arrays, self.text)
        return arrays


def read_text(path: str) -> tuple[str, str]:
    """Text of `path` ('-' = stdin) and the name diagnostics use for it."""
    data = read_bytes(path, f"'{path}'")
    return data.decode("utf-8", errors="replace"), ("<stdin>" if path == "-" else path)


def read_module(path: str, verify: bool = False) -> Source:
    """Parse `path`; with `verify`, an ill-formed input is reported at its own line, before any stage runs."""
    from mlc.ir.parser import parse_module

    text, name = read_text(path)
    module = parse_module(text, name)
    if verify:
        from mlc.ir.verify import verify_module

        verify_module(module, source=text)
    dirs = [Path.cwd()] if path == "-" else [Path(path).resolve().parent, Path.cwd()]
    return Source(module, name, dirs, text)


def write_text(out: str | None, text: str) -> None:
    if out is None or out == "-":
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError as e:  # a full disk or a closed pipe behind a redirection
            raise MlcError(f"cannot write to stdout: {e.strerror or e}") from None
    else:
        atomic_write_bytes(out, text.encode())


def write_module(module: Module, out: str | None, source: Source | None = None,
                 new_constants: dict[str, np.ndarray] | None = None, stem: str = "module") -> None:
    """Print `module` to `out`, pointing it at its side file from the output's directory.

    `new_constants` (set when a stage created or changed constants) go to a fresh side file next
    to the output, named by its content (`m.<hash>.weights.npz`): it is renamed into place first and
    the module text last, so that rename alone commits the pair (a kill before it leaves the old
    module and its own side file intact), and the side file the old module used is then removed.
    Otherwise the existing side file is referenced again.
    """
    from mlc.ir.printer import print_module

    out_dir = None if out in (None, "-") else Path(out).resolve().parent
    if new_constants is not None:
        base = out_dir or Path.cwd()
        data = pack_constants(new_constants)
        digest = hashlib.sha256(data).hexdigest()
        name = f"{Path(out).stem if out not in (None, '-') else stem}.{digest[:WEIGHTS_HASH_CHARS]}.weights.npz"
        ref = rebase(ConstantsRef(str(base / name), digest), base / name, out_dir)
        text = print_module(Module(module.functions, module.meta, ref, module.loc))
        if out in (None, "-"):
            atomic_write_bytes(base / name, data)
            write_text(out, text)
        else:  # the side file and the text land together or not at all
            if not base.is_dir():  # name the file the user asked for, not the side file
                raise MlcError(f"cannot write '{out}': {'not a directory' if base.exists() else 'no such directory'}")
            old = _own_side_file(Path(out))
            atomic_write_files([(base / name, data), (Path(out), text.encode())])
            if old is not None and old.resolve() != (base / name).resolve():
                old.unlink(missing_ok=True)
        return
    if module.constants is not None and source is not None:
        found = check_constants(module.constants, source.search_dirs)
        module = Module(module.functions, module.meta, rebase(module.constants, found, out_dir), module.loc)
    write_text(out, print_module(module))


WEIGHTS_HASH_CHARS = 16
_CONSTANTS_LINE = re.compile(r'^constants "((?:[^"\\]|\\.)*)" sha256', re.MULTILINE)


def _own_side_file(out: Path) -> Path | None:
    """The side file the module now at `out` names, if mlc wrote it for that output (the same stem,
    the same directory, `<stem>.<hash>.weights.npz` or the older `<stem>.weights.npz`): it goes once
    the new module is in place. A side file named anything else may be another module's: kept."""
    try:
        with open(out, "rb") as f:
            head = f.read(1 << 16).decode("utf-8", errors="replace")
    except OSError:
        return None
    m = _CONSTANTS_LINE.search(head)
    if m is None:
        return None
    side = out.parent / m.group(1)
    own = re.fullmatch(rf"{re.escape(out.stem)}(\.[0-9a-f]{{{WEIGHTS_HASH_CHARS}}})?\.weights\.npz", side.name)
    if own is None or side.parent.resolve() != out.parent.resolve() or not side.is_file():
        return None
    return side
