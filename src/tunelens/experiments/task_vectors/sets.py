"""The seeded draws of a task-vector cell: per query its own demonstrations and dummy queries.

As in Hendel et al. (2023), every set is one query with k demonstrations; its
task vector comes from the same k demonstrations followed by *dummy* queries
(other instances of the task), so the vector never saw the query it is
patched into. Here the dummies are also kept apart from the demonstrations
(a dummy that is a demonstration would let the state copy its answer).

Test queries are the first ``test_sets`` instances of one seeded permutation
of a task's instances (distinct inputs), dev queries the next ``dev_sets``:
dev and test never share a query, and the best layer read on dev is an
honest choice for test. Each set's demonstrations and dummies come from a
generator of its own (seed, task, split, index), so a set does not change when
the other split's size does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunelens.tasks.sampling import as_examples
from tunelens.tasks.types import Example, Instance, Task

__all__ = ["QuerySet", "draw_sets", "draw_settings", "split_rows", "unusable_reason"]

SPLITS = ("test", "dev")


@dataclass(frozen=True)
class QuerySet:
    """One query, its demonstrations and the dummy queries its task vector is read on."""

    split: str  # "dev" or "test"
    query: Instance
    demos: tuple[Example, ...]
    dummies: tuple[Instance, ...]


def _distinct_inputs(task: Task) -> list[Instance]:
    """The task's instances, one per input (the first of repeated inputs)."""
    seen: set[str] = set()
    out = []
    for instance in task.instances:
        if instance.input not in seen:
            seen.add(instance.input)
            out.append(instance)
    return out


def unusable_reason(
    task: Task, *, k: int, dummy_queries: int, dev_sets: int, test_sets: int
) -> str | None:
    """Why ``task`` cannot be drawn from (None: it can): no label space (labels are scored
    by their whole continuations, so free text has nothing to score), or too few instances
    for distinct dev and test queries or for one set's query, demonstrations and dummies."""
    if not task.labels:
        return "no label space (free-text outputs)"
    n = len(_distinct_inputs(task))
    if n < dev_sets + test_sets:
        return (
            f"{n} distinct inputs; {dev_sets} dev + {test_sets} test queries need "
            f"{dev_sets + test_sets}"
        )
    need = 1 + k + dummy_queries
    if n < need:
        return (
            f"{n} distinct inputs; a query, {k} demonstrations and {dummy_queries} dummies "
            f"need {need}"
        )
    return None


def draw_sets(
    task: Task, *, k: int, dummy_queries: int, dev_sets: int, test_sets: int, seed: int
) -> list[QuerySet]:
    """The task's test sets, then its dev sets (see the module docstring)."""
    pool = _distinct_inputs(task)
    order = random.Random(f"task_vectors|{seed}|{task.name}").sample(pool, len(pool))
    queries = {"test": order[:test_sets], "dev": order[test_sets : test_sets + dev_sets]}
    sets = []
    for split in SPLITS:
        for i, query in enumerate(queries[split]):
            rng = random.Random(f"task_vectors|{seed}|{task.name}|{split}|{i}")
            others = [x for x in pool if x.input != query.input]
            drawn = rng.sample(others, k + dummy_queries)
            dummies = tuple(drawn[:dummy_queries])
            sets.append(QuerySet(split, query, tuple(as_examples(drawn[dummy_queries:])), dummies))
    return sets


def split_rows(sets: Sequence[QuerySet], split: str) -> list[int]:
    """Row indices of ``split``'s sets."""
    return [i for i, s in enumerate(sets) if s.split == split]


def draw_settings(section: Any) -> dict[str, int]:
    """The keywords of :func:`draw_sets` / :func:`unusable_reason` from a section (or a
    cell's params)."""
    keys = ("k", "dummy_queries", "dev_sets", "test_sets")
    if isinstance(section, dict):
        return {key: int(section[key]) for key in keys}
    return {key: int(getattr(section, key)) for key in keys}
