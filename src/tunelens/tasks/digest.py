"""Content digests of tasks: what a cell's key records about the tasks it reads.

The digest covers everything a loaded task carries that a result can depend
on (name, definition, categories, label space, positive and negative
examples, every instance), so editing one task file changes exactly the
digests of the task sets that hold it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunelens.io import digest_json
from tunelens.tasks.types import Example, Task

__all__ = ["task_digest", "task_set_digest"]


def _examples(examples: Iterable[Example]) -> list[list[str]]:
    return [[e.input, e.output, e.explanation] for e in examples]


def task_digest(task: Task) -> str:
    """Digest of one task's content as loaded."""
    return digest_json(
        {
            "name": task.name,
            "definition": task.definition,
            "categories": list(task.categories),
            "labels": None if task.labels is None else list(task.labels),
            "positive": _examples(task.positive_examples),
            "negative": _examples(task.negative_examples),
            "instances": [[i.id, i.input, list(i.outputs)] for i in task.instances],
        }
    )


def task_set_digest(tasks: Iterable[Task]) -> str:
    """Digest of an ordered set of tasks."""
    return digest_json([task_digest(t) for t in tasks])
