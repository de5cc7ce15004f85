"""What a ``decide`` run measures and how; every field's description doubles as CLI help.

The defaults are sized for the embedded world model on 2 CPU cores (well under
10 minutes for a task of a few hundred examples); on a large model, lower the
tuning epochs or the test size, or run on a GPU.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelens.bounds import MAX_COUNT, MAX_NEW_TOKENS, Count, NonNegative, Resamples, Seed
from tunelens.errors import TunelensInputError
from tunelens.models.tuning.config import StudyTuning, TuningConfig

ALL: Final = "all"


class DecideConfig(BaseModel):
    """One decide run's settings (the task, model and costs file are given apart)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    k: list[Count] = Field(
        [1, 2, 4, 8, 16],
        min_length=1,
        description="Demonstrations per ICL prompt: one ICL method per value.",
    )
    tune_sizes: list[Count | Literal["all"]] = Field(
        [8, 32, 128, ALL],
        min_length=1,
        description="Tuning-pool examples per tuned model ('all' = the whole pool); sizes "
        "larger than the pool are skipped.",
    )
    seed: Seed = Field(
        0, description="Seeds the split, the tuning runs and the bootstrap (0 .. 2**32 - 1)."
    )
    test_size: float = Field(
        0.3,
        gt=0,
        le=MAX_COUNT,
        description="Test set: a fraction of the examples (0 < x < 1) or a count.",
    )
    demo_size: Count | None = Field(
        None, description="Demonstration pool size; default: the largest k."
    )
    template: Literal["plain", "tk", "chat"] = Field(
        "plain", description="Prompt template (plain: the world model's format)."
    )
    definition: bool = Field(True, description="Show the task definition in every prompt.")
    predict: Literal["generate", "score"] = Field(
        "generate",
        description="'generate': greedy answer, exact match (any text can come "
        "out); 'score': the label with the highest log-probability (always a label).",
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_NEW_TOKENS,
        description="Tokens generated per answer; default: the longest label + 2.",
    )
    controls: bool = Field(
        True,
        description="Run the format-only controls (simplified definition, delusive "
        "examples) at the largest tuning size.",
    )
    similarity_k: Count | None = Field(
        None,
        description="k for the ICL-IT hidden-state similarity; default: the k with "
        "the best ICL accuracy.",
    )
    similarity_items: NonNegative = Field(
        64, description="Test items probed for hidden-state similarity (0: skip it)."
    )
    bootstrap: Resamples = Field(
        2000, description="Bootstrap resamples for every interval (100 .. 10**6)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype: float32, bfloat16 or float16."
    )
    device: str = Field("cpu", description="torch device (cpu, cuda, cuda:1, mps).")
    tuning: StudyTuning = Field(
        TuningConfig(),
        description="How each tuned model is tuned (the one tuning configuration; its seed "
        "is ``seed``).",
    )
    limit: Count | None = Field(
        None,
        description="A quick look: score at most this many test items (the first of the "
        "stratified test set); empty: the whole test set.",
    )

    @field_validator("k")
    @classmethod
    def _k(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @field_validator("tune_sizes")
    @classmethod
    def _sizes(cls, value: list[int | str]) -> list[int | str]:
        numbers = sorted({v for v in value if isinstance(v, int)})
        return [*numbers, *([ALL] if ALL in value else [])]


def parse_int_list(text: str, option: str, *, allow_all: bool = False) -> list[int | str]:
    """'1,2,4' -> [1, 2, 4]; with ``allow_all`` also 'all'. Errors name the option."""
    values: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if allow_all and part.lower() == ALL:
            values.append(ALL)
            continue
        try:
            values.append(int(part))
        except ValueError:
            expected = "whole numbers or 'all'" if allow_all else "whole numbers"
            raise TunelensInputError(
                f"{part!r} is not one of the {expected} this option takes", where=option
            ) from None
    if not values:
        raise TunelensInputError("expected a comma-separated list, got nothing", where=option)
    return values


def make_config(**fields) -> DecideConfig:
    """A DecideConfig, or a TunelensInputError naming the first bad field as its CLI option."""
    try:
        return DecideConfig(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        # The field is the option; list indices and union tags (constrained-int) are not.
        field = str(first["loc"][0]) if first["loc"] else ""
        where = f"--{field.replace('_', '-')}" if field else "options"
        raise TunelensInputError(_message(first), where=where) from None


def _message(error: Any) -> str:
    """pydantic's message, with the value given when it is a short number or word."""
    value = error.get("input")
    shown = isinstance(value, (int, float, str)) and len(repr(value)) <= 40
    return f"{error['msg']} (got {value!r})" if shown else str(error["msg"])
