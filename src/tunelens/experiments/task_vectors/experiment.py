"""Task vectors as cells for ``tunelens.runs``: one cell per (model, control, seed, task).

A cell per task makes each task's cost its own entry of ``timings.json`` and
lets the local executor spread tasks over the cores; a task that cannot be
drawn from (no label space, too few instances) is a cell that loads no model
and says why, so results.json lists it. The science is in
:mod:`tunelens.experiments.task_vectors.compute` (a cell) and
:mod:`~tunelens.experiments.task_vectors.aggregate` (the pooled entries).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.api.experiment import ReportPart
from tunelens.experiments.task_vectors.results import TaskVectorsResults
from tunelens.experiments.task_vectors.sets import draw_settings, unusable_reason
from tunelens.experiments.task_vectors.spec import TaskVectorsSpec, fill_task_vectors

__all__ = ["TaskVectorsExperiment"]


def _task_entries(
    section: TaskVectorsSpec, inputs: StudyInputs
) -> list[tuple[str, Any, str | None, str]]:
    """(name, task, why it is left out or None, content digest) per task of the section.

    Tasks that are not on this machine (``tunelens plan`` for a cluster) stand in as
    as many unnamed tasks as :func:`tunelens.runs.plan.task_shape` counts, with no content.
    """
    from tunelens.tasks.digest import task_set_digest

    tasks = inputs.tasks(section.tasks)
    if not tasks and not inputs.strict:
        from tunelens.runs.plan import task_shape

        absent = inputs.task_digest(section.tasks)
        return [(f"task-{i}", None, None, absent) for i in range(task_shape(section.tasks).tasks)]
    settings = draw_settings(section)
    return [
        (task.name, task, unusable_reason(task, **settings), task_set_digest((task,)))
        for task in tasks
    ]


@register_experiment
class TaskVectorsExperiment(Experiment):
    """Hendel et al.'s task vectors, with the IT model's and a random-init control's."""

    name = "task_vectors"
    code_version = "1"
    section_model = TaskVectorsSpec
    results_model = TaskVectorsResults
    command_help = (
        "Task vectors (Hendel et al. 2023): does the few-shot state carry the task to other "
        "queries? Per layer, chosen on dev, read on test; from ICL, IT and a random model."
    )
    cell_overhead_s = 0.0

    def fill_section(self, section: TaskVectorsSpec, study: Any) -> TaskVectorsSpec:
        """What the section inherits from the study (:func:`fill_task_vectors`)."""
        return fill_task_vectors(section, study)

    def cells(self, section: TaskVectorsSpec, inputs: StudyInputs) -> list[Cell]:
        cells = []
        for model in section.models:
            model_digest = inputs.model_digest(model)
            for control, seed, (name, task, skip, digest) in itertools.product(
                section.controls, section.seeds, _task_entries(section, inputs)
            ):
                params = {
                    "model": model,
                    "dtype": section.dtype,
                    "device": section.device,
                    "tasks": section.tasks,
                    "task": name,
                    **draw_settings(section),
                    "layers": section.layers,
                    "control": control,
                    "it_vectors": section.it_vectors,
                    "definition": section.definition,
                    "template": section.template,
                    "tuning": section.tuning.model_dump(),
                }
                cells.append(
                    self.cell(
                        f"{model} {control} seed={seed} task={name}",
                        params,
                        seed,
                        {"task": digest, "model": model_digest},
                        {"task": task, "skip": skip},
                    )
                )
        return cells

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        from tunelens.experiments.task_vectors.compute import run_task_vector_cell

        p = cell.params
        if cell.data.get("skip"):
            return {"task": p["task"], "skipped": cell.data["skip"]}
        loaded = context.load_model(p["model"], dtype=p["dtype"], device=p["device"])
        return run_task_vector_cell(loaded, cell.data["task"], p, cell.seed)

    def aggregate(
        self, section: TaskVectorsSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        from tunelens.experiments.task_vectors.aggregate import aggregate_task_vectors

        return {self.name: aggregate_task_vectors(results)}

    # ------------------------------------------------------------ plan, --limit, preflight
    def limit_section(self, section: TaskVectorsSpec, n: int) -> TaskVectorsSpec:
        """At most n dev and n test sets per task and seed."""
        from tunelens.experiments.task_vectors.plan import limit_section

        return limit_section(section, n)

    def preflight(self, section: TaskVectorsSpec, inputs: StudyInputs, source: str | None) -> None:
        """Encoder-decoders and tasks none of which can be drawn from, before any model loads."""
        from tunelens.experiments.task_vectors.plan import preflight

        preflight(section, inputs, source)

    def plan_prompts(self, section: TaskVectorsSpec, inputs: StudyInputs) -> list[str]:
        """The ICL prompts of the first seed, for the context check of ``tunelens plan``."""
        from tunelens.experiments.task_vectors.plan import plan_prompts

        return plan_prompts(section, inputs)

    def estimate_work(self, cell: Cell, estimate: Any) -> Any:
        """The cell's forwards and tuning for ``tunelens plan``, counted as the cell runs."""
        from tunelens.experiments.task_vectors.plan import estimate_work

        return estimate_work(cell, estimate)

    def training_shape(self, cell: Cell) -> tuple[int, int] | None:
        """(batch, tokens per row) of the per-set tuning (IT vectors)."""
        from tunelens.experiments.task_vectors.plan import training_shape

        return training_shape(cell)

    def plan_conditions(self, cells: list[Cell]) -> int:
        """Conditions the report shows: (model, control)."""
        from tunelens.experiments.task_vectors.plan import plan_conditions

        return plan_conditions(cells)

    # ------------------------------------------------------------ export and report
    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        """condition x source x split x layer (:mod:`tunelens.experiments.task_vectors.tidy`)."""
        from tunelens.experiments.task_vectors.tidy import tidy_rows

        return tidy_rows(results)

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        """Verdict sentences, one figure and table per condition
        (:mod:`tunelens.experiments.task_vectors.report`)."""
        from tunelens.experiments.task_vectors.report import report_part

        return report_part(results, plots_dir)
