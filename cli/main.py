"""The `mlc` command: one subcommand per stage, plus the drivers that chain them.

Exit status: 0 success; 1 user error (one located message, no traceback unless --debug);
2 usage error (click); 3 internal error (a bug in mlc).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import click
from mlc.ir.diagnostics import MlcError
from mlc.ir.interrupt import EXIT_CODE, MESSAGE, exit_on_interrupt

from mlc import __version__

from .io import read_module, write_module

_DEBUG = {"on": False}


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MlcError into one message and exit 1; anything else is a bug: exit 3."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlcError as e:
            if _DEBUG["on"]:
                traceback.print_exc()
            click.echo(e.render(), err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo(MESSAGE.decode().rstrip(), err=True)
            sys.exit(EXIT_CODE)
        except Exception as e:  # a bug in mlc, not in the user's input
            if _DEBUG["on"]:
                traceback.print_exc()
            click.echo(f"mlc: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
            sys.exit(3)

    return wrapper


class StageGroup(click.Group):
    """Lists subcommands in the order stages run, not alphabetically."""

    ORDER: tuple[str, ...] = (
        "import", "shape-infer", "fold-constants", "cse", "dce", "lower", "fuse", "schedule", "tune", "codegen",
        "build", "run", "bench", "opt", "verify", "ann-index", "zoo", "doctor",
    )

    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {n: i for i, n in enumerate(self.ORDER)}
        return sorted(self.commands, key=lambda n: (rank.get(n, len(rank)), n))


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlc", message="%(prog)s %(version)s (IR v1)")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Also print what passes did (their info diagnostics).")
@click.option("-q", "--quiet", is_flag=True, help="Print no pass warnings (errors only).")
def cli(debug: bool, verbose: bool, quiet: bool) -> None:
    """mlc: a machine-learning compiler toolchain.

    Every stage reads a textual IR file (or - for stdin) and writes one (-o FILE, default stdout).
    """
    from mlc.passes.registry import set_default_sink

    _DEBUG["on"] = debug
    shown = set() if quiet else {"warning", "info"} if verbose else {"warning"}
    prev = set_default_sink(lambda d: click.echo(d.render(), err=True) if d.severity in shown else None)
    click.get_current_context().call_on_close(lambda: set_default_sink(prev))


def main() -> None:
    try:
        exit_on_interrupt()  # SIGINT inside a run (even in native code) ends it at once: exit 130
        from . import commands  # noqa: F401  (registers subcommands)

        cli.main(prog_name="mlc")
    except KeyboardInterrupt:  # before or after a command's handler (startup, imports)
        sys.stderr.write(MESSAGE.decode())
        sys.exit(EXIT_CODE)


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-o", "--output", "output", default=None, help="Output file (default: stdout).")(fn)


def input_argument(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("input", default="-", required=False)(fn)


target_option = click.option("--target", default="cpu", show_default=True,
                             help="cpu (the host), cuda (sm_90), cuda:sm_XY, or a configs/targets file's name.")


def _check_executor(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from mlc.ann.executor import parse_executor

    try:
        parse_executor(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def executor_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--executor local|ray|ray:ADDRESS` (docs/distributed.md), checked while the command line is parsed."""
    return click.option("--executor", default="local", show_default=True, callback=_check_executor,
                        help=f"{what}: local | ray | ray:ADDRESS (start or join Ray; needs pip install "
                             "'mlc[distributed]')")


def parse_target(spec: str) -> Any:
    """The --target option as an `ir.target.Target` (parsed in the command, so an unknown one is a
    user error naming the option, not a traceback)."""
    from mlc.ir.target import Target

    try:
        return Target.parse(spec)
    except MlcError as e:
        raise MlcError(f"--target: {e.message}") from None


@dataclass(frozen=True)
class Instrumentation:
    """The pass manager's instrumentation flags, shared by every command that runs a pipeline
    (`opt`, `build`, `tune`): `pipeline_options` adds them and hands the command one of these."""

    print_after_all: bool = False
    ir_dump_dir: str | None = None
    verify_each: bool = True
    timing: bool = False

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `run_pipeline` / `build_module`; creates --ir-dump-dir (MlcError if it can't)."""
        dump = None
        if self.ir_dump_dir is not None:
            dump = Path(self.ir_dump_dir)
            try:
                dump.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MlcError(f"cannot create --ir-dump-dir '{self.ir_dump_dir}': {e.strerror}") from None
        return {"verify_each": self.verify_each, "print_after": print_after if self.print_after_all else None,
                "dump_dir": dump}

    def report(self, timings: list[tuple[str, float]]) -> None:
        if self.timing:
            print_timings(timings)


def print_after(name: str, module: Any) -> None:
    """--print-after-all: the module after pass `name`, to stderr."""
    from mlc.ir.printer import print_module

    click.echo(f"// ----- IR dump after {name} -----", err=True)
    click.echo(print_module(module), err=True, nl=False)


def pipeline_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--print-after-all, --ir-dump-dir, --verify-each/--no-verify-each, --timing; the command gets `instrument`."""

    @wraps(fn)
    def wrapper(*args: Any, print_after_all: bool, ir_dump_dir: str | None, verify_each: bool, timing: bool,
                **kwargs: Any) -> Any:
        return fn(*args, instrument=Instrumentation(print_after_all, ir_dump_dir, verify_each, timing), **kwargs)

    options = [
        click.option("--print-after-all", is_flag=True, help="Print the module to stderr after each pass."),
        click.option("--ir-dump-dir", type=click.Path(file_okay=False), default=None,
                     help="Write the module after each pass here (NN-pass.ir)."),
        click.option("--verify-each/--no-verify-each", default=True, show_default=True,
                     help="Verify the input, and the module after each pass."),
        click.option("--timing", is_flag=True, help="Print a table of wall time per pass."),
    ]
    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper


def run_stage(name: str, input: str, output: str | None, options: dict[str, Any], verify: bool = True,
              timing: bool = False) -> None:
    """Read, run one registered pass, verify, write: the body of every stage subcommand."""
    from mlc.passes.pipeline import Step, run_pipeline
    from mlc.passes.registry import PassContext, get_pass

    info = get_pass(name)
    assert info is not None
    src = read_module(input, verify=verify)
    ctx = PassContext(search_dirs=src.search_dirs)
    if info.needs_constants or src.module.constants is not None:
        ctx.constants = src.constants() if info.needs_constants else None
    step = Step(info, info.validate_options(options))
    module, report = run_pipeline(src.module, [step], ctx, verify_each=verify)
    if timing:
        print_timings(report.timings)
    write_module(module, output, src, ctx.constants if ctx.constants_changed else None)


def print_timings(timings: list[tuple[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="pass timing")
    t.add_column("pass")
    t.add_column("ms", justify="right")
    t.add_column("%", justify="right")
    total = sum(s for _, s in timings) or 1e-9
    for n, s in timings:
        t.add_row(n, f"{s * 1e3:.2f}", f"{100 * s / total:.1f}")
    t.add_row("total", f"{total * 1e3:.2f}", "100.0")
    Console(stderr=True).print(t)
