"""The function-vectors table for ``tunelens export``: model x measure x layer x head.

Columns ``model``, ``k``, ``measure``, ``layer`` (empty for model-level measures),
``head`` (empty but for ``aie``), ``n`` (rows behind the value, where known),
then the value columns of :func:`tunelens.report.tidy.measure_row`. Measures:
``aie`` (every head's mean indirect effect; the top heads' with their CI),
``accuracy_vector`` / ``accuracy_vector_test`` per layer the vector was added at,
``accuracy_zero_shot``, ``accuracy_icl``, and the best layer's test readings
(``best_*``, whose ``layer`` is the chosen one). Accuracies are fractions (0-1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.api.results import parse_file
from tunelens.experiments.function_vectors.results import (
    FunctionVectorsEntry,
    FunctionVectorsResults,
)
from tunelens.report.tidy import Row, measure_row

__all__ = ["function_vectors_rows", "tidy_rows"]

BEST_MEASURES = (
    "accuracy_test",
    "zero_shot_test",
    "icl_test",
    "vector_gain_test",
    "icl_gain_test",
    "share_of_icl_gain",
)


def tidy_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows from results.json data (its ``function_vectors`` key, read typed)."""
    return function_vectors_rows(parse_file(FunctionVectorsResults, results, what="results"))


def _row(
    base: Row, measure: str, value: Any, layer: int | None = None, head: int | None = None
) -> Row:
    data = value.model_dump() if hasattr(value, "model_dump") else value
    n = data.get("n") if isinstance(data, dict) else None
    return measure_row({**base, "layer": layer, "head": head, "n": n}, "measure", measure, data)


def _entry_rows(entry: FunctionVectorsEntry) -> list[Row]:
    base: Row = {"model": entry.model, "k": entry.k}
    top = {(t.layer, t.head): t.aie for t in entry.top_heads}
    rows = []
    for layer_index, values in enumerate(entry.aie):
        for head, value in enumerate(values):
            layer = layer_index + 1
            rows.append(_row(base, "aie", top.get((layer, head), value), layer, head))
    for name in ("accuracy_icl_prompts", "accuracy_shuffled_prompts", "zero_shot", "icl"):
        value = getattr(entry, name)
        if value is not None:
            label = name if name.startswith("accuracy") else f"accuracy_{name}"
            rows.append(_row(base, label, value))
    for point in entry.curve or []:
        rows.append(_row(base, "accuracy_vector", point.accuracy, point.layer))
        rows.append(_row(base, "accuracy_vector_test", point.accuracy_test, point.layer))
    if entry.best is not None:
        for name in BEST_MEASURES:
            rows.append(_row(base, f"best_{name}", getattr(entry.best, name), entry.best.layer))
    return rows


def function_vectors_rows(results: FunctionVectorsResults) -> list[Row]:
    """Every measure of every model."""
    return [row for entry in results.function_vectors or [] for row in _entry_rows(entry)]
