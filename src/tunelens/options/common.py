"""The options several commands share, each defined once: the study settings and the run's.

:data:`STUDY` generates the common study options (``--model``, ``--seed``,
``--dtype``, ``--device``, ``--device-map``, ``--max-memory``, ``--limit``,
``--allow-missing-tasks``, ``--save-adapters``) from :class:`tunelens.spec.Spec`,
so their help and defaults are the spec's; a command takes the subset it
uses. The options that are no configuration field (where cells run, the run
directory, progress bars, the lock, JSON output) are typed here once, for
every command that has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelens.options.config_options import ConfigOptions
from tunelens.spec import Spec

__all__ = [
    "STUDY",
    "AddressOption",
    "ExecutorOption",
    "JsonOption",
    "NoProgressOption",
    "OutOption",
    "WaitOption",
]

STUDY = ConfigOptions(
    Spec,
    key="study",
    panel="Study",
    only=(
        "model",
        "seed",
        "dtype",
        "device",
        "device_map",
        "max_memory",
        "limit",
        "allow_missing_tasks",
        "save_adapters",
    ),
    given_only=True,
)
"""The study's common settings; the command receives a dict of those given (the spec it
builds or loads keeps its own values for the others)."""

OutOption = Annotated[Path, typer.Option("--out", help="Run directory; re-run to resume.")]
ExecutorOption = Annotated[
    str,
    typer.Option(
        help="Where cells run: 'local' (this machine: this process or worker processes) "
        "or 'ray' (Ray tasks)."
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address (e.g. 'auto', 'ray://head:10001'); default: a local Ray "
        "instance. Needs --executor ray."
    ),
]
NoProgressOption = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait", help="If another run holds DIR (DIR/.lock), wait for it instead of refusing."
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON instead of a table.")
]


def say_limited(limit: int | None) -> None:
    """The line a limited run ends with (stderr, so stdout stays the paths)."""
    if limit is not None:
        from tunelens.runs.limit import limit_note

        typer.echo(limit_note(limit), err=True)
