"""The docs' reference pages are the code: the CLI page lists what ``--help`` shows, and the
spec, results.json and decide.json pages are the pydantic models' JSON Schemas.

The generated text is read as the site reads it (the marker lines of docs/reference/*.md
expanded by :func:`tunelens.docs_gen.expand`) and compared with references taken another
way: ``--help`` rendered by rich for every command, the click tree walked here, and the
schemas of each model on its own, every ``$ref`` inlined.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from tunelens import docs_gen
from tunelens.api import get_experiments
from tunelens.api.registry import add_experiment, remove_experiment
from tunelens.cli import app

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"


def page(name: str) -> str:
    """A reference page as the site renders it: its markers expanded."""
    return docs_gen.expand((REFERENCE / name).read_text(encoding="utf-8"))


def sections(markdown: str) -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading of any level."""
    parts = re.split(r"^#{1,6} (.+?)(?: \{#[^}]*\})?$", markdown, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def table_keys(text: str) -> set[str]:
    """The backticked names in the first column of the markdown tables in ``text``."""
    keys: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            first = line.split(" | ")[0]
            keys |= set(re.findall(r"`([^`]+)`", first))
    return keys


def schema_block(markdown: str) -> dict[str, Any]:
    """The JSON Schema a page shows (its folded ``json`` block)."""
    match = re.search(r"```json\n(.*?)\n\s*```", markdown, flags=re.S)
    assert match, "the page shows no JSON Schema"
    return json.loads("\n".join(line[4:] for line in match[1].splitlines()))


def inline(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` replaced by the definition it names (titles dropped:
    a definition's title is its class name, which a composite schema may qualify)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = definitions[node["$ref"].rsplit("/", 1)[-1]]
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return inline({**target, **rest}, definitions)
        return {k: inline(v, definitions) for k, v in node.items() if k not in ("$defs", "title")}
    if isinstance(node, list):
        return [inline(v, definitions) for v in node]
    return node


def own_schema(model: Any) -> Any:
    schema = model.model_json_schema()
    return inline(schema, schema.get("$defs", {}))


# ---------------------------------------------------------------- the command line


def visible_commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every command ``--help`` lists, walked here from the click tree."""
    out = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        out.append((path, command))
        for name, child in getattr(command, "commands", {}).items():
            if not child.hidden:
                walk(child, (*path, name))

    walk(typer.main.get_command(app), ("tunelens",))
    return out


def help_output(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path[1:], "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_page_has_a_section_per_command_and_lists_every_option_help_shows():
    reference = sections(page("cli.md"))
    commands = visible_commands()
    assert {" ".join(path) for path, _ in commands} <= set(reference)
    for path, command in commands:
        title = " ".join(path)
        section = reference[title]
        shown = help_output(path)
        # Every option name --help prints (in its table or in a help text) is on the page.
        for name in set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", shown)):
            assert name in section, f"{title}: {name} is in --help but not in the reference"
        # The options table lists exactly the visible options, hidden (older) names left out.
        visible = {
            name
            for p in command.params
            if p.param_type_name == "option" and not p.hidden
            for name in [*p.opts, *p.secondary_opts]
        }
        hidden = {
            name
            for p in command.params
            if p.param_type_name == "option" and p.hidden
            for name in p.opts
        } - visible
        listed = {key for key in table_keys(section) if key.startswith("-")}
        assert listed == visible | {"--help"}, title
        assert not hidden & listed, f"{title}: hidden options listed: {hidden & listed}"
        # Each subcommand and each argument is named.
        for name, child in getattr(command, "commands", {}).items():
            assert (f"`{name}`" in section) != child.hidden, f"{title} {name}"
        for p in command.params:
            if p.param_type_name == "argument":
                assert f"`{p.name}`" in section, f"{title}: argument {p.name}"


def test_the_cli_page_is_read_from_whatever_app_the_command_line_has(monkeypatch):
    """Not written once: another app gives another page, its defaults and hidden options
    as its --help shows them."""
    toy = typer.Typer()

    @toy.command(epilog="Examples:\n\n  tunelens go --brand-new 4\n  tunelens go")
    def go(
        brand_new: int = typer.Option(3, help="An option added a moment ago."),
        older_name: int = typer.Option(1, hidden=True),
    ) -> None:
        """Go somewhere."""

    @toy.command()
    def stay() -> None:
        """Stay here."""

    monkeypatch.setattr("tunelens.cli.app", toy)
    reference = sections(docs_gen.cli_reference())
    assert set(reference) == {"tunelens", "tunelens go", "tunelens stay"}
    row = next(line for line in reference["tunelens go"].splitlines() if "--brand-new" in line)
    assert "`3`" in row and "An option added a moment ago." in row
    assert "older-name" not in reference["tunelens go"]
    assert "Go somewhere." in reference["tunelens go"]
    # An Examples epilog stays a block of command lines, not a paragraph rewrapped.
    assert "```console\ntunelens go --brand-new 4\ntunelens go\n```" in reference["tunelens go"]


# ---------------------------------------------------------------- the spec


@pytest.fixture
def toy_registered():
    """The toy experiment of the tests, registered as a plug-in would be."""
    add_experiment("toy", "tests.helpers.toy_experiment:ToyExperiment")
    try:
        yield
    finally:
        remove_experiment("toy")


def test_the_spec_page_is_the_spec_models():
    from tunelens.spec import Spec, section_models

    markdown = page("spec.md")
    schema = schema_block(markdown)
    definitions = schema.get("$defs", {})
    models = section_models()
    assert set(schema["properties"]) == set(Spec.model_fields) | set(models)
    assert schema["additionalProperties"] is False  # an unknown key is an error
    common = own_schema(Spec)["properties"]
    for name in Spec.model_fields:
        assert inline(schema["properties"][name], definitions) == common[name], name
    reference = sections(markdown)
    assert table_keys(reference["Common settings"]) >= set(Spec.model_fields)
    for name, model in models.items():
        section, null = inline(schema["properties"][name], definitions)["anyOf"]
        assert null == {"type": "null"}
        assert section == own_schema(model), name
        assert table_keys(reference[f"Section {name}"]) >= set(model.model_fields), name


def test_a_plugin_section_appears_on_the_spec_page(toy_registered):
    reference = sections(page("spec.md"))
    assert table_keys(reference["Section toy"]) >= {"tasks", "per_task", "seed"}
    assert "Inputs counted per task." in reference["Section toy"]


# ---------------------------------------------------------------- results files


def test_every_shipped_experiment_has_a_results_model_covering_its_keys():
    for name, experiment in get_experiments().items():
        model = experiment.results_model
        assert model is not None, f"{name}: no *Results model in its package"
        if experiment.results_file == "results.json":
            assert set(experiment.results_keys()) <= set(model.model_fields), name


def test_the_results_json_page_is_the_results_models():
    from tunelens.api.results import StudyResults

    markdown = page("results_json.md")
    schema = schema_block(markdown)
    definitions = schema.get("$defs", {})
    expected = dict(own_schema(StudyResults)["properties"])
    for experiment in get_experiments().values():
        if experiment.results_file == "results.json":
            expected.update(own_schema(experiment.results_model)["properties"])
    assert {k: inline(v, definitions) for k, v in schema["properties"].items()} == expected
    reference = sections(markdown)
    for name, experiment in get_experiments().items():
        if experiment.results_file == "results.json":
            assert table_keys(reference[f"Keys of {name}"]) >= set(experiment.results_keys())


def test_the_decide_json_page_is_decides_results_model():
    decide = get_experiments()["decide"]
    assert decide.results_file == "decide.json"
    schema = schema_block(page("decide_json.md"))
    own = own_schema(decide.results_model)
    assert inline(schema, schema.get("$defs", {}))["properties"] == own["properties"]
    assert set(schema["required"]) == set(own["required"])


def test_a_plugin_without_a_results_model_still_has_its_keys_listed(toy_registered):
    reference = sections(page("results_json.md"))
    assert "no results model" in reference["Keys of toy"]
    assert table_keys(reference["Keys of toy"]) == set(get_experiments()["toy"].results_keys())


# ---------------------------------------------------------------- the site uses them


def test_the_site_runs_the_generator_and_every_reference_page_has_its_marker():
    class Loader(yaml.SafeLoader):
        """mkdocs.yml's own tags (``!relative``) read as plain values."""

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)
    assert "src/tunelens/docs_gen.py" in config["hooks"]
    assert config["theme"]["name"] == "material"
    markers = {
        name: [m.group(0) for m in docs_gen.MARKER.finditer((REFERENCE / name).read_text())]
        for name in ("cli.md", "spec.md", "results_json.md", "decide_json.md")
    }
    assert markers == {
        "cli.md": ["<!-- tunelens:reference cli -->"],
        "spec.md": ["<!-- tunelens:reference spec -->"],
        "results_json.md": ["<!-- tunelens:reference results results.json -->"],
        "decide_json.md": ["<!-- tunelens:reference results decide.json -->"],
    }
    # Every results file an experiment writes has its page.
    pages = {m["arg"] for text in markers.values() for m in map(docs_gen.MARKER.match, text) if m}
    assert set(docs_gen.results_files()) <= pages
