"""The ``task_vectors`` spec section: the settings of Hendel et al. (2023) and the controls.

Its fields carry the defaults, the help and the bounds; ``tunelens task-vectors``
makes its options from them and a YAML spec's ``task_vectors:`` key is
validated against it. Defaults are the paper's: 5 demonstrations, 2 dummy
queries, 50 dev and 50 test sets per task, every block's output swept.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelens.bounds import Count, Seed
from tunelens.models.tuning.config import StudyTuning
from tunelens.spec import LayerList, Positive, StrictModel, Sweep, TuningSpec, study_defaults

__all__ = ["TaskVectorsSpec", "fill_task_vectors"]


class TaskVectorsSpec(StrictModel):
    """Task vectors per layer, chosen on dev, reported on test; ICL, IT and random-init."""

    tasks: str = Field(
        "world:heldout",
        description="Tasks the queries and demonstrations come from (tasks without a label "
        "space, or too small for the draw, are left out and listed).",
    )
    models: list[str] = Field(
        [], description="Models to sweep; empty means the spec's top-level model."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    k: Positive = Field(5, description="Demonstrations per set (Hendel et al.: 5).")
    dummy_queries: Count = Field(
        2,
        description="Dummy queries whose few-shot last-token states are averaged into one "
        "task vector (Hendel et al.: 2).",
    )
    dev_sets: Count = Field(
        50,
        description="Dev sets per task and seed (each: one query, its own demonstrations); "
        "the best layer is chosen on them.",
    )
    test_sets: Count = Field(
        50,
        description="Test sets per task and seed; the accuracy at the best layer is read on them.",
    )
    seeds: Sweep[Seed] = Field([0], description="Resampling seeds.")
    layers: LayerList = Field(
        [],
        description="Layers patched (L = after block L, 0 = the embeddings); empty means after "
        "every block (1 .. blocks), as Hendel et al. sweep.",
    )
    controls: Sweep[Literal["none", "random_init"]] = Field(
        ["none", "random_init"],
        description="'none' is the model itself; 'random_init' the same pipeline on a "
        "randomly initialised copy (a state an untrained network also carries is no evidence).",
    )
    it_vectors: bool = Field(
        True,
        description="Also take the vector from the model tuned on each set's demonstrations "
        "(its last-token state of the zero-shot dummy-query prompt), patched into the "
        "untuned model.",
    )
    definition: bool = Field(False, description="Task definition in every prompt.")
    template: Literal["plain", "tk", "chat"] = Field("plain", description="Prompt template.")
    tuning: StudyTuning = Field(
        TuningSpec(), description="How each demonstration set is tuned (the IT vector)."
    )


def fill_task_vectors(section: TaskVectorsSpec, study: Any) -> TaskVectorsSpec:
    """The section with the study's model(s), dtype and device where it names none, and its
    default seeds shifted by the study's base seed."""
    return section.model_copy(update=study_defaults(section, study))
