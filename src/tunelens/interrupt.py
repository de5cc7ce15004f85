"""Ctrl-C: one exception type the CLI turns into exit 130 and one ``interrupted:`` line.

``tunelens.cli.main`` installs :func:`install` as the SIGINT handler, so an
interrupt raises :class:`Interrupted` (not ``KeyboardInterrupt``, which typer
turns into a silent return value). A long command registers what it keeps
with :func:`set_status`; the CLI prints :func:`message`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["Interrupted", "cells_message", "install", "message", "set_status"]

RESUME = "re-run the same command to resume"


class Interrupted(BaseException):
    """SIGINT arrived: stop now; what is finished (atomically written) stays on disk."""


_status: Callable[[], str] | None = None


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


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted()


def install() -> None:
    """Make SIGINT raise :class:`Interrupted` (only from the main thread)."""
    # Outside the main thread (an embedding application) signal() fails: keep its handler.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, _raise)
