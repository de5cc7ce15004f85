"""The task-vector experiment's typed results: results.json ``task_vectors``, one entry per
(model, control), pooled over tasks and seeds.

:func:`dump_task_vectors` is what the aggregator writes through (a renamed or missing key
fails where it is made); :class:`TaskVectorsResults` is how the report and ``tunelens
export`` read the key back. Accuracies are percentages; every one comes with its 95%
bootstrap interval over test queries (``ci``) and its count (``n``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunelens.api.results import Number, ResultsModel, Stat, dump_as

__all__ = [
    "BestLayer",
    "Count",
    "Forwards",
    "LayerAccuracy",
    "SeedReading",
    "Share",
    "SourceResult",
    "TaskBest",
    "TaskVectorsEntry",
    "TaskVectorsResults",
    "Transfer",
    "dump_task_vectors",
]


class Count(Stat):
    """A percentage with its 95% CI and the number of queries it is read on."""

    n: int


class Share(ResultsModel):
    """(patched - zero-shot) / (ICL - zero-shot) with its CI; null with ``undecided`` saying
    why where the ICL gain itself is not above 0."""

    mean: float | None
    ci: list[float | None]
    undecided: str | None = None


class LayerAccuracy(ResultsModel):
    """Patched zero-shot accuracy at one layer (0 = embeddings, L = after block L)."""

    layer: int
    dev: Count
    test: Count


class BestLayer(ResultsModel):
    """The dev-chosen layer read on test, with paired differences on the same queries."""

    layer: int
    dev: Count
    test: Count
    minus_zero_shot: Count
    minus_icl: Count
    share_of_icl_gain: Share


class Transfer(ResultsModel):
    """Does the task vector carry the task to other queries (paired CI vs zero-shot)?"""

    verdict: str
    why: str


class TaskBest(ResultsModel):
    """One task's own dev-chosen layer and its dev / test accuracy there (percent)."""

    task: str
    layer: int
    dev: float | None
    test: float | None
    n_test: int


class SourceResult(ResultsModel):
    """One source of the vector (``icl``, or ``it``: the tuned model's)."""

    layers: list[LayerAccuracy]
    best_layer: int
    best: BestLayer
    transfer: Transfer
    per_task: list[TaskBest]
    per_task_best: Count


class SeedReading(ResultsModel):
    """One seed's test accuracies (the task vectors at the pooled best layer)."""

    seed: int
    accuracy: dict[str, Count]
    task_vector: dict[str, Count]


class Forwards(ResultsModel):
    """Prompt forwards by reading: summed over cells, and per (task, seed) cell."""

    total: dict[str, int]
    per_task_seed: dict[str, Number]


class TaskVectorsEntry(ResultsModel):
    """One (model, control): accuracies zero-shot / ICL / IT and each vector's curve."""

    condition: dict[str, Any]
    settings: dict[str, Any]
    seeds: list[int]
    tasks: list[str]
    skipped: list[dict[str, str]]
    n_dev: int
    n_test: int
    n_layers: int | None
    layer_labels: list[dict[str, Any]] | None = None
    accuracy: dict[str, Count]
    icl_gain: Count
    sources: dict[str, SourceResult]
    per_seed: list[SeedReading]
    forwards: Forwards


class TaskVectorsResults(ResultsModel):
    """results.json as the task-vector experiment reads it: its key, the rest kept as is."""

    task_vectors: list[TaskVectorsEntry] | None = None


def dump_task_vectors(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """results.json ``task_vectors``, validated: the same entries, keys and values."""
    return [dump_as(TaskVectorsEntry, entry) for entry in entries]
