"""The ``world_eval`` spec section: few-shot accuracy on world tasks, one cell per k."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelens.bounds import Count, NonNegative, Seed
from tunelens.spec import StrictModel, Sweep, shifted_seeds

__all__ = ["DEFAULT_SHOTS", "WorldEvalSpec", "fill_world_eval"]

DEFAULT_SHOTS: tuple[int, ...] = (0, 1, 2, 4, 8, 16)


class WorldEvalSpec(StrictModel):
    """Few-shot accuracy of a model on world tasks (``tunelens world eval``), one cell per k."""

    model: str = Field("world", description="'world' or a local Hugging Face model directory.")
    tasks: str = Field("world:heldout", description="Tasks to evaluate.")
    shots: Sweep[NonNegative] = Field(list(DEFAULT_SHOTS), description="Values of k (>= 0).")
    queries_per_task: Count = Field(20, description="Queries per task and k.")
    labels: Literal["original", "novel"] = Field(
        "original",
        description="'novel' swaps each task's label words for words never used as labels in "
        "the world models' training (tunelens.tasks.world.relabel).",
    )
    definition: bool = Field(
        False, description="Put the task definition before the demonstrations (k = 0: only it)."
    )
    seed: Seed = Field(0, description="Seed of the demonstration draws.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights.")
    device: str = Field("cpu", description="torch device.")


def fill_world_eval(section: WorldEvalSpec, study: Any) -> WorldEvalSpec:
    """The section with its default seed shifted by the study's base seed."""
    if "seed" in section.model_fields_set:
        return section
    return section.model_copy(update={"seed": shifted_seeds(study.seed, [section.seed])[0]})
