"""The ``audit`` spec section: question 2, a multi-task tuning grid, zero-shot on held-out tasks.

Its fields carry the defaults, the help and the bounds; ``tunelens audit`` makes
its options from them and a YAML spec's ``audit:`` key is validated against it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tunelens.bounds import MAX_NEW_TOKENS, Count, NonNegative, Resamples, Seed
from tunelens.models.tuning.config import StudyTuning
from tunelens.spec import Positive, StrictModel, Sweep, TuningSpec, study_defaults

__all__ = ["AuditSpec", "fill_audit"]


class AuditSpec(StrictModel):
    """Question 2: multi-task tuning grid, zero-shot on held-out tasks."""

    model: str | None = Field(None, description="Model to tune; empty means the spec's.")
    models: list[str] = Field(
        [],
        description="Several models: one whole audit per model (results key audit_by_model; "
        "the top-level audit keys are the first model's). Empty means [model].",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    train: str = Field("world:train", description="Training tasks.")
    test: str = Field("world:heldout", description="Held-out evaluation tasks.")
    definitions: Sweep[Literal["original", "simplified", "none"]] = Field(
        ["original", "simplified", "none"], description="Definition variant while tuning."
    )
    examples: Sweep[Literal["original", "delusive", "none"]] = Field(
        ["original", "delusive", "none"], description="Positive-example variant while tuning."
    )
    instances_per_task: Sweep[Positive | Literal["full"]] = Field(
        [5], description="Training instances per task (>= 1): low (5), mid, or 'full'."
    )
    seeds: Sweep[Seed] = Field([0], description="Tuning seeds.")
    n_positive: NonNegative = Field(2, description="Positive examples in the Tk-Instruct encoding.")
    train_encoding: Literal["fixed", "mixed"] = Field(
        "fixed",
        description="How training prompts are encoded: 'fixed', each with the condition's "
        "definition and n_positive examples (the released Tk-Instruct def-pos models); "
        "'mixed', Tk-Instruct's collator with its tk_instruct flag: each instance draws one of "
        "definition only, examples only, definition + examples (those the condition has), "
        "so that definition-only evaluation is an encoding the tuning saw.",
    )
    eval_instances_per_task: Count = Field(
        100,
        description="Held-out instances scored per task, the first ones of each (Tk-Instruct: "
        "100). On world tasks 100 means every instance, so twin tasks share their inputs and "
        "the definition-blind bound is exactly 50%.",
    )
    eval_encodings: Sweep[Literal["definition_only", "definition_examples"]] = Field(
        ["definition_only", "definition_examples"],
        description="How held-out prompts are encoded for the untuned baseline and every "
        "tuned condition: 'definition_only' (truly zero-shot) or 'definition_examples' "
        "(Tk-Instruct's: definition + n_positive positive examples). The first leads the "
        "report and the baselines key.",
    )
    rouge_tokenizer: Literal["default", "unicode"] = Field(
        "default",
        description="ROUGE-L tokenizer: 'default' is the official SuperNI scorer "
        "(rouge_score's, ASCII only); 'unicode' is tunelens's own for non-English text.",
    )
    max_new_tokens: int = Field(
        8, ge=1, le=MAX_NEW_TOKENS, description="Bound on generated tokens."
    )
    bootstrap: Resamples = Field(
        2000, description="Bootstrap resamples for CIs over tasks (100 .. 10**6)."
    )
    tuning: StudyTuning = Field(
        TuningSpec(learning_rate=3e-3, epochs=2, batch_size=16),
        description="How the model is tuned on the training mixture (the audit's own "
        "learning rate, epochs and batch size).",
    )

    def audited_models(self) -> list[str]:
        """The models audited: ``models``, else ``[model]``."""
        return list(self.models) or [str(self.model)]

    @field_validator("tuning", mode="before")
    @classmethod
    def _audit_tuning_defaults(cls, value: object) -> object:
        """A partial ``tuning`` mapping keeps the audit's own defaults for the keys it omits."""
        if isinstance(value, dict):
            default = cls.model_fields["tuning"].default
            return {**default.model_dump(), **value}
        return value


def fill_audit(section: AuditSpec, study: Any) -> AuditSpec:
    """The section with the study's model(s), dtype and device where it names none (its first
    model as ``model``), and its default seeds shifted by the study's base seed."""
    update = study_defaults(section, study)
    if not section.models and section.model is not None:
        update["models"] = [section.model]
    chosen = update.get("models", section.models)
    update["model"] = chosen[0]  # type: ignore[index]
    return section.model_copy(update=update)
