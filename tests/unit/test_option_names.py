"""One name per option across commands, older names as hidden aliases, defaults in --help."""

from __future__ import annotations

import pytest
import typer

from tunelens.cli import app
from tunelens.options.tuning_options import HIDDEN_ALIASES, parse_tuning_options

STUDY_COMMANDS = ("convergence", "audit", "decide")


def command(name: str):
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def options(name: str) -> dict[str, object]:
    return {opt: p for p in command(name).params for opt in p.opts}


@pytest.mark.parametrize("name", STUDY_COMMANDS)
def test_tuning_options_have_one_name_and_hidden_old_ones(name):
    opts = options(name)
    for canonical in ("--tuning-method", "--learning-rate", "--lora-r", "--epochs"):
        assert canonical in opts and not opts[canonical].hidden, (name, canonical)
    for aliases in HIDDEN_ALIASES.values():
        for alias in aliases:
            assert alias in opts and opts[alias].hidden, (name, alias)


@pytest.mark.parametrize("name", STUDY_COMMANDS)
def test_old_names_are_still_parsed(name):
    required = ["--task", "t.jsonl", "--model", "world"] if name == "decide" else []
    ctx = command(name).make_context(name, [*required, "--lr", "0.5", "--method", "full"])
    assert ctx.params["tuning_alias__learning_rate"] == 0.5
    assert ctx.params["tuning_alias__method"] == "full"


def test_alias_values_reach_the_tuning_config():
    from tunelens.models.tuning import TuningConfig

    got = parse_tuning_options({"learning_rate": 0.5}, TuningConfig())
    assert got.learning_rate == 0.5


@pytest.mark.parametrize(
    ("name", "option", "shown"),
    [
        ("convergence", "--k", "8"),
        ("convergence", "--seeds", "0,1,2"),
        ("convergence", "--controls", "none,random_init"),
        ("audit", "--seeds", "0"),
        ("audit", "--instances-per-task", "5"),
        ("convergence", "--max-steps", "none"),
        ("decide", "--max-steps", "none"),
    ],
)
def test_help_shows_the_spec_defaults(name, option, shown):
    assert options(name)[option].show_default == shown


def test_every_visible_option_shows_a_default_or_says_it_in_its_help():
    root = typer.main.get_command(app)

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for sub, child in cmd.commands.items():
                yield from walk(child, [*path, sub])
            return
        for p in cmd.params:
            if getattr(p, "param_type_name", "") != "option" or p.hidden or p.name == "help":
                continue
            if p.is_flag or p.required or p.default is not None:
                continue
            if isinstance(p.show_default, str) or "default" in (p.help or "").lower():
                continue
            if path[:2] == ["examples", "add"]:  # the fields of one example: no default to show
                continue
            yield " ".join(path), p.opts

    assert list(walk(root, [])) == []
