"""The docs site's reference pages, generated from the code, so nothing is written twice.

A page of ``docs/`` holds a marker line ``<!-- tunelens:reference WHAT [ARG] -->`` where
a reference belongs; :func:`expand` replaces it with text generated from the code:

- ``cli``: every command and option, read from the typer app (:mod:`tunelens.cli`),
  exactly what ``tunelens ... --help`` shows (hidden options, the older names, stay hidden);
- ``spec``: the study spec: the common settings of :class:`tunelens.spec.Spec` and the
  section model of every registered experiment, as field tables and one JSON Schema;
- ``results FILE``: a results file (``results.json``, ``decide.json``): the common keys
  of :class:`tunelens.api.results.StudyResults` (results.json) and each experiment's
  results model, found through the registry, as field tables and one JSON Schema.

MkDocs runs this module as a hook (``mkdocs.yml``: ``hooks``), calling
:func:`on_page_markdown` for every page; the tests call :func:`expand` and compare it
with ``--help`` and the pydantic models.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

__all__ = [
    "MARKER",
    "cli_reference",
    "command_tree",
    "expand",
    "on_page_markdown",
    "results_files",
    "results_reference",
    "results_schema",
    "spec_reference",
    "spec_schema",
]

MARKER = re.compile(r"^<!-- tunelens:reference (?P<what>[a-z]+)(?: (?P<arg>\S+))? -->$", re.M)
"""A line a page puts where a generated reference goes."""

_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# ---------------------------------------------------------------- the hook


def expand(markdown: str) -> str:
    """``markdown`` with every marker line replaced by the reference it names."""

    def generated(match: re.Match[str]) -> str:
        what, arg = match["what"], match["arg"]
        if what == "cli":
            return cli_reference()
        if what == "spec":
            return spec_reference()
        if what == "results" and arg:
            return results_reference(arg)
        raise ValueError(f"unknown reference marker: {match[0]}")

    return MARKER.sub(generated, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: a page's markdown with its reference markers expanded."""
    return expand(markdown)


# ---------------------------------------------------------------- markdown helpers

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|obj):`~?([^`]+)`")
_CODE_SPAN = re.compile(r"(`+[^`]*`+)")


def _plain_markup(text: str) -> str:
    """Help text as ``--help`` prints it: rich markup tags resolved to their plain text."""
    from rich.errors import MarkupError
    from rich.text import Text

    try:
        return Text.from_markup(text).plain
    except MarkupError:
        return text


def _escape(text: str, *, table: bool = False) -> str:
    """Text that markdown shows as written: specials escaped outside code spans; in a table
    cell also on one line with its pipes escaped."""
    text = _ROLE.sub(r"`\1`", text.replace("``", "`"))
    parts = []
    for i, part in enumerate(_CODE_SPAN.split(text)):
        if i % 2 == 0:
            part = part.replace("\\", "\\\\").replace("&", "&amp;")
            part = part.replace("<", "&lt;").replace(">", "&gt;")
            part = re.sub(r"([*_\[\]#])", r"\\\1", part)
        parts.append(part.replace("|", "\\|") if table else part)
    out = "".join(parts)
    return " ".join(out.split()) if table else out


def _paragraphs(text: str) -> list[str]:
    """Help text or a docstring as markdown paragraphs: prose joined into lines, a paragraph
    of indented or command lines (an Examples epilog) kept as a console block."""
    blocks = []
    for raw in inspect.cleandoc(text).partition("\f")[0].split("\n\n"):
        lines = [line for line in raw.strip("\n").splitlines() if line.strip() != "\b"]
        if not lines:
            continue
        body = [line for line in lines if line.strip()]
        if all(_is_command_line(line) for line in body[1:]) and len(body) > 1:
            head, rest = body[0], body[1:]
            if _is_command_line(head):
                head, rest = "", body
            code = inspect.cleandoc("\n".join(rest))
            blocks.append((f"{_escape(_plain_markup(head))}\n\n" if head else "") + _fence(code))
        elif all(_is_command_line(line) for line in body):
            blocks.append(_fence(inspect.cleandoc("\n".join(body))))
        else:
            blocks.append(_escape(_plain_markup(" ".join(line.strip() for line in body))))
    return blocks


def _is_command_line(line: str) -> bool:
    stripped = line.strip()
    return line.startswith(("  ", "\t", "$ ")) or stripped.startswith(("tunelens ", "$ "))


def _fence(code: str) -> str:
    return f"```console\n{_plain_markup(code)}\n```"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------- the CLI


def command_tree() -> list[tuple[tuple[str, ...], Any, Any]]:
    """Every visible command of the typer app, depth first: (path, click command, context).

    The path starts with ``tunelens``; groups come before their commands, hidden
    commands are left out as ``--help`` leaves them out.
    """
    import typer.main

    from tunelens.cli import app

    root = typer.main.get_command(app)
    out: list[tuple[tuple[str, ...], Any, Any]] = []

    def walk(command: Any, path: tuple[str, ...], parent: Any) -> None:
        context = command.context_class(command, info_name=path[-1], parent=parent)
        out.append((path, command, context))
        for name, child in getattr(command, "commands", {}).items():
            if not child.hidden:
                walk(child, (*path, name), context)

    walk(root, ("tunelens",), None)
    return out


def _option_row(param: Any, context: Any) -> tuple[str, ...]:
    """One option or argument as ``--help`` shows it: names, value, default, help."""
    record, help_text = param.get_help_record(context)
    names = [*param.opts, *param.secondary_opts]
    last = record.split(" ")[-1]
    metavar = last if len(record.split(" ")) > 1 and last not in names else ""
    joiner = " / " if param.secondary_opts else ", "
    default = ""
    extras = re.search(r"\s*\[(?P<extra>[^\[\]]*)\]$", help_text)
    if extras and re.match(r"(default|required|env var)", extras["extra"]):
        help_text, default = help_text[: extras.start()], extras["extra"]
    if default == "required":
        default = "**required**"
    elif default.startswith("default: "):
        default = f"`{default.removeprefix('default: ')}`"
    return (
        joiner.join(f"`{name}`" for name in names),
        f"`{metavar}`" if metavar else "",
        default.replace("|", "\\|"),
        _escape(_plain_markup(help_text), table=True),
    )


def _summary(command: Any) -> str:
    """A command's line in its group's table, as ``--help`` shows it: its short help, else
    the first paragraph of its help."""
    text = command.short_help or inspect.cleandoc(command.help or "").split("\n\n")[0]
    return _escape(_plain_markup(text), table=True)


def _command_section(path: tuple[str, ...], command: Any, context: Any) -> str:
    title = " ".join(path)
    level = "#" * min(len(path) + 1, 4)
    parts = [f"{level} {title} {{#{_slug(title)}}}"]
    usage = command.get_usage(context).removeprefix("Usage: ")
    parts.append(f"```text\n{usage}\n```")
    parts += _paragraphs(command.help or "")
    subcommands = [
        (
            f"[`{name}`](#{_slug(f'{title} {name}')})",
            _summary(child),
        )
        for name, child in getattr(command, "commands", {}).items()
        if not child.hidden
    ]
    if subcommands:
        parts.append(_table(("command", "what it does"), subcommands))
    params = [p for p in command.get_params(context) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    if arguments:
        parts.append(
            _table(
                ("argument", "value", "required", "what it is"),
                [_option_row(p, context) for p in arguments],
            )
        )
    if options:
        parts.append(
            _table(
                ("option", "value", "default", "what it does"),
                [_option_row(p, context) for p in options],
            )
        )
    if command.epilog:
        parts += _paragraphs(command.epilog)
    return "\n\n".join(parts)


def cli_reference() -> str:
    """Markdown of every command: usage, help, arguments, options with their defaults."""
    return "\n\n".join(_command_section(*entry) for entry in command_tree()) + "\n"


# ---------------------------------------------------------------- JSON Schema


def _described(doc: str | None) -> str:
    return "\n\n".join(_paragraphs(doc)) if doc else ""


def _composite(title: str, doc: str, fields: Mapping[str, tuple[Any, Any]], *, extra: str) -> Any:
    """One pydantic model of a whole file, so that one schema pass names every definition."""
    config = ConfigDict(title=title, extra=extra)  # type: ignore[typeddict-item]
    return create_model(  # type: ignore[call-overload]
        "Composite", __config__=config, __doc__=doc, **fields
    )


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file: the common settings and every registered section."""
    from tunelens.spec import Spec, section_models

    fields: dict[str, tuple[Any, Any]] = {
        name: (info.annotation, info) for name, info in Spec.model_fields.items()
    }
    for name, model in section_models().items():
        fields[name] = (model | None, None)
    composite = _composite("tunelens spec", Spec.__doc__ or "", fields, extra="forbid")
    return {"$schema": _SCHEMA_DIALECT, **composite.model_json_schema()}


def results_files() -> dict[str, list[tuple[str, type[BaseModel] | None, tuple[str, ...]]]]:
    """Results file -> its writers: (experiment, results model or None, top-level keys)."""
    from tunelens.api import get_experiments

    files: dict[str, list[tuple[str, type[BaseModel] | None, tuple[str, ...]]]] = {}
    for name, experiment in get_experiments().items():
        entry = (name, experiment.results_model, tuple(experiment.results_keys()))
        files.setdefault(experiment.results_file, []).append(entry)
    return files


def _results_fields(file_name: str) -> dict[str, tuple[Any, Any]]:
    from tunelens.api.results import StudyResults

    writers = results_files().get(file_name)
    if not writers:
        raise ValueError(f"no experiment writes {file_name}")
    shared = file_name == "results.json"
    fields: dict[str, tuple[Any, Any]] = {}
    if shared:
        fields.update({k: (i.annotation, i) for k, i in StudyResults.model_fields.items()})
    for _, model, keys in writers:
        if model is None:
            fields.update({key: (Any, None) for key in keys})
            continue
        for key, info in model.model_fields.items():
            if key not in (StudyResults.model_fields if shared else {}):
                fields[key] = (info.annotation, info)
    return fields


def results_schema(file_name: str) -> dict[str, Any]:
    """The JSON Schema of a results file, from the results models of the experiments that
    write it (and, for results.json, the common keys)."""
    from tunelens.api.results import StudyResults

    writers = results_files()[file_name]
    first = writers[0][1] if len(writers) == 1 else StudyResults
    composite = _composite(
        file_name, (first.__doc__ if first else "") or "", _results_fields(file_name), extra="allow"
    )
    return {"$schema": _SCHEMA_DIALECT, **composite.model_json_schema()}


# ---------------------------------------------------------------- schema as markdown


def _type(schema: Mapping[str, Any]) -> str:
    """A JSON Schema type in words, definitions linked to their tables."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_slug(name)})"
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type")
    if kind == "array":
        if "prefixItems" in schema:
            return "[" + ", ".join(_type(item) for item in schema["prefixItems"]) + "]"
        inner = _type(schema.get("items", {}))
        text = f"list of {inner}"
    elif kind == "object":
        values = schema.get("additionalProperties")
        text = f"map of {_type(values)}" if isinstance(values, dict) else "object"
    elif kind is None:
        return "any"
    else:
        text = str(kind)
    return text + _bounds(schema)


def _bounds(schema: Mapping[str, Any]) -> str:
    words = {
        "minimum": ">=",
        "exclusiveMinimum": ">",
        "maximum": "<=",
        "exclusiveMaximum": "<",
        "minLength": "length >=",
        "maxLength": "length <=",
        "minItems": "items >=",
        "maxItems": "items <=",
    }
    found = [f"{word} {schema[key]}" for key, word in words.items() if key in schema]
    return f" ({', '.join(found)})" if found else ""


def _field_rows(schema: Mapping[str, Any]) -> list[tuple[str, ...]]:
    required = set(schema.get("required", []))
    rows: list[tuple[str, ...]] = []
    for name, field in schema.get("properties", {}).items():
        default = "**required**" if name in required else ""
        if "default" in field:
            default = f"`{json.dumps(field['default'])}`"
        rows.append(
            (
                f"`{name}`",
                _type(field),
                default,
                _escape(field.get("description", ""), table=True),
            )
        )
    return rows


def _model_section(name: str, schema: Mapping[str, Any], level: str) -> str:
    parts = [f"{level} {name} {{#{_slug(name)}}}"]
    if schema.get("description"):
        parts.append(_described(schema["description"]))
    if schema.get("properties"):
        parts.append(_table(("key", "type", "default", "meaning"), _field_rows(schema)))
    elif "enum" in schema:
        parts.append(f"One of {_type(schema)}.")
    if schema.get("additionalProperties") is True:
        parts.append("Other keys are allowed and kept.")
    return "\n\n".join(parts)


def _schema_pages(
    schema: Mapping[str, Any], groups: list[tuple[str, str, list[str]]], *, inline: bool
) -> str:
    """Markdown of a file's schema: its top-level keys in ``groups`` (heading, text, keys),
    every definition in a table, and the JSON Schema itself. With ``inline`` a group of one
    key whose value is a definition (a spec section) shows that definition's fields."""
    definitions = dict(schema.get("$defs", {}))
    header = ("key", "type", "default", "meaning")
    parts: list[str] = []
    for heading, text, keys in groups:
        parts += [f"## {heading} {{#{_slug(heading)}}}", text]
        shown = _definition_of(schema["properties"][keys[0]]) if len(keys) == 1 else None
        if inline and shown in definitions:
            parts.append(_table(header, _field_rows(definitions.pop(shown))))
            continue
        sub = {
            "properties": {key: schema["properties"][key] for key in keys},
            "required": [key for key in schema.get("required", []) if key in keys],
        }
        parts.append(_table(header, _field_rows(sub)))
    if definitions:
        parts.append("## Definitions")
        parts += [_model_section(n, d, "###") for n, d in sorted(definitions.items())]
    parts.append("## JSON Schema")
    block = json.dumps(schema, indent=2)
    parts.append(f'??? note "The whole JSON Schema"\n\n    ```json\n{_indent(block)}\n    ```')
    return "\n\n".join(part for part in parts if part) + "\n"


def _definition_of(field: Mapping[str, Any]) -> str | None:
    """The definition a section's value is (``X`` or ``X | None``), else None."""
    options = field.get("anyOf", [field])
    refs = [option["$ref"] for option in options if "$ref" in option]
    others = [option for option in options if "$ref" not in option]
    if len(refs) == 1 and all(option == {"type": "null"} for option in others):
        return str(refs[0].rsplit("/", 1)[-1])
    return None


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


def spec_reference() -> str:
    """Markdown of the spec: common settings, one table per section, the JSON Schema."""
    from tunelens.spec import Spec, section_models

    schema = spec_schema()
    first_paragraph = inspect.cleandoc(Spec.__doc__ or "").split("\n\n")[0]
    groups = [("Common settings", _described(first_paragraph), list(Spec.model_fields))]
    for name, model in section_models().items():
        text = f"The `{name}:` section. " + _described(model.__doc__)
        groups.append((f"Section {name}", text, [name]))
    return _schema_pages(schema, groups, inline=True)


def results_reference(file_name: str) -> str:
    """Markdown of a results file: its keys by experiment, every definition, the schema."""
    from tunelens.api.results import StudyResults

    schema = results_schema(file_name)
    groups: list[tuple[str, str, list[str]]] = []
    if file_name == "results.json":
        groups.append(
            ("Common keys", _described(StudyResults.__doc__), list(StudyResults.model_fields))
        )
    for name, model, keys in results_files()[file_name]:
        if model is None:
            text = f"Written by the `{name}` experiment, which has no results model."
            fields = list(keys)
        else:
            text = f"Written by the `{name}` experiment (`{model.__module__}.{model.__name__}`)."
            common = StudyResults.model_fields if file_name == "results.json" else {}
            fields = [key for key in model.model_fields if key not in common]
        groups.append((f"Keys of {name}", text, fields))
    return _schema_pages(schema, groups, inline=False)
