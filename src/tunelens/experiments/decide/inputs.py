"""decide's inputs: the task (checked to be classification-like) and the model's shape.

Below both the experiment and the runner (each imports this module, neither the
other), so decide has no import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelens.errors import TunelensInputError
from tunelens.experiments.decide.compute import ModelShape
from tunelens.tasks.types import Task
from tunelens.terminal import warn

__all__ = ["check_decide_labels", "contradictions", "load_decide_task", "model_shape"]


def load_decide_task(path: str | Path) -> Task:
    """The task, which must be classification-like (a label space of two or more labels)."""
    from tunelens.tasks.loaders import load_task_file

    task = load_task_file(path)
    if task.labels is None:
        raise TunelensInputError(
            "decide needs a classification task: this task's outputs are free text (give "
            "'labels' in the JSONL header, or more examples per label)",
            source=str(path),
        )
    if len(task.labels) < 2:
        raise TunelensInputError(
            f"decide needs at least two labels; the task has only {task.labels[0]!r}",
            source=str(path),
        )
    check_decide_labels(task, str(path))
    for line in contradictions(task):
        warn(f"{path}: {line}")
    return task


def check_decide_labels(task: Task, source: str) -> None:
    """Labels that decide's scoring cannot use: two with one normalised text (also refused by
    the loaders), the name of the out-of-space bucket, and a label that normalises to nothing
    (an empty answer would count as it)."""
    from tunelens.experiments.decide.costs import OTHER
    from tunelens.measures.text import normalize_answer
    from tunelens.tasks.labels import check_label_space

    labels = task.labels or ()
    check_label_space(labels, source=source, task=task.name, where="labels")
    for label in labels:
        if label.strip().casefold() == OTHER:
            raise TunelensInputError(
                f"task {task.name!r}: the label {label!r} is reserved: decide counts answers "
                f"outside the label space as {OTHER!r}; rename the label",
                source=source,
                where="labels",
            )
        if not normalize_answer(label):
            raise TunelensInputError(
                f"task {task.name!r}: the label {label!r} is empty under the exact-match "
                "normalisation (punctuation and spaces are dropped), so an empty answer "
                "would count as it; use a word",
                source=source,
                where="labels",
            )


def contradictions(task: Task, *, limit: int = 3) -> list[str]:
    """Warnings for inputs given twice with different outputs (a model cannot learn both)."""
    outputs: dict[str, set[tuple[str, ...]]] = {}
    ids: dict[str, list[str]] = {}
    for inst in task.instances:
        outputs.setdefault(inst.input, set()).add(inst.outputs)
        ids.setdefault(inst.input, []).append(inst.id)
    clashes = [text for text, seen in outputs.items() if len(seen) > 1]
    lines = [
        f"instances {', '.join(map(repr, ids[text]))} have the same input and different "
        "outputs: no method can answer all of them"
        for text in clashes[:limit]
    ]
    if len(clashes) > limit:
        lines.append(f"{len(clashes) - limit} more inputs have contradictory outputs")
    return lines


def model_shape(model: str) -> tuple[ModelShape, dict[str, Any]]:
    """Sizes for the FLOP estimate, from the model's config.json (as ``tunelens plan``)."""
    from tunelens.runs.plan import model_size

    size = model_size(model)
    shape = ModelShape(size.non_embedding, size.layers, size.hidden)
    return shape, {**shape.to_json(), "total_parameters": size.total, "sizes_from": size.source}
