"""One progress display for every long piece of work: cells, tuning steps, model training.

On a terminal it is a set of rich bars on stderr (with elapsed time and ETA);
when stderr is not a terminal (a log file, CI) it prints a plain line per bar
at most every ``log_every`` seconds and when a bar completes, so a log shows
progress before the run ends. Disabled, every call is a no-op. Nothing else in
tunelens builds a rich ``Progress`` itself.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressDisplay"]


@dataclass
class _Bar:
    description: str
    total: int
    completed: int = 0
    visible: bool = True
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    last_line: float = 0.0


class ProgressDisplay:
    """Bars by id: ``add`` one, then ``advance`` / ``update`` it; use as a context manager."""

    def __init__(
        self, enabled: bool = True, *, log_every: float = 30.0, force_terminal: bool | None = None
    ) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self._terminal = sys.stderr.isatty() if force_terminal is None else force_terminal
        self._rich: Any = None
        self._ids: dict[int, Any] = {}
        self._bars: dict[int, _Bar] = {}

    def __enter__(self) -> ProgressDisplay:
        if self.enabled and self._terminal:
            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._rich.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rich is not None:
            if exc_type is not None:
                # An error or Ctrl-C: clear the bars, so the one error line stands alone.
                self._rich.live.transient = True
            self._rich.stop()
            self._rich = None

    def add(self, description: str, total: int, completed: int = 0) -> int:
        """A new bar; returns its id. Work done earlier starts it filled (``completed``)."""
        bar_id = len(self._bars)
        self._bars[bar_id] = _Bar(description, total, completed)
        if self._rich is not None:
            self._ids[bar_id] = self._rich.add_task(
                description, total=total, completed=completed, status=""
            )
        return bar_id

    def advance(self, bar_id: int, n: int = 1, **fields: Any) -> None:
        """Mark ``n`` more units done; ``fields`` (e.g. ``loss=0.31``) show beside the bar."""
        bar = self._bars[bar_id]
        self.update(bar_id, completed=bar.completed + n, **fields)

    def update(
        self,
        bar_id: int,
        *,
        description: str | None = None,
        total: int | None = None,
        completed: int | None = None,
        visible: bool | None = None,
        **fields: Any,
    ) -> None:
        """Change a bar; a new ``total`` with ``completed=0`` restarts it (e.g. the next cell)."""
        bar = self._bars[bar_id]
        restarted = completed == 0 and (total is not None or description is not None)
        if description is not None:
            bar.description = description
        if total is not None:
            bar.total = total
        if completed is not None:
            bar.completed = completed
        if visible is not None:
            bar.visible = visible
        bar.fields.update(fields)
        if restarted:
            bar.started = time.perf_counter()
        if self._rich is not None:
            status = "  ".join(f"{k} {_text(v)}" for k, v in bar.fields.items())
            self._rich.update(
                self._ids[bar_id],
                description=bar.description,
                total=bar.total,
                completed=bar.completed,
                visible=bar.visible,
                status=status,
            )
            if restarted:
                self._rich.reset(self._ids[bar_id], total=bar.total, completed=0)
        elif self.enabled and bar.visible:
            self._log_line(bar)

    def _log_line(self, bar: _Bar) -> None:
        now = time.perf_counter()
        finished = bar.total > 0 and bar.completed >= bar.total
        if not finished and now - bar.last_line < self.log_every:
            return
        if bar.last_line == 0.0 and not finished and bar.completed == 0:
            bar.last_line = now  # no line for an empty start; the first comes after log_every
            return
        bar.last_line = now
        elapsed = now - bar.started
        status = "".join(f", {k} {_text(v)}" for k, v in bar.fields.items())
        print(
            f"{bar.description}: {bar.completed}/{bar.total} ({elapsed:.0f} s{status})",
            file=sys.stderr,
            flush=True,
        )


def _text(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
