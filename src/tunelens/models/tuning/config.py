"""The one tuning configuration: library, spec (``tunelens.spec.TuningSpec``) and CLI.

Every setting has one default here and a ``description`` that doubles as spec
documentation and as the help of the study commands' generated options
(:mod:`tunelens.options.tuning_options`). A study may change a default for
itself once, in ``tunelens.spec`` (the audit tunes with its own learning rate,
epochs and batch size). Torch-free, so that importing a spec stays light.

The seed is no spec or CLI key: a study passes its own seed where tuning runs
(``config.with_seed(seed)``); it is left out of dumps, so a cell's parameters
never carry a seed that is not the one it ran with.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from tunelens.bounds import MAX_COUNT, Count, LoraRank, Seed

__all__ = ["DEFAULT_TARGET_MODULES", "StudyTuning", "TuningConfig"]

DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")


class TuningConfig(BaseModel):
    """How a model is tuned; every field's description doubles as CLI / spec help."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: Literal["lora", "full"] = Field(
        "lora", description="'lora': low-rank adapters on target_modules; 'full': all weights."
    )
    lora_r: LoraRank = Field(8, description="LoRA rank (columns of A, rows of B).")
    lora_alpha: float = Field(
        16, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r."
    )
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input (0 keeps batched tuning "
        "equal to sequential tuning).",
    )
    target_modules: list[str] = Field(
        list(DEFAULT_TARGET_MODULES),
        min_length=1,
        description="Module names (suffixes) that get adapters. With the default q_proj/v_proj, "
        "architectures that name them otherwise fall back to PEFT's per-architecture default "
        "(GPT-2 c_attn, T5 q/v, GPT-NeoX/BLOOM/Falcon query_key_value; Phi-3 qkv_proj); "
        "results record what was adapted (tuning.adapted_modules). A list of your own that "
        "matches nothing is an error.",
    )
    learning_rate: float = Field(
        1e-2,
        gt=0,
        description="Peak AdamW learning rate (1e-2 suits LoRA on a few demonstrations; "
        "full fine-tuning wants about 1e-5 to 5e-5).",
    )
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant", description="Constant learning rate, or linear decay to 0 over the steps."
    )
    epochs: Count = Field(10, description="Passes over the tuning pairs.")
    batch_size: Count = Field(8, description="Pairs per optimizer step (per process).")
    max_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="Stop after this many optimizer steps (before the epochs end).",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay.")
    max_grad_norm: float | None = Field(
        1.0,
        gt=0,
        description="Clip the gradient norm to this value; none (null in a spec) turns "
        "clipping off.",
    )
    seed: Seed = Field(
        0,
        exclude=True,
        description="Seeds LoRA initialisation, data order and dropout; a study sets it from "
        "its own seeds (not a spec key).",
    )
    shuffle: bool = Field(True, description="Reshuffle the pairs each epoch (seeded).")
    add_eos: bool = Field(
        True,
        description="Append the tokenizer's end-of-sequence token to each target, so the "
        "tuned model learns to stop.",
    )
    model_dropout: bool = Field(
        False,
        description="Keep the model's own dropout layers active while tuning (off: "
        "deterministic and independent of batching).",
    )
    gradient_accumulation_steps: Count = Field(
        1,
        description="Micro-batches per optimizer step in multi-task tuning (when it "
        "creates the Accelerator).",
    )
    save_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="Multi-task tuning with a checkpoint directory: also checkpoint every "
        "this many steps.",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _default_targets(cls, value: Any) -> Any:
        """``target_modules: null`` (older specs) means the default projections."""
        return list(DEFAULT_TARGET_MODULES) if value is None else value

    def with_seed(self, seed: int) -> TuningConfig:
        """The same settings, seeded with ``seed`` (where a study runs its tuning)."""
        return self.model_copy(update={"seed": seed})


def _no_seed(config: TuningConfig) -> TuningConfig:
    if "seed" in config.model_fields_set:
        raise ValueError("the tuning seed is not a spec key: it comes from the study's seeds")
    return config


StudyTuning = Annotated[TuningConfig, AfterValidator(_no_seed)]
"""A study's tuning section: the tuning configuration without a seed of its own."""
