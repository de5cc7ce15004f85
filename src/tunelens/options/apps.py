"""The typer applications every command module registers on: the root and its groups;
and how their help reads (:func:`examples`, :func:`finish_help`).

They live below the command modules (and :mod:`tunelens.cli` above them), so a
command imports its app and nothing imports back.

Help is written as paragraphs that rich wraps to the terminal: a docstring's lines are
joined into its paragraphs (:func:`paragraphs`), since typer keeps a single line break
of a docstring as a line break inside rich's own wrapping. Every command, group and
the root end with an "Examples" epilog (:func:`examples`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import typer
from rich.markup import escape

__all__ = ["EXAMPLES", "app", "examples", "finish_help", "paragraphs", "tasks_app", "world_app"]

EXAMPLES = "Examples"
"""The first line of every command's epilog."""
_KEEP_LINE = re.compile(r"^(?:\s*(?:[-*\u2022] |\d+[.)] |\$ )|\s{2,}|\x08)")
"""A line that starts a list item, a numbered step, a shell line or an indented block
keeps its own line."""


def paragraphs(text: str | None) -> str | None:
    """A docstring as help: the lines of each paragraph joined with spaces (rich wraps
    them), paragraphs kept apart; list items and indented lines keep their own line."""
    if not text:
        return text
    out = []
    for block in inspect.cleandoc(text).split("\n\n"):
        lines = block.split("\n")
        joined = [lines[0]]
        for line in lines[1:]:
            if _KEEP_LINE.match(line):
                joined.append(line)
            else:
                joined[-1] = f"{joined[-1].rstrip()} {line.strip()}"
        out.append("\n".join(joined))
    return "\n\n".join(out)


def examples(*pairs: tuple[str, str]) -> str:
    """An "Examples" epilog: each (command line, what it does) as the command in bold and
    its purpose under it (rich markup escaped: a bracket in a command stays a bracket)."""
    lines = [f"[bold]{EXAMPLES}[/bold]", ""]
    for command, what in pairs:
        lines += [f"  [bold cyan]{escape(command)}[/bold cyan]", f"      {escape(what)}"]
    return "\n".join(lines)


def _help_of(help_text: Any, callback: Callable[..., Any] | None) -> str | None:
    given = help_text if isinstance(help_text, str) else None
    return paragraphs(given or (inspect.getdoc(callback) if callback else None))


def finish_help(typer_app: typer.Typer) -> None:
    """Every command's and group's help as paragraphs (:func:`paragraphs`), recursively;
    called once all commands are registered (:mod:`tunelens.commands`)."""
    info = typer_app.info
    callback = info.callback if callable(info.callback) else None
    if isinstance(info.help, str) or callback:
        info.help = _help_of(info.help, callback)
    for command in typer_app.registered_commands:
        command.help = _help_of(command.help, command.callback)
    for group in typer_app.registered_groups:
        if isinstance(group.help, str):
            group.help = paragraphs(group.help)
        if isinstance(group.typer_instance, typer.Typer):
            finish_help(group.typer_instance)


app = typer.Typer(
    help="Measure what in-context learning and instruction tuning really do to a language model.",
    epilog=examples(
        (
            "tunelens run --out runs/default",
            "the default study: both questions on the world models",
        ),
        (
            "tunelens plan examples/specs/kung2023_t5_large_audit.yaml",
            "cells, memory and time first",
        ),
        ("tunelens decide --task my_task.jsonl --model world", "prompt with examples, or tune?"),
        ("tunelens COMMAND --help", "the options of one command"),
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tasks_app = typer.Typer(
    help="Load, validate and inspect task files.",
    epilog=examples(
        ("tunelens tasks validate data/*.jsonl", "check task files, one line each"),
        ("tunelens tasks show data/my_task.jsonl", "its label space and one rendered prompt"),
    ),
    no_args_is_help=True,
)
world_app = typer.Typer(
    help="The embedded instruction world and its model.",
    epilog=examples(
        ("tunelens world export data/world", "the world's tasks as Super-NaturalInstructions"),
        ("tunelens world eval --shots 0,4,16", "few-shot accuracy of the shipped world model"),
        ("tunelens world path world-it", "where a shipped model lives"),
    ),
    no_args_is_help=True,
)
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
