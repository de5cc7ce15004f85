"""The ``convergence`` spec section: question 1, ICL vs IT hidden states, layer by layer.

Its fields carry the defaults, the help and the bounds; ``tunelens convergence``
makes its options from them and a YAML spec's ``convergence:`` key is validated
against it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tunelens.bounds import MAX_COUNT, MAX_LORA_RANK, Count, Seed
from tunelens.models.tuning.config import StudyTuning
from tunelens.spec import LayerList, Positive, StrictModel, Sweep, TuningSpec, study_defaults

__all__ = ["ConvergenceSpec", "fill_convergence"]


class ConvergenceSpec(StrictModel):
    """Question 1: ICL vs IT hidden states. Every list is a sweep (one condition per value)."""

    tasks: str = Field("world:heldout", description="Tasks the demonstrations come from.")
    models: list[str] = Field(
        [], description="Models to sweep; empty means the spec's top-level model."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    n_pairs: int = Field(
        30, ge=2, le=MAX_COUNT, description="(demonstration set, anchor) pairs per seed."
    )
    anchors_per_set: Count = Field(1, description="Anchors probed per tuned set.")
    seeds: Sweep[Seed] = Field([0, 1, 2], description="Resampling seeds.")
    k: Sweep[Positive] = Field(
        [8],
        description="Demonstrations per set (>= 1; at most what the tasks hold, checked once "
        "they load).",
    )
    flip_fraction: Sweep[float] = Field([0.0], description="Share of demonstrations mislabelled.")
    relevance: Sweep[Literal["same", "other"]] = Field(
        ["same"], description="Demonstrations from the same task or another task."
    )
    definition: Sweep[bool] = Field([False], description="Task definition in ICL/anchor prompts.")
    controls: Sweep[Literal["none", "random_init", "shuffled"]] = Field(
        ["none", "random_init"],
        description="'none' is the real pipeline; the others are "
        "controls: a randomly initialised model, and shuffled-token demonstrations.",
    )
    template: Literal["plain", "tk", "chat"] = Field("plain", description="Prompt template.")
    tuning: StudyTuning = Field(TuningSpec(), description="How each demonstration set is tuned.")
    tuning_methods: list[Literal["lora", "full"]] = Field(
        [],
        description="Tuning methods to sweep (lora, full); empty means tuning.method only.",
    )
    lora_ranks: list[int] = Field(
        [], description="LoRA ranks to sweep; empty means tuning.lora_r only."
    )
    target_module_sets: list[list[str]] = Field(
        [],
        description="LoRA target module sets to sweep, e.g. [[q_proj, v_proj], [all-linear]]; "
        "empty means tuning.target_modules only.",
    )
    patching: bool | None = Field(
        None,
        description="Activation patching (the causal test): patch the ICL and IT states into "
        "the zero-shot forward at each layer. Empty means on for the embedded world model, "
        "off for other models.",
    )
    patching_layers: LayerList = Field(
        [], description="Layers to patch (0 = embeddings); empty means every layer."
    )

    @field_validator("lora_ranks")
    @classmethod
    def _ranks(cls, v: list[int]) -> list[int]:
        if any(not 1 <= r <= MAX_LORA_RANK for r in v):
            raise ValueError(f"LoRA ranks must lie in 1 .. {MAX_LORA_RANK}")
        return v

    @field_validator("target_module_sets")
    @classmethod
    def _module_sets(cls, v: list[list[str]]) -> list[list[str]]:
        if any(not modules for modules in v):
            raise ValueError("a target module set needs at least one module name")
        return v

    def tuning_variants(self) -> list[TuningSpec]:
        """The tuning configurations swept: methods x ranks x target sets (LoRA-only factors
        do not multiply full fine-tuning), each the ``tuning`` section with those values."""
        variants: list[TuningSpec] = []
        for method in self.tuning_methods or [self.tuning.method]:
            if method == "full":
                combos: list[dict[str, object]] = [{"method": "full"}]
            else:
                combos = [
                    {"method": "lora", "lora_r": r, "target_modules": list(modules)}
                    for r in self.lora_ranks or [self.tuning.lora_r]
                    for modules in self.target_module_sets or [self.tuning.target_modules]
                ]
            for combo in combos:
                variant = self.tuning.model_copy(update=combo)
                if variant not in variants:
                    variants.append(variant)
        return variants

    @field_validator("flip_fraction")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError("fractions must lie in [0, 1]")
        return v


def fill_convergence(section: ConvergenceSpec, study: Any) -> ConvergenceSpec:
    """The section with the study's model(s), dtype and device where it names none, and its
    default seeds shifted by the study's base seed."""
    return section.model_copy(update=study_defaults(section, study))
