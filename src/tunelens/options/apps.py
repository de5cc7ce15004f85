"""The typer applications every command module registers on: the root and its groups.

They live below the command modules (and :mod:`tunelens.cli` above them), so a
command imports its app and nothing imports back.
"""

from __future__ import annotations

import typer

__all__ = ["app", "tasks_app", "world_app"]

app = typer.Typer(
    help="Measure what in-context learning and instruction tuning really do to a language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tasks_app = typer.Typer(help="Load, validate and inspect task files.", no_args_is_help=True)
world_app = typer.Typer(help="The embedded instruction world and its model.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(world_app, name="world")


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Log progress details (INFO) and show library warnings (transformers).",
    ),
) -> None:
    """tunelens: ICL vs instruction tuning, measured."""
    from tunelens.log import setup_logging

    setup_logging(verbose)
