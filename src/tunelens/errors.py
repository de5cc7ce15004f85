"""Errors that the command line turns into exit status 2 with one clear line."""

from __future__ import annotations


class TunelensInputError(Exception):
    """Bad input from the user: a file, a field or an option that cannot be used.

    The CLI prints ``str(error)`` on one line of stderr and exits with status 2,
    so the message must name the file (``source``), the place (``where``: a line,
    a field path) and what is wrong.
    """

    def __init__(self, message: str, *, source: str | None = None, where: str | None = None):
        self.message = message
        self.source = source
        self.where = where
        super().__init__(self.render())

    def render(self) -> str:
        parts = [p for p in (self.source, self.where) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class DivergedError(TunelensInputError):
    """Numbers a computation produced are NaN, infinite or collapsed (a diverged tuning).

    Raised where it is found (the step, the layer); the cell loop adds which
    cell it was, so the line names the cell and the step.
    """


def in_cell(error: TunelensInputError, experiment: str, cell_name: str) -> TunelensInputError:
    """``error`` restated for one cell: ``<experiment> cell '<name>': <where>: <message>``."""
    where = ": ".join(p for p in (error.source, error.where) if p)
    message = f"{where}: {error.message}" if where else error.message
    return DivergedError(message, source=f"{experiment} cell {cell_name!r}")
