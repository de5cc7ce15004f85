"""The world_eval experiment's typed results: results.json ``world_eval`` (also the
``tunelens world eval --json`` object); generic pieces in :mod:`tunelens.api.results`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from tunelens.api.results import ResultsModel, dump_as

__all__ = ["WorldEval", "WorldEvalResults", "dump_world_eval"]


class WorldEval(ResultsModel):
    """``tunelens world eval --json``: accuracies (0-100) per k, overall and per rule family."""

    shots: dict[str, float]
    random_baseline: float
    tasks: int
    queries_per_task: int
    per_family: dict[str, dict[str, float]]
    labels: Literal["original", "novel"] = "original"  # novel: label words never used as labels
    definition: bool = False  # the task definition came before the demonstrations


class WorldEvalResults(ResultsModel):
    """results.json as the world_eval experiment reads it: its key, the rest kept as is."""

    world_eval: WorldEval | None = None


def dump_world_eval(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tunelens world eval --json`` object, validated."""
    return dump_as(WorldEval, data)
