"""The bounds of every number a user gives: one definition, used by spec, decide and tuning.

Each numeric field of a spec section, of :class:`tunelens.experiments.decide.config.DecideConfig`
and of :class:`tunelens.models.tuning.config.TuningConfig` carries its bounds as
pydantic constraints built from these types, so a command checks an option
where it builds its configuration, before any task or model loads, and the
error names the option (``--seed``) or the spec key (``audit.bootstrap``).
An upper bound is where a value stops being a setting and becomes a crash:
a seed no generator takes, a count no index type holds, a number of bootstrap
resamples whose arrays do not fit in memory.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from tunelens.errors import TunelensInputError

__all__ = [
    "MAX_COUNT",
    "MAX_LORA_RANK",
    "MAX_NEW_TOKENS",
    "MAX_RESAMPLES",
    "MAX_SEED",
    "MAX_THREADS",
    "MIN_RESAMPLES",
    "Count",
    "LoraRank",
    "NonNegative",
    "Resamples",
    "Seed",
    "check_option",
    "check_range",
]

MAX_SEED = 2**32 - 1
"""Seeds are 0 .. 2**32 - 1: what every seeded generator (NumPy, torch, random) accepts."""

MAX_COUNT = 2**31 - 1
"""Any count (examples, steps, pairs, a batch): at most what a 32-bit index holds."""

MIN_RESAMPLES = 100
MAX_RESAMPLES = 10**6
"""Bootstrap resamples: 100 .. 10**6 (2 * 10**9 asked for 15 GiB before the first interval)."""

MAX_NEW_TOKENS = 2**16
"""Tokens generated per answer: far beyond any context a model has."""

MAX_THREADS = 4096
"""CPU threads for torch (a larger number overflows its C int, or starts that many threads)."""

MAX_LORA_RANK = 2**16
"""A LoRA rank: wider than any model's hidden size (a larger one only allocates)."""

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
NonNegative = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Resamples = Annotated[int, Field(ge=MIN_RESAMPLES, le=MAX_RESAMPLES)]
LoraRank = Annotated[int, Field(ge=1, le=MAX_LORA_RANK)]


def check_option(model: type[BaseModel], field: str, value: Any, option: str) -> Any:
    """``value`` checked against ``model.field``'s type and bounds; an error names ``option``.

    For an option applied to an already built configuration (``run --limit`` on
    a loaded spec): the bound stays the field's, written once.
    """
    info = model.model_fields[field]
    hint: Any = info.annotation
    if info.metadata:  # the field's bounds (ge, le) live here, not in the annotation
        hint = Annotated.__class_getitem__((hint, *info.metadata))  # type: ignore[attr-defined]
    adapter: TypeAdapter[Any] = TypeAdapter(hint)
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as error:
        first = error.errors()[0]
        raise TunelensInputError(f"{first['msg']} (got {value!r})", where=option) from None


def check_range(option: str, value: int, low: int, high: int | None = None) -> None:
    """An integer option within its bounds, or one error line naming the option."""
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise TunelensInputError(f"must be {bound}, got {value}", where=option)
