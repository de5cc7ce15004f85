"""Options generated from pydantic models: parsing, errors naming the option, defaults in --help.

The first half runs the mechanism on a small model defined here; the second
checks the real commands against their models, field by field, so an
option's help or shown default cannot drift from the spec again.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field
from tests.helpers.cli import assert_one_error_line, invoke
from typer.testing import CliRunner

from tunelens.cli import app
from tunelens.errors import TunelensInputError
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.experiments.decide.config import DecideConfig
from tunelens.experiments.world_eval.spec import WorldEvalSpec
from tunelens.models.tuning.config import TuningConfig
from tunelens.options.config_options import ConfigOptions, shown_default, with_config_options
from tunelens.spec import Spec

# --- a small model ---------------------------------------------------------------------------


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(3, ge=1, description="How deep.")


class Toy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    k: list[Annotated[int, Field(ge=1)]] = Field([1, 2], description="Values of k.")
    sizes: list[Annotated[int, Field(ge=1)] | Literal["full"]] = Field([5], description="Sizes.")
    flags: list[bool] = Field([False], description="Flags to sweep.")
    groups: list[list[str]] = Field([], description="Groups; empty means none.")
    rate: float = Field(0.5, gt=0, description="A rate.")
    steps: int | None = Field(None, ge=1, description="Steps; none means all.")
    clip: float | None = Field(1.0, gt=0, description="Clip; none turns it off.")
    mode: Literal["a", "b"] = Field("a", description="The mode.")
    shuffle: bool = Field(True, description="Shuffle.")
    patch: bool | None = Field(None, description="Patch; empty means automatic.")
    name: str = Field("x", description="Left out.")
    inner: Inner = Field(Inner(), description="Nested settings.")


TOY = ConfigOptions(
    Toy,
    key="config",
    panel="Toy",
    names={"rate": ("--learning-rate",)},
    aliases={"rate": ("--lr",)},
    exclude=frozenset({"name"}),
)


def toy_app(group: ConfigOptions = TOY) -> tuple[typer.Typer, list[Any]]:
    """A one-command app that keeps what the command received."""
    received: list[Any] = []
    toy = typer.Typer()

    @toy.command()
    @with_config_options(group)
    def go(out: str = "o", *, config: Any) -> None:
        received.append(config)

    @toy.command()
    def other() -> None:  # two commands: the toy's is called by name
        pass

    return toy, received


def run_toy(*args: str, group: ConfigOptions = TOY) -> tuple[Any, Any]:
    toy, received = toy_app(group)
    result = CliRunner().invoke(toy, ["go", *args])
    return result, (received[0] if received else None)


def test_lists_bools_nullables_literals_and_nested_values_are_parsed():
    result, config = run_toy(
        *("--k", "1, 2,4", "--sizes", "5,full", "--flags", "false,True", "--groups", "a,b;c"),
        *("--learning-rate", "0.1", "--steps", "4", "--clip", "none", "--mode", "b"),
        *("--no-shuffle", "--patch", "--depth", "7"),
    )
    assert result.exit_code == 0, result.output
    assert config == Toy(
        k=[1, 2, 4],
        sizes=[5, "full"],
        flags=[False, True],
        groups=[["a", "b"], ["c"]],
        rate=0.1,
        steps=4,
        clip=None,
        mode="b",
        shuffle=False,
        patch=True,
        inner=Inner(depth=7),
    )


def test_options_not_given_keep_the_defaults():
    result, config = run_toy()
    assert result.exit_code == 0, result.output
    assert config == Toy() and config.patch is None and config.steps is None
    _, config = run_toy("--steps", "NONE", "--no-patch")
    assert config.steps is None and config.patch is False


def test_a_hidden_alias_is_accepted_and_not_listed():
    _, config = run_toy("--lr", "0.25")
    assert config.rate == 0.25
    command = typer.main.get_command(toy_app()[0]).commands["go"]  # type: ignore[attr-defined]
    params = {o: p for p in command.params for o in p.opts}
    assert params["--lr"].hidden and not params["--learning-rate"].hidden
    assert "--name" not in params  # excluded


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["--k", "x"], "--k", "'x' is not accepted"),
        (["--k", "0"], "--k", "greater than or equal to 1"),
        (["--k", ","], "--k", "needs at least one value"),
        (["--sizes", "half"], "--sizes", "'full'"),
        (["--flags", "maybe"], "--flags", "boolean"),
        (["--learning-rate", "-1"], "--learning-rate", "greater than 0"),
        (["--lr", "-1"], "--lr", "greater than 0"),  # named as typed
        (["--learning-rate", "inf"], "--learning-rate", "finite"),
        (["--steps", "0"], "--steps", "greater than or equal to 1"),
        (["--steps", "many"], "--steps", "'many' is not accepted"),
        (["--mode", "c"], "--mode", "'a' or 'b'"),
        (["--depth", "0"], "--depth", "greater than or equal to 1"),
    ],
)
def test_a_bad_value_is_an_input_error_naming_the_option(args, option, words):
    result, config = run_toy(*args)
    assert config is None
    assert isinstance(result.exception, TunelensInputError), result.output
    assert result.exception.where == option
    assert words in result.exception.message


def test_given_only_receives_the_given_values_checked():
    group = ConfigOptions(Toy, key="config", exclude=frozenset({"name"}), given_only=True)
    _, given = run_toy("--k", "3", "--depth", "2", group=group)
    assert given == {"k": [3], "inner": Inner(depth=2)}
    _, given = run_toy(group=group)
    assert given == {}


def test_help_shows_the_models_defaults():
    command = typer.main.get_command(toy_app()[0]).commands["go"]  # type: ignore[attr-defined]
    shown = {p.opts[0]: p.show_default for p in command.params if not p.hidden}
    del shown["--out"]
    assert shown == {
        "--k": "1,2",
        "--sizes": "5",
        "--flags": "false",
        "--groups": "empty",
        "--learning-rate": "0.5",
        "--steps": "none",
        "--clip": "1.0",
        "--mode": "a",
        "--shuffle": "shuffle",
        "--patch": "none",
        "--depth": "3",
    }
    defaults = ConfigOptions(Toy, key="config", defaults=Toy(k=[8], shuffle=False))
    command = typer.main.get_command(toy_app(defaults)[0]).commands["go"]  # type: ignore[attr-defined]
    shown = {p.opts[0]: p.show_default for p in command.params}
    assert shown["--k"] == "8" and shown["--shuffle"] == "no-shuffle"
    text = CliRunner().invoke(toy_app()[0], ["go", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: (1,2)]" in text and "Values of k." in text and "Toy" in text


def test_two_options_of_one_name_are_refused_when_the_command_is_made():
    with pytest.raises(TypeError, match="--k"):

        @with_config_options(TOY)
        def go(k: str = "1", *, config: Any) -> None:
            pass


# --- the real commands -----------------------------------------------------------------------


def params(*path: str) -> dict[str, Any]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p for p in command.params}


def expected_show(info: Any, value: Any, flag: str) -> str:
    """What --help must show for a field whose default is ``value``: the value as the
    option takes it, or for a switch the flag it amounts to (``--shuffle``: shuffle)."""
    switch = info.annotation is bool or set(typing.get_args(info.annotation)) == {bool, type(None)}
    if switch and value is not None:
        return flag if value else f"no-{flag}"
    return shown_default(value)


def check_fields(
    path: tuple[str, ...],
    key: str,
    model: type[BaseModel],
    exposed: set[str],
    defaults: BaseModel | None = None,
) -> None:
    """Every field in ``exposed`` is an option whose help is the field's description and
    whose shown default is the field's default (or ``defaults``'s value)."""
    found = params(*path)
    for field in exposed:
        info = model.model_fields[field]
        param = found.get(f"{key}__{field}")
        assert param is not None, (path, field)
        assert param.help == info.description, (path, field)
        value = getattr(defaults, field) if defaults is not None else info.get_default()
        show = expected_show(info, value, param.opts[0].removeprefix("--"))
        assert param.show_default == show, (path, field, param.show_default)


TOP = {"models", "model", "dtype", "device"}
STUDY_FIELDS = {
    "model",
    "seed",
    "dtype",
    "device",
    "device_map",
    "max_memory",
    "limit",
    "allow_missing_tasks",
    "save_adapters",
}


@pytest.mark.parametrize(
    ("command", "model"), [("convergence", ConvergenceSpec), ("audit", AuditSpec)]
)
def test_study_commands_show_their_sections_help_and_defaults(command, model):
    fields = set(model.model_fields) - TOP - {"tuning"}
    check_fields((command,), "section", model, fields)
    tuning = model.model_fields["tuning"].default
    check_fields(
        (command,), "tuning", TuningConfig, set(TuningConfig.model_fields) - {"seed"}, tuning
    )
    check_fields((command,), "study", Spec, STUDY_FIELDS)
    generated = {n for n in params(command) if n.startswith(("section__", "study__"))}
    assert generated == {f"section__{f}" for f in fields} | {f"study__{f}" for f in STUDY_FIELDS}


def test_decide_shows_decide_configs_help_and_defaults():
    fields = set(DecideConfig.model_fields) - {"tuning"}
    check_fields(("decide",), "config", DecideConfig, fields)
    check_fields(("decide",), "tuning", TuningConfig, set(TuningConfig.model_fields) - {"seed"})
    check_fields(("decide",), "study", Spec, {"device_map", "max_memory", "save_adapters"})
    assert {n for n in params("decide") if n.startswith("config__")} == {
        f"config__{f}" for f in fields
    }


def test_world_eval_shows_the_world_eval_sections_help_and_defaults():
    check_fields(("world", "eval"), "section", WorldEvalSpec, set(WorldEvalSpec.model_fields))
    opts = {p.opts[0]: p.name for p in params("world", "eval").values()}
    assert opts["--queries"] == "section__queries_per_task" and opts["--shots"] == "section__shots"


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("run", {"limit", "allow_missing_tasks", "save_adapters"}),
        ("plan", {"limit", "allow_missing_tasks"}),
    ],
)
def test_run_and_plan_show_the_specs_help_and_defaults(command, fields):
    check_fields((command,), "study", Spec, fields)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["convergence", "--k", "x"], "--k"),
        (["convergence", "--definition", "false,maybe"], "--definition"),
        (["convergence", "--flip-fraction", "2"], "--flip-fraction"),
        (["audit", "--instances-per-task", "5,half"], "--instances-per-task"),
        (["audit", "--lr", "-1"], "--lr"),
        (["convergence", "--max-steps", "0"], "--max-steps"),
        (
            ["decide", "--task", "t.jsonl", "--model", "world", "--tune-sizes", "8,most"],
            "--tune-sizes",
        ),
        (["world", "eval", "--queries", "0"], "--queries"),
        (["world", "eval", "--shots", "0,x"], "--shots"),
        (["run", "--out", "o", "--limit", "0"], "--limit"),
    ],
)
def test_a_bad_value_of_a_real_command_is_exit_2_naming_the_option(args, option, tmp_path):
    line = assert_one_error_line(invoke(*args, cwd=tmp_path))
    assert line.startswith(f"error: {option}: "), line
    assert list(tmp_path.iterdir()) == []


def test_world_eval_drops_a_repeated_k_as_it_always_has():
    from tunelens.experiments.world_eval.cli import WORLD_EVAL

    given = {"shots": WORLD_EVAL.read("shots", "0,4,0", "--shots")}
    assert WORLD_EVAL.build(given).shots == [0, 4]
