"""The task-vector experiment's table for ``tunelens export``: condition x source x split x
layer.

Columns ``model``, ``control``; ``source`` (``icl``, ``it``, or empty for the
unpatched readings); ``split`` (``dev`` / ``test``); ``seed`` (``pooled`` or a
seed); ``layer`` (empty for condition-level measures); ``task`` (empty but for
each task's own best layer); ``measure`` (``accuracy_zero_shot``,
``accuracy_icl``, ``accuracy_it``, ``task_vector_accuracy``,
``best_layer_accuracy``, ``best_minus_zero_shot``, ``best_minus_icl``,
``share_of_icl_gain``, ``per_task_best_accuracy``,
``task_best_layer_test_accuracy`` (at the task's own dev-chosen layer, in
``layer``), ``forwards_per_task_seed <reading>``); then the value columns of
:func:`tunelens.report.tidy.measure_row` (percent for accuracies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.api.results import parse_file
from tunelens.experiments.task_vectors.results import TaskVectorsEntry, TaskVectorsResults
from tunelens.report.tidy import Row, measure_row

__all__ = ["task_vector_rows", "tidy_rows"]


def tidy_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows from results.json data (its ``task_vectors`` key, read typed)."""
    return task_vector_rows(parse_file(TaskVectorsResults, results, what="results"))


def _stat(value: Any) -> Any:
    return value.model_dump(mode="python") if hasattr(value, "model_dump") else value


def _entry_rows(entry: TaskVectorsEntry) -> list[Row]:
    base: Row = {
        "model": entry.condition.get("model"),
        "control": entry.condition.get("control"),
        "source": "",
        "split": "test",
        "seed": "pooled",
        "layer": None,
        "task": "",
    }
    rows = [
        measure_row(base, "measure", f"accuracy_{name}", _stat(value))
        for name, value in entry.accuracy.items()
    ]
    for seed in entry.per_seed:
        at = {**base, "seed": str(seed.seed)}
        rows += [
            measure_row(at, "measure", f"accuracy_{n}", _stat(v)) for n, v in seed.accuracy.items()
        ]
        rows += [
            measure_row({**at, "source": s}, "measure", "best_layer_accuracy", _stat(v))
            for s, v in seed.task_vector.items()
        ]
    for source, block in entry.sources.items():
        rows += _source_rows({**base, "source": source}, block)
    for reading, count in entry.forwards.per_task_seed.items():
        rows.append(measure_row(base, "measure", f"forwards_per_task_seed {reading}", count))
    return rows


def _source_rows(base: Row, block: Any) -> list[Row]:
    rows = []
    for layer in block.layers:
        for split in ("dev", "test"):
            at = {**base, "split": split, "layer": layer.layer}
            rows.append(
                measure_row(at, "measure", "task_vector_accuracy", _stat(getattr(layer, split)))
            )
    best = {**base, "layer": block.best.layer}
    for name in ("test", "minus_zero_shot", "minus_icl", "share_of_icl_gain"):
        measure = (
            "best_layer_accuracy"
            if name == "test"
            else (name if name == "share_of_icl_gain" else f"best_{name}")
        )
        rows.append(measure_row(best, "measure", measure, _stat(getattr(block.best, name))))
    rows.append(measure_row(base, "measure", "per_task_best_accuracy", _stat(block.per_task_best)))
    for task in block.per_task:
        at = {**base, "task": task.task, "layer": task.layer}
        rows.append(measure_row(at, "measure", "task_best_layer_test_accuracy", task.test))
    return rows


def task_vector_rows(results: TaskVectorsResults) -> list[Row]:
    """Every measure of every condition: accuracies, per seed, then each source's curve."""
    rows: list[Row] = []
    for entry in results.task_vectors or []:
        rows += _entry_rows(entry)
    return rows
