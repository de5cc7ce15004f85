"""Function vectors (Todd et al., "Function Vectors in Large Language Models", ICLR 2024).

Does in-context learning build a representation of the *task* that a few
attention heads carry, and that works on its own when added to a zero-shot
forward? Per model, in two rounds of cells:

1. **heads** cells, one per (task, seed): each head's mean output at the last
   token of in-context prompts, and its indirect effect on shuffled-label prompts
   (:func:`~tunelens.experiments.function_vectors.measure.run_heads_cell`);
2. **vector** cells, asked for when the heads cells of a model are finished
   (``followup_cells``): the top-h heads over every task and seed of the model,
   their summed mean outputs (the task's function vector) added after each
   layer of zero-shot forwards, beside zero-shot and ICL accuracy
   (:func:`~tunelens.experiments.function_vectors.measure.run_vector_cell`).

Both rounds are content-addressed cells (the vector cells' keys hold the heads
they sum), so a killed run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.api.experiment import ReportPart
from tunelens.experiments.function_vectors.aggregate import (
    HEADS,
    VECTOR,
    aggregate_function_vectors,
    mean_aie,
    top_heads,
)
from tunelens.experiments.function_vectors.results import FunctionVectorsResults
from tunelens.experiments.function_vectors.spec import (
    FunctionVectorsSpec,
    fill_function_vectors,
)

__all__ = ["NAME", "FunctionVectorsExperiment"]

NAME = "function_vectors"


@register_experiment
class FunctionVectorsExperiment(Experiment):
    """The function-vector study as cells for ``tunelens.runs``."""

    command_help = (
        "Function vectors (Todd et al. 2024): which attention heads carry the task from the "
        "demonstrations, and does their summed output, added to a zero-shot forward, do "
        "what the demonstrations do? Layer by layer, with CIs."
    )

    name = NAME
    section_model = FunctionVectorsSpec
    results_model = FunctionVectorsResults
    code_version = "1"

    def fill_section(self, section: FunctionVectorsSpec, study: Any) -> FunctionVectorsSpec:
        """What the section inherits from the study (:func:`fill_function_vectors`)."""
        return fill_function_vectors(section, study)

    def cells(self, section: FunctionVectorsSpec, inputs: StudyInputs) -> list[Cell]:
        """One heads cell per (model, task, seed); the vector cells follow them."""
        tasks = inputs.tasks(section.tasks)
        digests = {"tasks": inputs.task_digest(section.tasks)}
        cells = []
        for model in section.models:
            cell_inputs = {**digests, "model": inputs.model_digest(model)}
            for task in tasks:
                for seed in section.seeds:
                    params = {
                        "stage": HEADS,
                        "model": model,
                        "dtype": section.dtype,
                        "device": section.device,
                        "tasks": section.tasks,
                        "task": task.name,
                        "k": section.k,
                        "n_prompts": section.n_prompts,
                        "n_queries": section.n_queries,
                        "template": section.template,
                        "definition": section.definition,
                    }
                    name = f"{model} heads {task.name} k={section.k} seed={seed}"
                    data = {"task": task, "layers": section.layers}  # data: not in the key
                    cells.append(self.cell(name, params, seed, cell_inputs, data))
        return cells

    def followup_cells(
        self,
        section: FunctionVectorsSpec,
        inputs: StudyInputs,
        finished: list[tuple[Cell, dict[str, Any]]],
    ) -> list[Cell]:
        """Per model whose heads cells are all finished: the top heads over its tasks and
        seeds, and one vector cell per heads cell that sums them."""
        heads_cells = [(c, r) for c, r in finished if c.params["stage"] == HEADS]
        cells = []
        for model in section.models:
            members = [(c, r) for c, r in heads_cells if c.params["model"] == model]
            if not members:
                continue
            chosen = top_heads(mean_aie([r for _, r in members]), section.top_heads)
            for cell, _ in members:
                params = {
                    **cell.params,
                    "stage": VECTOR,
                    "heads": chosen,
                    "layers": section.layers,
                }
                name = cell.name.replace(" heads ", f" vector top{section.top_heads} ", 1)
                cells.append(self.cell(name, params, cell.seed, cell.inputs, cell.data))
        return cells

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        from tunelens.experiments.function_vectors.measure import run_heads_cell, run_vector_cell

        p = cell.params
        loaded = context.load_model(p["model"], dtype=p["dtype"], device=p["device"])

        def report(done: int, total: int) -> None:
            context.progress(cell.name, done, total)

        run = run_heads_cell if p["stage"] == HEADS else run_vector_cell
        return run(loaded, cell.data["task"], p, cell.seed, report)

    def aggregate(
        self, section: FunctionVectorsSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        from tunelens.experiments.function_vectors.results import dump_function_vectors

        return {NAME: dump_function_vectors(aggregate_function_vectors(results, section.top_heads))}

    # ------------------------------------------------------------ plan, --limit, preflight
    def limit_section(self, section: FunctionVectorsSpec, n: int) -> FunctionVectorsSpec:
        """At most n averaged / shuffled prompts and n evaluation queries per task (at least 2)."""
        from tunelens.experiments.function_vectors.plan import limit_section

        return limit_section(section, n)

    def preflight(
        self, section: FunctionVectorsSpec, inputs: StudyInputs, source: str | None
    ) -> None:
        """Every task's draw (label space, pool size) and every model a decoder-only LM."""
        from tunelens.experiments.function_vectors.plan import preflight

        preflight(section, inputs, source)

    def plan_prompts(self, section: FunctionVectorsSpec, inputs: StudyInputs) -> list[str]:
        """The in-context prompts of the first seed, for the context check of ``tunelens plan``."""
        from tunelens.experiments.function_vectors.plan import plan_prompts

        return plan_prompts(section, inputs)

    def estimate_work(self, cell: Cell, estimate: Any) -> Any:
        """The heads cell's forwards and those of the vector cell that follows it."""
        from tunelens.experiments.function_vectors.plan import function_vectors_work

        return function_vectors_work(cell, estimate)

    def plan_conditions(self, cells: list[Cell]) -> int:
        """One condition per model."""
        return len({cell.params["model"] for cell in cells})

    # ------------------------------------------------------------ export and report
    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        """model x measure x layer x head (:mod:`tunelens.experiments.function_vectors.tidy`)."""
        from tunelens.experiments.function_vectors.tidy import tidy_rows

        return tidy_rows(results)

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        """The verdict, the heads x layers heat map and the by-layer curve per model."""
        from tunelens.experiments.function_vectors.report import report_part

        return report_part(results, plots_dir)
