"""Experiment specs: pydantic models of a YAML spec; every default lives here.

A spec has a ``convergence`` section (question 1), an ``audit`` section
(question 2), or both. Unknown keys are errors (``extra="forbid"``), so a typo
never silently falls back to a default. ``tasks`` fields take a path (a
Super-NaturalInstructions file or directory, a split file, a JSONL task) or one
of the embedded sets ``world:train`` / ``world:heldout``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunelens.errors import TunelensInputError
from tunelens.models.tuning.config import StudyTuning, TuningConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TuningSpec = TuningConfig
"""How a model is tuned: the library's one tuning configuration (``tunelens.models.tuning``).

Its defaults are the library's; a study changes one for itself only here (the
audit's ``tuning`` default below). The seed comes from the study's seeds.
"""


class ConvergenceSpec(_Strict):
    """Question 1: ICL vs IT hidden states. Every list is a sweep (one condition per value)."""

    tasks: str = Field("world:heldout", description="Tasks the demonstrations come from.")
    models: list[str] = Field(
        [], description="Models to sweep; empty means the spec's top-level model."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    n_pairs: int = Field(30, ge=2, description="(demonstration set, anchor) pairs per seed.")
    anchors_per_set: int = Field(1, ge=1, description="Anchors probed per tuned set.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Resampling seeds.")
    k: list[int] = Field([8], min_length=1, description="Demonstrations per set.")
    flip_fraction: list[float] = Field([0.0], description="Share of demonstrations mislabelled.")
    relevance: list[Literal["same", "other"]] = Field(
        ["same"], description="Demonstrations from the same task or another task."
    )
    definition: list[bool] = Field([False], description="Task definition in ICL/anchor prompts.")
    controls: list[Literal["none", "random_init", "shuffled"]] = Field(
        ["none", "random_init"],
        description="'none' is the real pipeline; the others are "
        "controls: a randomly initialised model, and shuffled-token demonstrations.",
    )
    template: Literal["plain", "tk", "chat"] = Field("plain", description="Prompt template.")
    tuning: StudyTuning = Field(TuningSpec(), description="How each demonstration set is tuned.")

    @field_validator("flip_fraction")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError("fractions must lie in [0, 1]")
        return v


class AuditSpec(_Strict):
    """Question 2: multi-task tuning grid, zero-shot on held-out tasks."""

    model: str | None = Field(None, description="Model to tune; empty means the spec's.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    train: str = Field("world:train", description="Training tasks.")
    test: str = Field("world:heldout", description="Held-out evaluation tasks.")
    definitions: list[Literal["original", "simplified", "none"]] = Field(
        ["original", "simplified", "none"], description="Definition variant while tuning."
    )
    examples: list[Literal["original", "delusive", "none"]] = Field(
        ["original", "delusive", "none"], description="Positive-example variant while tuning."
    )
    instances_per_task: list[int | Literal["full"]] = Field(
        [5], description="Training instances per task: low (5), mid, or 'full'."
    )
    seeds: list[int] = Field([0], min_length=1, description="Tuning seeds.")
    n_positive: int = Field(2, ge=0, description="Positive examples in the Tk-Instruct encoding.")
    eval_instances_per_task: int = Field(50, ge=1, description="Held-out instances scored.")
    max_new_tokens: int = Field(8, ge=1, description="Bound on generated tokens.")
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples for CIs over tasks.")
    tuning: StudyTuning = Field(
        TuningSpec(learning_rate=3e-3, epochs=2, batch_size=16),
        description="How the model is tuned on the training mixture (the audit's own "
        "learning rate, epochs and batch size).",
    )

    @field_validator("tuning", mode="before")
    @classmethod
    def _audit_tuning_defaults(cls, value: object) -> object:
        """A partial ``tuning`` mapping keeps the audit's own defaults for the keys it omits."""
        if isinstance(value, dict):
            default = cls.model_fields["tuning"].default
            return {**default.model_dump(), **value}
        return value


DEFAULT_SHOTS: tuple[int, ...] = (0, 1, 2, 4, 8, 16)


class WorldEvalSpec(_Strict):
    """Few-shot accuracy of a model on world tasks (``tunelens world eval``), one cell per k."""

    model: str = Field("world", description="'world' or a local Hugging Face model directory.")
    tasks: str = Field("world:heldout", description="Tasks to evaluate.")
    shots: list[int] = Field(list(DEFAULT_SHOTS), min_length=1, description="Values of k.")
    queries_per_task: int = Field(20, ge=1, description="Queries per task and k.")
    seed: int = Field(0, ge=0, description="Seed of the demonstration draws.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights.")
    device: str = Field("cpu", description="torch device.")


class Spec(_Strict):
    """A whole study."""

    model: str = Field("world", description="'world' or a local Hugging Face model directory.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights.")
    device: str = Field("cpu", description="torch device.")
    seed: int = Field(0, description="Base seed.")
    convergence: ConvergenceSpec | None = None
    audit: AuditSpec | None = None
    world_eval: WorldEvalSpec | None = None
    note: str = Field("", description="Free text shown in the report.")

    @model_validator(mode="after")
    def _fill_sections(self) -> Spec:
        """Sections inherit model, dtype and device, so each cell's key names its model."""
        common = {"dtype": self.dtype, "device": self.device}
        if self.convergence is not None:
            c = self.convergence
            update: dict[str, object] = {k: v for k, v in common.items() if getattr(c, k) is None}
            if not c.models:
                update["models"] = [self.model]
            object.__setattr__(self, "convergence", c.model_copy(update=update))
        if self.audit is not None:
            a = self.audit
            update = {k: v for k, v in common.items() if getattr(a, k) is None}
            if a.model is None:
                update["model"] = self.model
            object.__setattr__(self, "audit", a.model_copy(update=update))
        return self


def default_spec() -> Spec:
    """The embedded default: both studies on the world model, sized for 2 CPU cores."""
    return Spec(
        convergence=ConvergenceSpec(),
        audit=AuditSpec(),
        note="Embedded default: both studies on the world model and world tasks, at each "
        "study's own default sizes (convergence: k 8, 30 pairs x 3 seeds, random-init control; "
        "audit: the low-resource grid, 5 instances per task, one seed); about a minute on 2 CPU "
        "cores.",
    )


def load_spec(path: Path) -> Spec:
    """Parse and validate a YAML spec; errors name the file and the key path."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TunelensInputError("no such spec file", source=str(path)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise TunelensInputError(
            f"invalid YAML: {getattr(error, 'problem', error)}", source=str(path), where=where
        ) from None
    if not isinstance(data, dict):
        raise TunelensInputError("a spec must be a mapping of keys", source=str(path))
    return validate_spec(data, source=str(path))


def validate_spec(data: dict, *, source: str) -> Spec:
    """A Spec from plain data; the first error names ``source`` and the key path."""
    try:
        return Spec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TunelensInputError(first["msg"], source=source, where=where) from None
