"""The ``function_vectors`` spec section: per-head indirect effects and the function vector.

Its fields carry the defaults, the help and the bounds; ``tunelens
function_vectors`` makes its options from them and a YAML spec's
``function_vectors:`` key is validated against it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelens.bounds import MAX_COUNT, Seed
from tunelens.spec import LayerList, Positive, StrictModel, Sweep, study_defaults

__all__ = ["FunctionVectorsSpec", "fill_function_vectors"]


class FunctionVectorsSpec(StrictModel):
    """Function vectors (Todd et al. 2024): the heads whose mean output restores the task on
    shuffled-label prompts, and their sum added to zero-shot forwards, layer by layer."""

    tasks: str = Field(
        "world:heldout", description="Tasks (each needs a label space) the prompts come from."
    )
    models: list[str] = Field(
        [], description="Models to sweep; empty means the spec's top-level model."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    k: Positive = Field(8, description="Demonstrations per in-context prompt.")
    n_prompts: int = Field(
        20,
        ge=2,
        le=MAX_COUNT,
        description="Per task and seed: in-context prompts whose last-token head outputs are "
        "averaged, and as many shuffled-label prompts the averages are patched into.",
    )
    n_queries: int = Field(
        12,
        ge=2,
        le=MAX_COUNT,
        description="Per task and seed: zero-shot queries the function vector is tested on "
        "(half choose the layer, half report it).",
    )
    top_heads: Positive = Field(
        10, description="Heads summed into the function vector (highest mean indirect effect)."
    )
    seeds: Sweep[Seed] = Field([0], description="Sampling seeds.")
    template: Literal["plain", "tk", "chat"] = Field("plain", description="Prompt template.")
    definition: bool = Field(
        False,
        description="Task definition in every prompt (off: the task must come from "
        "the demonstrations or the function vector).",
    )
    layers: LayerList = Field(
        [],
        description="Layers the function vector is added at (0 = embeddings, L = after block "
        "L); empty means every layer.",
    )


def fill_function_vectors(section: FunctionVectorsSpec, study: Any) -> FunctionVectorsSpec:
    """The section with the study's model(s), dtype and device where it names none, and its
    default seeds shifted by the study's base seed."""
    return section.model_copy(update=study_defaults(section, study))
