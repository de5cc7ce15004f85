"""Checks that need the loaded tasks but no model: run after tasks load, before any model loads.

A spec can be valid on its own and still impossible for its tasks (``k: [64]``
on tasks of 20 instances). Such a spec fails here, with one line naming the
spec file and the dotted key, instead of after minutes of computing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tunelens.api import Experiment, StudyInputs
from tunelens.errors import TunelensInputError


def _fail(error: TunelensInputError, source: str | None, key: str) -> TunelensInputError:
    return TunelensInputError(error.message, source=source, where=key)


def check_convergence(section: Any, inputs: StudyInputs, source: str | None) -> None:
    from tunelens.tasks.sampling import sample_demo_sets

    tasks = inputs.tasks(section.tasks)
    if not tasks and not inputs.strict:
        return  # not on this machine (tunelens plan): nothing to check yet
    if "other" in section.relevance and len(tasks) < 2:
        raise TunelensInputError(
            f"relevance 'other' draws the demonstrations from another task, so it needs at "
            f"least two tasks; {section.tasks} names {len(tasks)}",
            source=source,
            where="convergence.relevance",
        )
    k_max = max(section.k)
    for relevance in section.relevance:
        try:
            # The same draw the cells make, at the largest k: it fails exactly when they would.
            sample_demo_sets(
                tasks,
                n_pairs=section.n_pairs,
                anchors_per_set=section.anchors_per_set,
                k=k_max,
                relevance=relevance,
                seed=section.seeds[0],
                k_max=k_max,
            )
        except TunelensInputError as error:
            key = (
                "convergence.relevance" if "relevance 'other'" in error.message else "convergence.k"
            )
            raise _fail(error, source, key) from None


def check_world_eval(section: Any, inputs: StudyInputs, source: str | None) -> None:
    from tunelens.tasks.sampling import sample_queries_with_demos

    tasks = inputs.tasks(section.tasks)
    if not tasks and not inputs.strict:
        return
    if not tasks:
        raise TunelensInputError("no tasks to evaluate", source=source, where="world_eval.tasks")
    for task in tasks:
        try:
            sample_queries_with_demos(task, max(section.shots), 1, random.Random(0))
        except TunelensInputError as error:
            raise _fail(error, source, "world_eval.shots") from None


CHECKS = {"convergence": check_convergence, "world_eval": check_world_eval}


def preflight(
    sections: Sequence[tuple[Experiment, Any]], inputs: StudyInputs, source: str | None
) -> None:
    """Every section's task-dependent bounds; the first failure is a TunelensInputError."""
    for experiment, section in sections:
        check = CHECKS.get(experiment.name)
        if check is not None:
            check(section, inputs, source)
