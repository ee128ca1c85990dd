"""SIGINT during a run: the `mlc` command stops at once with exit 130, even inside native code.

Python delivers SIGINT as KeyboardInterrupt only between bytecodes, so a compiled kernel with a
2^62-trip loop (or one long numpy call) would hold the signal until it returned. Instead of polling
a flag in generated code, the command arms a watcher thread (`exit_on_interrupt`): Python's C-level
signal handler writes the signal number to a wakeup pipe even while the main thread is in native
code, and the watcher, woken by it, ends the process with one line and exit 130 when the main
thread is inside a `run_region`. A run region computes in memory only (outputs are written after
it, through the atomic writer), so ending the process there leaves no partial file. Outside a run
region nothing changes: KeyboardInterrupt reaches the command, which reports it the same way.
Library users (`mlc.load`, `mlc.compile`) never arm it: for them SIGINT stays KeyboardInterrupt.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MESSAGE = b"mlc: interrupted\n"
EXIT_CODE = 130

_state = {"armed": False, "depth": 0}


@contextmanager
def run_region() -> Iterator[None]:
    """Mark a computation that writes no file: SIGINT may end the process anywhere inside it."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


def exit_on_interrupt() -> None:
    """Arm the watcher (once, from the main thread; the CLI's entry point calls it)."""
    if _state["armed"] or threading.current_thread() is not threading.main_thread():
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        os.close(r)
        os.close(w)
        return
    _state["armed"] = True
    threading.Thread(target=_watch, args=(r,), name="mlc-sigint", daemon=True).start()


def _watch(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGINT in data and _state["depth"] > 0:
            os.write(2, MESSAGE)
            os._exit(EXIT_CODE)
