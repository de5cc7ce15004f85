"""The tuning options of the study commands, generated from the one tuning configuration.

:func:`with_tuning_options` adds one option per field of
:class:`~tunelens.models.tuning.TuningConfig` (the seed excepted: each command
has its own ``--seed`` / ``--seeds``) to a typer command. An option's help is
the field's description and its shown default is the command's own default
configuration, so neither is written twice. An option left out keeps that
default; the command receives, as ``tuning``, its default configuration with
the given options applied (checked; a bad value is an input error naming the
option).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from tunelens.errors import TunelensInputError
from tunelens.models.tuning.config import TuningConfig

__all__ = ["NOT_OPTIONS", "option_names", "parse_tuning_options", "with_tuning_options"]

NOT_OPTIONS = frozenset({"seed"})
"""Tuning fields without an option: the seed comes from the command's own seeds."""

CANONICAL = {"method": "--tuning-method"}
"""Option names that differ from ``--<field>``: the same name in every command."""

HIDDEN_ALIASES: dict[str, tuple[str, ...]] = {
    "method": ("--method",),
    "learning_rate": ("--lr",),
}
"""Older names, still accepted by every command but not listed in ``--help``."""

PANEL = "Tuning"
_PREFIX = "tuning__"
_ALIAS = "tuning_alias__"
_NONE = ("none", "")


def _fields() -> dict[str, FieldInfo]:
    return {k: v for k, v in TuningConfig.model_fields.items() if k not in NOT_OPTIONS}


def _is_nullable(info: FieldInfo) -> bool:
    return type(None) in typing.get_args(info.annotation)


def _is_list(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) is list


def option_names(field: str, names: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    """The option names of a tuning field: ``--lora-r`` (``CANONICAL`` for a few), unless the
    command names it itself."""
    given = (names or {}).get(field)
    if given:
        return tuple(given)
    return (CANONICAL.get(field) or f"--{field.replace('_', '-')}",)


def _shown(value: Any) -> str | bool:
    if value is None:
        return "none"  # a nullable field's default, written as the option takes it
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def _annotation(
    field: str, info: FieldInfo, default: Any, names: Mapping[str, Sequence[str]] | None
) -> Any:
    """``Annotated[type | None, typer.Option(...)]`` for one field (None: not given)."""
    decls = option_names(field, names)
    common: dict[str, Any] = {
        "help": info.description,
        "show_default": _shown(default),
        "rich_help_panel": PANEL,
    }
    if info.annotation is bool:
        flag = decls[0].removeprefix("--")
        common["show_default"] = flag if default else f"no-{flag}"
        return Annotated[
            bool | None,
            typer.Option(f"{decls[0]}/--no-{flag}", *decls[1:], **common),
        ]
    if _is_list(info):
        return Annotated[str | None, typer.Option(*decls, metavar="A,B,...", **common)]
    if _is_nullable(info):
        inner = next(t for t in typing.get_args(info.annotation) if t is not type(None))
        metavar = f"{'INTEGER' if inner is int else 'FLOAT'}|none"
        return Annotated[str | None, typer.Option(*decls, metavar=metavar, **common)]
    kind = info.annotation if info.annotation in (int, float) else str
    if typing.get_origin(info.annotation) is typing.Literal:
        common["metavar"] = "|".join(map(str, typing.get_args(info.annotation)))
    return Annotated[kind | None, typer.Option(*decls, **common)]


def parse_tuning_options(
    raw: Mapping[str, Any],
    defaults: TuningConfig,
    names: Mapping[str, Sequence[str]] | None = None,
) -> TuningConfig:
    """``defaults`` with the given options (None: not given) applied; errors name the option."""
    fields = _fields()
    given: dict[str, Any] = {}
    for field, value in raw.items():
        if value is None:
            continue
        info = fields[field]
        if _is_list(info):
            value = [piece.strip() for piece in str(value).split(",") if piece.strip()]
        elif _is_nullable(info) and isinstance(value, str) and value.strip().lower() in _NONE:
            value = None
        given[field] = value
    try:
        return TuningConfig.model_validate({**defaults.model_dump(), **given})
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        where = option_names(field, names)[0] if field in fields else "tuning options"
        value = first.get("input")
        shown = isinstance(value, (int, float, str)) and len(repr(value)) <= 40
        message = f"{first['msg']} (got {value!r})" if shown else first["msg"]
        raise TunelensInputError(message, where=where) from None


def with_tuning_options(
    defaults: TuningConfig, *, names: Mapping[str, Sequence[str]] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command with one option per tuning field.

    ``defaults`` is the command's default configuration (shown in the help);
    ``names`` gives a field its own option names; by default every command uses
    the same ones (``--tuning-method``, ``--learning-rate``, ``--lora-r``, ...)
    and accepts the older names of ``HIDDEN_ALIASES`` (``--method``, ``--lr``),
    which ``--help`` does not list. The command takes a ``tuning`` parameter and
    receives the configuration there (a :class:`TuningConfig`).
    """
    fields = _fields()

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command, include_extras=True)
        signature = inspect.signature(command)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name != "tuning"
        ]
        added = [
            inspect.Parameter(
                _PREFIX + field,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=_annotation(field, info, getattr(defaults, field), names),
            )
            for field, info in fields.items()
        ]
        taken = {n for field in fields for n in option_names(field, names)}
        aliases = {
            field: tuple(a for a in HIDDEN_ALIASES.get(field, ()) if a not in taken)
            for field in fields
        }
        hidden = [
            inspect.Parameter(
                _ALIAS + field,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    typing.get_args(_annotation(field, fields[field], None, names))[0],
                    typer.Option(*decls, hidden=True, help=fields[field].description),
                ],
            )
            for field, decls in aliases.items()
            if decls
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            raw = {field: kwargs.pop(_PREFIX + field, None) for field in fields}
            named = dict(names or {})
            for field in fields:
                old = kwargs.pop(_ALIAS + field, None)
                if raw[field] is None and old is not None:
                    raw[field] = old
                    named[field] = aliases[field][:1]  # an error names what was typed
            return command(**kwargs, tuning=parse_tuning_options(raw, defaults, named))

        parameters = own + added + hidden
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        wrapper.__annotations__["return"] = hints.get("return", types.NoneType)
        return wrapper

    return decorate
