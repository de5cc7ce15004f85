"""`--help` reads well (issue 28.4): paragraphs that rich wraps, defaults shown, and an
"Examples" epilog on every command and group, whose examples name only real options."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tunelens.cli import app
from tunelens.options.apps import EXAMPLES

ROOT = typer.main.get_command(app)
WIDE = 250  # wide enough that every short paragraph fits on one rendered line


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the click tree under ``command``, groups included, with its path."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


COMMANDS = list(walk(ROOT))
IDS = [" ".join(path) or "tunelens" for path, _ in COMMANDS]
ITEM = re.compile(r"^(?:\s*(?:[-*\u2022] |\d+[.)] |\$ )|\s{2,}|\x08)")


def test_the_tree_holds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    for expected in ("run", "plan", "report", "export", "decide", "tasks validate", "world eval"):
        assert expected in names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_is_paragraphs_without_hard_wraps(path, command):
    """A single line break inside a paragraph would be kept inside rich's own wrapping
    ('what share / of the tuning gain'): only list items and indented lines may start a
    line of their own."""
    for text in (command.help or "", *(getattr(p, "help", None) or "" for p in command.params)):
        for paragraph in text.split("\n\n"):
            for line in paragraph.split("\n")[1:]:
                assert ITEM.match(line), f"{path}: a hard-wrapped line: {line!r} in {text!r}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_command_ends_with_examples_that_name_real_options(path, command):
    epilog = command.epilog or ""
    assert epilog.startswith(f"[bold]{EXAMPLES}[/bold]"), f"{path}: no Examples epilog"
    lines = [line.strip() for line in epilog.splitlines()]
    runs = [re.sub(r"\[/?[a-z ]+\]", "", line) for line in lines if line.startswith("[bold cyan]")]
    assert runs, f"{path}: an Examples epilog without an example"
    for run in runs:
        words = shlex.split(run)
        assert words[0] == "tunelens", run
        target, rest = ROOT, words[1:]
        while rest and rest[0] in getattr(target, "commands", {}):
            target, rest = target.commands[rest[0]], rest[1:]
        if rest[:1] == ["COMMAND"]:
            continue  # the root's "tunelens COMMAND --help"
        options = {name for p in target.params for name in getattr(p, "opts", [])}
        options |= {name for p in target.params for name in getattr(p, "secondary_opts", [])}
        given = [w.split("=")[0] for w in rest if w.startswith("--")]
        unknown = [w for w in given if w not in options]
        assert not unknown, f"{run!r}: no such option {unknown}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_defaults_are_shown(path, command):
    """typer shows each default; an option that hides it says its default in words
    ('omitted: the embedded default', 'default 0.4 on a GPU')."""
    hidden = [
        p.name
        for p in command.params
        if getattr(p, "show_default", None) is False
        and not getattr(p, "is_flag", False)
        and not re.search(r"default|omitted", getattr(p, "help", None) or "", re.I)
    ]
    assert not hidden, f"{path}: options whose default --help hides: {hidden}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_rendered_help_keeps_each_paragraph_on_one_line(path, command, monkeypatch):
    """At a wide terminal, a paragraph of the help is one line of the output (a hard
    wrap would break it), and the Examples come last."""
    monkeypatch.setattr("typer.rich_utils.MAX_WIDTH", WIDE)
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    text = re.sub(r"\[/?[a-z ]+\]", "", command.help or "")
    for paragraph in text.split("\n\n"):
        flat = " ".join(paragraph.split())
        if flat and len(flat) < WIDE - 20 and "\n" not in paragraph:
            assert any(flat in line for line in lines), f"{path}: {flat!r} is broken across lines"
    assert EXAMPLES in lines
