"""World evaluation as ``--limit`` and the preflight see it.

The engine (:mod:`tunelens.runs.limit`, :mod:`~tunelens.runs.preflight`) names
no experiment: it asks the hooks of
:class:`~tunelens.experiments.world_eval.WorldEvalExperiment`, which delegate here.
"""

from __future__ import annotations

import random

from tunelens.api import StudyInputs
from tunelens.errors import TunelensInputError
from tunelens.experiments.world_eval.spec import WorldEvalSpec
from tunelens.runs.preflight import located
from tunelens.tasks.sampling import sample_queries_with_demos

__all__ = ["limit_section", "preflight"]


def limit_section(section: WorldEvalSpec, n: int) -> WorldEvalSpec:
    """``--limit n``: at most n queries per task and k."""
    return section.model_copy(update={"queries_per_task": min(section.queries_per_task, n)})


def preflight(section: WorldEvalSpec, inputs: StudyInputs, source: str | None) -> None:
    """Every task must hold the largest k's demonstrations and a query besides
    (``world_eval.shots``), and there must be tasks (``world_eval.tasks``): checked before
    any model loads."""
    tasks = inputs.tasks(section.tasks)
    if not tasks and not inputs.strict:
        return
    if not tasks:
        raise TunelensInputError("no tasks to evaluate", source=source, where="world_eval.tasks")
    for task in tasks:
        try:
            sample_queries_with_demos(task, max(section.shots), 1, random.Random(0))
        except TunelensInputError as error:
            raise located(error, source, "world_eval.shots") from None
