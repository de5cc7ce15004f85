"""The tuning options of the study commands: :class:`TuningConfig`'s fields, one name each.

A thin use of :mod:`tunelens.options.config_options`: :data:`TUNING` says how
the tuning fields become options (the seed excepted: each command has its own
``--seed`` / ``--seeds``; ``--tuning-method`` for ``method``; the older
``--method`` and ``--lr`` still accepted but not listed). A command whose
configuration has a ``tuning`` field (a spec section, ``DecideConfig``) gets
these options through ``nested={"tuning": TUNING}``, shown with that field's
default (the audit's own learning rate, epochs and batch size).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from tunelens.models.tuning.config import TuningConfig
from tunelens.options.config_options import ConfigOptions

__all__ = ["HIDDEN_ALIASES", "NOT_OPTIONS", "TUNING", "option_names", "parse_tuning_options"]

NOT_OPTIONS = frozenset({"seed"})
"""Tuning fields without an option: the seed comes from the command's own seeds."""

CANONICAL: dict[str, tuple[str, ...]] = {"method": ("--tuning-method",)}
"""Option names that differ from ``--<field>``: the same name in every command."""

HIDDEN_ALIASES: dict[str, tuple[str, ...]] = {
    "method": ("--method",),
    "learning_rate": ("--lr",),
}
"""Older names, still accepted by every command but not listed in ``--help``."""

TUNING = ConfigOptions(
    TuningConfig,
    key="tuning",
    panel="Tuning",
    names=CANONICAL,
    aliases=HIDDEN_ALIASES,
    exclude=NOT_OPTIONS,
)
"""The tuning options of every command that tunes."""


def option_names(field: str, names: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    """The option names of a tuning field (``--lora-r``; ``--tuning-method``), unless
    ``names`` gives the field its own."""
    return dataclasses.replace(TUNING, names={**CANONICAL, **(names or {})}).option_names(field)


def parse_tuning_options(
    raw: Mapping[str, Any],
    defaults: TuningConfig,
    names: Mapping[str, Sequence[str]] | None = None,
) -> TuningConfig:
    """``defaults`` with the given options (None: not given) applied; errors name the option."""
    group = dataclasses.replace(TUNING, defaults=defaults, names={**CANONICAL, **(names or {})})
    typed = {field: group.option_names(field)[0] for field in raw}
    given = {
        field: group.read(field, value, typed[field])
        for field, value in raw.items()
        if value is not None
    }
    return typing.cast(TuningConfig, group.build(given, typed))
