"""A toy experiment that lives only under tests/: the plug-in contract, exercised end to end.

It measures nothing interesting (the characters of each task's first inputs),
but it uses every hook an experiment can give the engine: a spec section
(``toy:``), cells, ``--limit``, the plan's work estimate, export rows and a
report section with its own template. Nothing in ``src/`` names it: it is
registered through the public registry API (:func:`tunelens.api.registry.add_experiment`)
or through an entry point of a test-installed distribution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field

from tunelens.api import Cell, Experiment, ReportPart, RunContext, StudyInputs
from tunelens.runs.costs import Work

NAME = "toy"
TEMPLATE = "toy.html.j2"
TOY_TEMPLATE = (
    '<h2 id="toy">Toy: characters per task</h2>\n'
    "<p>total {{ section.view.total }} characters over {{ section.view.tasks }} tasks</p>\n"
)


class ToySection(BaseModel):
    """The ``toy:`` section of a spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: str = Field("world:heldout", description="Tasks whose inputs are counted.")
    per_task: int = Field(3, ge=1, description="Inputs counted per task.")
    seed: int = Field(0, ge=0, description="Seed (shifted by the study's base seed).")


class ToyExperiment(Experiment):
    """Counts the characters of the first ``per_task`` inputs of each task: one cell a task."""

    name = NAME
    code_version = "1"
    section_model = ToySection

    def fill_section(self, section: ToySection, study: Any) -> ToySection:
        if "seed" in section.model_fields_set:
            return section
        return section.model_copy(update={"seed": section.seed + study.seed})

    def cells(self, section: ToySection, inputs: StudyInputs) -> list[Cell]:
        tasks = inputs.tasks(section.tasks)
        digest = inputs.task_digest(section.tasks)
        return [
            self.cell(
                f"toy {task.name}",
                {"task": task.name, "per_task": section.per_task},
                section.seed,
                {"tasks": digest},
                data={"inputs": [ex.input for ex in task.instances[: section.per_task]]},
            )
            for task in tasks
        ]

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        inputs = list(cell.data["inputs"])
        return {"task": cell.params["task"], "n": len(inputs), "chars": sum(map(len, inputs))}

    def aggregate(self, section: Any, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
        rows = [result for _, result in results]
        return {NAME: {"rows": rows, "total": sum(r["chars"] for r in rows)}}

    def limit_section(self, section: ToySection, n: int) -> ToySection:
        return section.model_copy(update={"per_task": min(section.per_task, n)})

    def estimate_work(self, cell: Cell, estimate: Any) -> Work:
        return Work(forward_tokens=10 * int(cell.params["per_task"]), forward_calls=1)

    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = results.get(NAME) or {}
        return [
            {"task": r["task"], "measure": "chars", "value": r["chars"]}
            for r in block.get("rows", [])
        ]

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        block = results.get(NAME)
        if not block:
            return None
        view = {"total": block["total"], "tasks": len(block["rows"])}
        return ReportPart(NAME, "Toy", TEMPLATE, view, jinja2.DictLoader({TEMPLATE: TOY_TEMPLATE}))
