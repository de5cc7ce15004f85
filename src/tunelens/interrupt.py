"""Ctrl-C, SIGTERM, SIGHUP: one exception the CLI turns into exit 128 + signal and one line.

``tunelens.cli.main`` calls :func:`install`, so each of SIGINT, SIGTERM and
SIGHUP raises :class:`Interrupted` (not ``KeyboardInterrupt``, which typer
turns into a silent return value; not the default action, which would end the
process without unwinding, leaving ``DIR/.lock`` behind). Unwinding releases
the run lock; finished cells are atomic files and stay. A long command
registers what it keeps with :func:`set_status`; the CLI prints
:func:`message` and exits with :func:`exit_code` (130, 143, 129: the shell's
convention for a process ended by that signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

__all__ = [
    "SIGNALS",
    "Interrupted",
    "cells_message",
    "exit_code",
    "install",
    "message",
    "set_status",
]

RESUME = "re-run the same command to resume"

SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""The signals that end a run cleanly (SIGHUP does not exist on Windows)."""


class Interrupted(BaseException):
    """A signal arrived: stop now; what is finished (atomically written) stays on disk."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)


_status: Callable[[], str] | None = None
_stopping = False  # a signal already raised Interrupted: the process is unwinding


def cells_message(finished: int) -> str:
    """The line a cell-running command prints when interrupted."""
    return f"interrupted: {finished} finished cells are kept; {RESUME}"


def set_status(status: Callable[[], str] | None) -> None:
    """Register the function that describes what an interrupt now would keep."""
    global _status
    _status = status


def message() -> str:
    """The one ``interrupted:`` line for stderr."""
    if _status is not None:
        try:
            return _status()
        except Exception:  # noqa: BLE001 - the line must always print
            pass
    return cells_message(0)


def exit_code(error: BaseException) -> int:
    """128 + the signal number (130 for Ctrl-C and for a plain ``KeyboardInterrupt``)."""
    return 128 + int(getattr(error, "signum", signal.SIGINT))


def _raise(signum: int, frame: Any) -> None:
    """First signal: unwind (locks released, the line printed). A second one while unwinding
    ends the process at once: an exception raised inside the cleanup would print a traceback,
    and a user pressing Ctrl-C again wants out (a lock left so is stale and taken over)."""
    global _stopping
    if _stopping:
        with contextlib.suppress(OSError):
            os.write(2, f"\n{message()}\n".encode())
        os._exit(128 + int(signum))
    _stopping = True
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (only from the main thread)."""
    global _stopping
    _stopping = False
    for signum in SIGNALS:
        # Outside the main thread (an embedding application) signal() fails: keep its handler.
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, _raise)
