"""Training progress through rich, shown only on a terminal (quiet in tests and pipes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """A thin handle over one rich Progress: `step(name, total)` opens a task, `advance()` moves it."""

    def __init__(self, progress: Progress | None):
        self._p = progress
        self._task: int | None = None

    def step(self, description: str, total: int) -> None:
        if self._p is None:
            return
        if self._task is not None:
            self._p.update(self._task, visible=False)
        self._task = self._p.add_task(description, total=total)

    def advance(self, n: int = 1, note: str | None = None) -> None:
        if self._p is not None and self._task is not None:
            self._p.advance(self._task, n)
            if note is not None:
                self._p.update(self._task, description=note)


QUIET = Reporter(None)


@contextmanager
def training_progress(enabled: bool | None = None) -> Iterator[Reporter]:
    """A Reporter drawing to stderr; `enabled=None` means 'only when stderr is a terminal'."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield QUIET
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=Console(stderr=True), transient=False) as p:
        yield Reporter(p)
