"""Command-line options generated from pydantic configuration models: the one config -> CLI path.

TRL's pattern (``HfArgumentParser``): a configuration model already holds, per
field, the default, the help (``description``) and the bounds; a command asks
for the model's options instead of typing them again, so the help and the
defaults ``--help`` shows cannot drift from the model a YAML spec is checked
against.

:class:`ConfigOptions` describes one model's options (their panel, names that
differ from ``--field-name``, hidden older names, left-out fields, nested
models); :func:`with_config_options` adds them to a typer command, which
receives, under the group's ``key``, the validated model (the command's
defaults with the given options applied) or, with ``given_only``, a dict of
the options given (a spec section: the study spec validates it and fills in
what it inherits).

How a field becomes an option:

* ``bool`` and ``bool | None``: ``--x/--no-x``; not given leaves the default.
* a list: one comma-separated string, each item read as the item type with
  pydantic in lax mode (``1,2,4`` -> ``[1, 2, 4]``, ``5,full`` for
  ``list[int | Literal["full"]]``, ``false,true`` -> ``[False, True]``); a list
  of lists separates its groups by ``;``.
* ``X | None``: ``none`` (or an empty value) gives None.
* a nested model (``tuning``): that model's own options, in their own panel.
* anything else: the field's type (int, float) or a string the model checks.

A bad value is a :class:`~tunelens.errors.TunelensInputError` naming the
option as typed (``--k: 'x' is not accepted (...)``): exit status 2, one line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from tunelens.errors import TunelensInputError

__all__ = ["ConfigOptions", "shown_default", "with_config_options"]

Kind = Literal["flag", "list", "lists", "nullable", "nested", "scalar"]
_NONE = ("none", "null", "")
_SHORT = 40  # a value longer than this is cut in an error line


def _bare(hint: Any) -> Any:
    """``Annotated[int, Field(ge=1)]`` -> ``int``: the type without its constraints."""
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _optional(hint: Any) -> Any | None:
    """``X`` of ``X | None``; None for any other hint."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if len(others) == len(typing.get_args(hint)) or len(others) != 1:
        return None
    return others[0]


def _is_model(hint: Any) -> bool:
    bare = _bare(hint)
    return isinstance(bare, type) and issubclass(bare, BaseModel)


def _kind(info: FieldInfo) -> Kind:
    """How a field is read from the command line (see the module docstring)."""
    hint = info.annotation
    inner = _optional(hint)
    if inner is not None:
        if _bare(inner) is bool:
            return "flag"
        if typing.get_origin(_bare(inner)) is list:
            raise TypeError(f"no option for an optional list ({hint}): give the list a default")
        return "nullable"
    bare = _bare(hint)
    if bare is bool:
        return "flag"
    if typing.get_origin(bare) is list:
        (item,) = typing.get_args(bare) or (str,)
        return "lists" if typing.get_origin(_bare(item)) is list else "list"
    if _is_model(hint):
        return "nested"
    return "scalar"


def _item_type(info: FieldInfo) -> Any:
    """The type of one comma-separated item: ``int`` for ``list[int]`` and for
    ``list[list[int]]`` (bounds included, so ``--k 0`` names ``--k``)."""
    item = typing.get_args(_bare(info.annotation))[0]
    if typing.get_origin(_bare(item)) is list:
        item = typing.get_args(_bare(item))[0]
    return item


def _short(text: str) -> str:
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."


def _lower_first(message: str) -> str:
    return message[:1].lower() + message[1:]


def _pydantic_message(error: Mapping[str, Any]) -> str:
    """pydantic's message, with the value given when it is a short number or word."""
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = isinstance(value, (int, float, str)) and len(repr(value)) <= _SHORT
    return f"{message} (got {value!r})" if shown else message


def shown_default(value: Any) -> str:
    """A default as the option takes it: ``1,2,4``; ``q_proj,v_proj;all-linear``; ``none``;
    ``empty`` for an empty list (the field's description says what empty means)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        if not value:
            return "empty"
        sep = ";" if all(isinstance(v, list | tuple) for v in value) else ","
        return sep.join(shown_default(v) for v in value)
    return str(value)


@dataclasses.dataclass(frozen=True)
class ConfigOptions:
    """One pydantic model's fields as typer options, and how the command receives them.

    ``key``: the command's parameter that receives the result (and the prefix of
    the generated parameters). ``defaults``: the configuration whose values
    ``--help`` shows and that given options update (None: the model's own field
    defaults). ``names``: option names of a field other than ``--field-name``.
    ``aliases``: older names, still accepted but not listed in ``--help``.
    ``exclude`` / ``only``: the fields without / with an option. ``nested``: the
    options of a nested model field (by default generated from it, its panel
    named after the field). ``given_only``: receive a dict of the given options
    (checked, field by field) instead of the validated model. ``normalise``: a
    field's value, read from the command line, before the model checks it (for
    a command whose reading is more forgiving than the spec's).
    """

    model: type[BaseModel]
    key: str
    panel: str | None = None
    defaults: BaseModel | None = None
    names: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    aliases: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    only: tuple[str, ...] | None = None
    nested: Mapping[str, ConfigOptions] = dataclasses.field(default_factory=dict)
    given_only: bool = False
    normalise: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ the fields
    def fields(self) -> dict[str, FieldInfo]:
        """The fields that get options, in the model's order (nested models included)."""
        chosen = self.model.model_fields
        if self.only is not None:
            unknown = set(self.only) - set(chosen)
            if unknown:
                raise ValueError(f"{self.model.__name__} has no field {sorted(unknown)}")
        return {
            name: info
            for name, info in chosen.items()
            if name not in self.exclude and (self.only is None or name in self.only)
        }

    def subset(self, *fields: str, **changes: Any) -> ConfigOptions:
        """The same options, for only ``fields`` (and any other attribute changed)."""
        return dataclasses.replace(self, only=fields, **changes)

    def option_names(self, field: str) -> tuple[str, ...]:
        """The listed names of a field's option: ``names[field]``, else ``--field-name``."""
        given = self.names.get(field)
        return tuple(given) if given else (f"--{field.replace('_', '-')}",)

    def hidden_names(self, field: str) -> tuple[str, ...]:
        return tuple(self.aliases.get(field, ()))

    def default(self, field: str) -> Any:
        """The value a field has when its option is not given (what ``--help`` shows)."""
        if self.defaults is not None:
            return getattr(self.defaults, field)
        return self.model.model_fields[field].get_default(call_default_factory=True)

    def child(self, field: str) -> ConfigOptions:
        """The options of nested model ``field``, showing and updating this group's value."""
        info = self.model.model_fields[field]
        base = self.nested.get(field) or ConfigOptions(
            model=_bare(info.annotation), key=field, panel=field.replace("_", " ").capitalize()
        )
        return dataclasses.replace(base, key=field, defaults=self.default(field), given_only=False)

    def children(self) -> dict[str, ConfigOptions]:
        return {f: self.child(f) for f, info in self.fields().items() if _kind(info) == "nested"}

    def flat_fields(self) -> dict[str, FieldInfo]:
        """The fields read from one option each (nested models have their own)."""
        return {f: info for f, info in self.fields().items() if _kind(info) != "nested"}

    # ------------------------------------------------------------------ typer parameters
    def _param(self, field: str) -> str:
        return f"{self.key}__{field}"

    def _alias_param(self, field: str) -> str:
        return f"{self.key}_alias__{field}"

    def _option(self, field: str, info: FieldInfo, decls: Sequence[str], hidden: bool) -> Any:
        """``Annotated[type | None, typer.Option(...)]`` for one field (None: not given)."""
        kind = _kind(info)
        common: dict[str, Any] = {
            "help": info.description or "",
            "show_default": shown_default(self.default(field)),
            "rich_help_panel": self.panel,
            "hidden": hidden,
        }
        if kind == "flag":
            flag = decls[0].removeprefix("--")
            value = self.default(field)
            if value is not None:
                common["show_default"] = flag if value else f"no-{flag}"
            switch = typer.Option(f"{decls[0]}/--no-{flag}", *decls[1:], **common)
            return Annotated[bool | None, switch]
        if kind == "list":
            return Annotated[str | None, typer.Option(*decls, metavar="A,B,...", **common)]
        if kind == "lists":
            return Annotated[str | None, typer.Option(*decls, metavar="A,B;C,...", **common)]
        if kind == "nullable":
            inner = _bare(_optional(info.annotation))
            word = {int: "INTEGER", float: "FLOAT"}.get(inner, "TEXT")
            if typing.get_origin(inner) is Literal:
                word = "|".join(map(str, typing.get_args(inner)))
            return Annotated[str | None, typer.Option(*decls, metavar=f"{word}|none", **common)]
        bare = _bare(info.annotation)
        if typing.get_origin(bare) is Literal:
            common["metavar"] = "|".join(map(str, typing.get_args(bare)))
        kind_type = bare if bare in (int, float) else str
        return Annotated[kind_type | None, typer.Option(*decls, **common)]

    def parameters(self) -> list[inspect.Parameter]:
        """The command parameters of every option (listed, then hidden), nested ones after."""
        fields = self.flat_fields()
        listed = [
            self._parameter(self._param(f), self._option(f, info, self.option_names(f), False))
            for f, info in fields.items()
        ]
        hidden = [
            self._parameter(self._alias_param(f), self._option(f, info, self.hidden_names(f), True))
            for f, info in fields.items()
            if self.hidden_names(f)
        ]
        nested = [p for child in self.children().values() for p in child.parameters()]
        return listed + hidden + nested

    @staticmethod
    def _parameter(name: str, annotation: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
        )

    def declared(self) -> Iterator[str]:
        """Every option name this group declares (listed and hidden, nested included)."""
        for field, info in self.flat_fields().items():
            for name in (*self.option_names(field), *self.hidden_names(field)):
                yield name
                if _kind(info) == "flag":
                    yield f"--no-{name.removeprefix('--')}"
        for child in self.children().values():
            yield from child.declared()

    # ------------------------------------------------------------------ reading the values
    def take(self, kwargs: dict[str, Any]) -> Any:
        """Remove this group's parameters from ``kwargs``; the model or the given dict."""
        given, typed = self._given(kwargs)
        return self.build(given, typed)

    def _given(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The options given (read as python values) and the name each was typed as."""
        given: dict[str, Any] = {}
        typed: dict[str, str] = {}
        for field in self.flat_fields():
            value = kwargs.pop(self._param(field), None)
            name = self.option_names(field)[0]
            old = kwargs.pop(self._alias_param(field), None) if self.hidden_names(field) else None
            if value is None and old is not None:
                value, name = old, self.hidden_names(field)[0]  # an error names what was typed
            if value is not None:
                typed[field] = name
                given[field] = self.read(field, value, name)
        for field, child in self.children().items():
            inner, inner_typed = child._given(kwargs)
            if inner:
                given[field] = child.build(inner, inner_typed)
                typed[field] = next(iter(inner_typed.values()))  # names the nested options
        return given, typed

    def read(self, field: str, value: Any, option: str) -> Any:
        """One option's command-line value as python (lists split, ``none`` for None)."""
        info = self.model.model_fields[field]
        kind = _kind(info)
        if kind == "list":
            value = _read_list(str(value), _item_type(info), option)
        elif kind == "lists":
            groups = [g for g in str(value).split(";") if g.strip()]
            if not groups:
                raise TunelensInputError("needs at least one value", where=option)
            value = [_read_list(g, _item_type(info), option) for g in groups]
        elif kind == "nullable" and isinstance(value, str):
            value = _read_nullable(value, _optional(info.annotation), option)
        normalise = self.normalise.get(field)
        return normalise(value) if normalise is not None else value

    def build(self, given: dict[str, Any], typed: Mapping[str, str] | None = None) -> Any:
        """The validated model (defaults updated by ``given``), or, with ``given_only``, the
        given values checked by the model; a bad value names its option."""
        typed = dict(typed or {})
        data = {**self.defaults.model_dump(), **given} if self.defaults is not None else given
        try:
            checked = self.model.model_validate(data)
        except ValidationError as error:
            self._raise(error, typed)
            return dict(given)  # a rule across fields: the spec that holds the section says it
        if self.given_only:
            return {field: getattr(checked, field) for field in given}
        return checked

    def _raise(self, error: ValidationError, typed: Mapping[str, str]) -> None:
        """Raise the first error that a field (an option) caused; else, for a whole model,
        the first error as it is."""
        fields = self.fields()
        for found in error.errors():
            loc = found["loc"]
            if not loc or loc[0] not in fields:
                continue
            field = str(loc[0])
            where = typed.get(field) or self.option_names(field)[0]
            raise TunelensInputError(_pydantic_message(found), where=where) from None
        if not self.given_only:  # a rule across fields (max_memory needs a device_map)
            raise TunelensInputError(_pydantic_message(error.errors()[0])) from None


def _read_items(text: str, item: Any, option: str) -> Iterator[Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(item)
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        yield _read_one(adapter, piece, option)


def _read_list(text: str, item: Any, option: str) -> list[Any]:
    """``'1, 2,4'`` -> ``[1, 2, 4]`` for ``int`` items; an empty list is an error."""
    values = list(_read_items(text, item, option))
    if not values:
        raise TunelensInputError("needs at least one value", where=option)
    return values


def _read_one(adapter: TypeAdapter[Any], piece: str, option: str) -> Any:
    """One item in pydantic's lax mode (``'2'`` -> 2); a word also in lower case (``All``)."""
    try:
        return adapter.validate_python(piece)
    except ValidationError as error:
        if piece.lower() != piece:
            try:
                return adapter.validate_python(piece.lower())
            except ValidationError:
                pass
        reasons = " or ".join(dict.fromkeys(_lower_first(e["msg"]) for e in error.errors()))
        raise TunelensInputError(
            f"{_short(piece)!r} is not accepted ({reasons})", where=option
        ) from None


def _read_nullable(text: str, inner: Any, option: str) -> Any:
    """``'4'`` -> 4 and ``'none'`` -> None for an ``int | None`` field; a string field keeps
    its text (``none`` is then a value like any other)."""
    if _bare(inner) is str:
        return text
    if text.strip().lower() in _NONE:
        return None
    return _read_one(TypeAdapter(inner), text.strip(), option)


def _own_names(parameter: inspect.Parameter, hint: Any) -> set[str]:
    """The option names a hand-written parameter declares (``--x/--no-x``: both)."""
    decls: tuple[str, ...] = ()
    for meta in typing.get_args(hint)[1:] if typing.get_origin(hint) is Annotated else ():
        if isinstance(meta, typer.models.ArgumentInfo):
            return set()
        if isinstance(meta, typer.models.ParameterInfo):
            # In Annotated, typer reads the first positional argument (``default``) as a name.
            first = (meta.default,) if isinstance(meta.default, str) else ()
            decls = (*first, *(meta.param_decls or ()))
    if not decls:
        decls = (f"--{parameter.name.replace('_', '-')}",)
    return {name for decl in decls for name in decl.split("/") if name.startswith("-")}


def with_config_options(
    *groups: ConfigOptions,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command with the options of ``groups``.

    The command declares one parameter per group, named by its ``key``; it
    receives there the group's validated model (or, with ``given_only``, the
    dict of given options). The generated options follow the command's own, in
    the groups' order; two options of one name are refused when the module
    loads, not when a user types one.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command, include_extras=True)
        signature = inspect.signature(command)
        keys = {group.key for group in groups}
        missing = keys - set(signature.parameters)
        if missing:
            raise TypeError(f"{command.__name__} takes no parameter {sorted(missing)}")
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name not in keys
        ]
        _refuse_duplicates(command.__name__, own, hints, groups)
        added = [p for group in groups for p in group.parameters()]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            for group in groups:
                kwargs[group.key] = group.take(kwargs)
            return command(**kwargs)

        parameters = own + added
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        wrapper.__annotations__["return"] = hints.get("return", types.NoneType)
        return wrapper

    return decorate


def _refuse_duplicates(
    name: str,
    own: Sequence[inspect.Parameter],
    hints: Mapping[str, Any],
    groups: Sequence[ConfigOptions],
) -> None:
    seen = {n for p in own for n in _own_names(p, hints.get(p.name, p.annotation))}
    for group in groups:
        for option in group.declared():
            if option in seen:
                raise TypeError(f"{name}: option {option} is declared twice")
            seen.add(option)
