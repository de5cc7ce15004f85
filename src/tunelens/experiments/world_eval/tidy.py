"""The world_eval experiment's table for ``tunelens export``: family x k.

``family`` (``all`` or a rule family), ``k``, ``metric`` (``accuracy``), then the value
columns of :func:`tunelens.report.tidy.measure_row`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.api.results import parse_file
from tunelens.experiments.world_eval.results import WorldEvalResults
from tunelens.report.tidy import Row, measure_row

__all__ = ["tidy_rows", "world_eval_rows"]


def tidy_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows from results.json data (its ``world_eval`` key, read typed)."""
    return world_eval_rows(parse_file(WorldEvalResults, results, what="results"))


def world_eval_rows(results: WorldEvalResults) -> list[Row]:
    """Accuracy per k over every task (``all``), then per rule family."""
    w = results.world_eval
    if w is None:
        return []
    rows = [
        measure_row({"family": "all", "k": int(k)}, "metric", "accuracy", v)
        for k, v in w.shots.items()
    ]
    for family, shots in sorted(w.per_family.items()):
        rows.extend(
            measure_row({"family": family, "k": int(k)}, "metric", "accuracy", v)
            for k, v in shots.items()
        )
    return rows
