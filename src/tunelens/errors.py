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
