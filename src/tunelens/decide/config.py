"""What a ``decide`` run measures and how; every field's description doubles as CLI help.

The defaults are sized for the embedded world model on 2 CPU cores (well under
10 minutes for a task of a few hundred examples); on a large model, lower the
tuning epochs or the test size, or run on a GPU.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelens.errors import TunelensInputError
from tunelens.models.tuning.config import StudyTuning, TuningConfig

ALL: Final = "all"


class DecideConfig(BaseModel):
    """One decide run's settings (the task, model and costs file are given apart)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: list[int] = Field(
        [1, 2, 4, 8, 16],
        min_length=1,
        description="Demonstrations per ICL prompt: one ICL method per value.",
    )
    tune_sizes: list[int | Literal["all"]] = Field(
        [8, 32, 128, ALL],
        min_length=1,
        description="Tuning-pool examples per tuned model ('all' = the whole pool); sizes "
        "larger than the pool are skipped.",
    )
    seed: int = Field(0, description="Seeds the split, the tuning runs and the bootstrap.")
    test_size: float = Field(
        0.3, gt=0, description="Test set: a fraction of the examples (0 < x < 1) or a count."
    )
    demo_size: int | None = Field(
        None, ge=1, description="Demonstration pool size; default: the largest k."
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
        None, ge=1, description="Tokens generated per answer; default: the longest label + 2."
    )
    controls: bool = Field(
        True,
        description="Run the format-only controls (simplified definition, delusive "
        "examples) at the largest tuning size.",
    )
    similarity_k: int | None = Field(
        None,
        ge=1,
        description="k for the ICL-IT hidden-state similarity; default: the k with "
        "the best ICL accuracy.",
    )
    similarity_items: int = Field(
        64, ge=0, description="Test items probed for hidden-state similarity (0: skip it)."
    )
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples for every interval.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype: float32, bfloat16 or float16."
    )
    device: str = Field("cpu", description="torch device (cpu, cuda, cuda:1, mps).")
    tuning: StudyTuning = Field(
        TuningConfig(),
        description="How each tuned model is tuned (the one tuning configuration; its seed "
        "is ``seed``).",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="A quick look: score at most this many test items (the first of the "
        "stratified test set); empty: the whole test set.",
    )

    @field_validator("k")
    @classmethod
    def _k(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError("every k must be >= 1")
        return sorted(set(value))

    @field_validator("tune_sizes")
    @classmethod
    def _sizes(cls, value: list[int | str]) -> list[int | str]:
        numbers = sorted({v for v in value if isinstance(v, int)})
        if any(n < 1 for n in numbers):
            raise ValueError("every tuning size must be >= 1 or 'all'")
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
        field = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        where = f"--{field.replace('_', '-')}" if field else "options"
        raise TunelensInputError(first["msg"], where=where) from None
