"""``decide`` as an experiment: one task and model, every method a cell on the shared machinery.

The plan (split, methods, notes) is made once per section when its cells are
asked for, after the task is loaded and the model fingerprinted; each cell
carries its method, the task and the split. The similarity method's k depends
on the ICL results, so it is a follow-up cell (:meth:`followup_cells`).
:meth:`aggregate` builds the whole of ``decide.json`` (the verdict included);
``tunelens.experiments.decide.runner.run_decide`` writes it and the page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tunelens
from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.api.experiment import ReportPart
from tunelens.experiments.decide.config import DecideConfig
from tunelens.experiments.decide.schema import DecideResults

__all__ = ["DecideExperiment", "DecideSection"]


@dataclass
class DecidePlan:
    """What a decide section measures, fixed before any model runs."""

    task: Any
    split: Any
    model_name: str
    methods: list[Any]
    notes: list[str]
    inputs: dict[str, str]


@dataclass
class DecideSection:
    """One decide run's inputs: the task file, the model, the settings and the costs."""

    task_path: str
    model: str
    config: DecideConfig
    costs: Any = None  # a tunelens.experiments.decide.costs.CostMatrix, or None
    task: Any = None  # the task, when the caller has loaded it already (else read from task_path)
    _plan: DecidePlan | None = field(default=None, repr=False, compare=False)

    def plan(self, inputs: StudyInputs) -> DecidePlan:
        """Load the task, split it and plan the methods (once per section)."""
        if self._plan is None:
            from tunelens.experiments.decide.inputs import load_decide_task
            from tunelens.experiments.decide.methods import plan_methods, resolve_model_name
            from tunelens.experiments.decide.split import stratified_split
            from tunelens.tasks.digest import task_digest

            config = self.config
            task = self.task if self.task is not None else load_decide_task(self.task_path)
            demo_size = config.demo_size if config.demo_size is not None else max(config.k)
            split = stratified_split(
                task.instances, test_size=config.test_size, demo_size=demo_size, seed=config.seed
            )
            if config.limit is not None:  # --limit: a prefix keeps the label proportions
                split = dataclasses.replace(split, test=split.test[: config.limit])
            from tunelens.experiments.decide.split import shared_inputs
            from tunelens.terminal import warn

            for line in shared_inputs(split):
                warn(f"{self.task_path}: {line}")
            model_name = resolve_model_name(self.model)
            methods, notes = plan_methods(task, split, config, model_name)
            if config.limit is not None:  # the page and decide.json say it is a quick look
                from tunelens.runs.limit import limit_note

                notes = [limit_note(config.limit), *notes]
            digests = {"task": task_digest(task), "model": inputs.model_digest(model_name)}
            self._plan = DecidePlan(task, split, model_name, methods, notes, digests)
        return self._plan


@register_experiment
class DecideExperiment(Experiment):
    """Zero-shot, ICL at each k, tuning at each n, controls and similarity for one task."""

    cli_module = "tunelens.experiments.decide.cli"

    name = "decide"
    # 2: cells run on the shared machinery; keys hold task and model content digests.
    # 7: tuned methods rank their answers under the untuned model (token distribution shift).
    # 6: last block cut at read positions, fused AdamW (float noise); earlier: 5: break-even prefix
    # groups; tuned methods via tune_set (float noise)
    code_version = "7"
    results_model = DecideResults

    def _cell(self, method: Any, plan: DecidePlan, config: DecideConfig) -> Cell:
        return dataclasses.replace(
            method.cell,
            experiment=self.name,
            inputs=dict(plan.inputs),
            code_version=self.code_version,
            data={"method": method, "task": plan.task, "split": plan.split, "config": config},
        )

    def cells(self, section: DecideSection, inputs: StudyInputs) -> list[Cell]:
        plan = section.plan(inputs)
        return [self._cell(m, plan, section.config) for m in plan.methods]

    def followup_cells(
        self,
        section: DecideSection,
        inputs: StudyInputs,
        finished: list[tuple[Cell, dict[str, Any]]],
    ) -> list[Cell]:
        from tunelens.experiments.decide.methods import similarity_method

        plan = section.plan(inputs)
        k = _similarity_k(section.config, plan, finished, notes=[])
        if k is None:
            return []
        method = similarity_method(plan.task, plan.split, section.config, plan.model_name, k)
        return [self._cell(method, plan, section.config)]

    def limit_section(self, section: DecideSection, n: int) -> DecideSection:
        """``--limit n``: the first n items of the stratified test set (label proportions as
        even as n allows); the section's plan is made again."""
        if section.config.limit == n:
            return section
        config = section.config.model_copy(update={"limit": n})
        return dataclasses.replace(section, config=config, _plan=None)

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        from tunelens.experiments.decide.methods import run_method

        config: DecideConfig = cell.data["config"]
        method = cell.data["method"]
        loaded = context.load_model(
            method.cell.params["model"], dtype=config.dtype, device=config.device
        )
        return run_method(
            method,
            loaded,
            cell.data["task"],
            cell.data["split"],
            config,
            adapters_dir=context.adapters_dir,
        )

    def aggregate(
        self, section: DecideSection, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        """The whole of decide.json."""
        from tunelens.experiments.decide.inputs import model_shape
        from tunelens.experiments.decide.results import build_results
        from tunelens.experiments.decide.verdict import verdict
        from tunelens.runs.study import environment

        plan = section.plan(StudyInputs())
        config = section.config
        notes = list(plan.notes)
        _similarity_k(config, plan, results, notes=notes)
        methods = [cell.data["method"] for cell, _ in results]
        by_id = {cell.data["method"].id: result for cell, result in results}
        shape, model_info = model_shape(plan.model_name)
        task, split, costs = plan.task, plan.split, section.costs
        measured = build_results(
            task=task,
            split=split,
            methods=methods,
            results=by_id,
            costs=costs,
            shape=shape,
            seed=config.seed,
            n_boot=config.bootstrap,
        )
        data: dict[str, Any] = {
            "tunelens_version": tunelens.__version__,
            "environment": environment(config),
            "task": {
                "name": task.name,
                "source": task.source,
                "definition": task.definition,
                "labels": list(task.labels),
                "examples": len(task.instances),
            },
            "model": {"name": section.model, **model_info},
            "config": config.model_dump(mode="json"),
            "costs": costs.to_json() if costs is not None else None,
            "split": {
                "seed": config.seed,
                "stratified_by": "label (first reference output)",
                **split.sizes(),
                "per_label": split.per_label(),
            },
            **measured,
            "notes": notes,
        }
        data["verdict"] = verdict(data, notes)
        return data

    # ------------------------------------------------------------ export and report
    results_file = "decide.json"  # the whole file is decide's: a page of its own, decide.html

    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        """method x metric from decide.json (:mod:`tunelens.experiments.decide.tidy`)."""
        from tunelens.experiments.decide.tidy import tidy_rows

        return tidy_rows(results)

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        """decide.html's template and variables (:mod:`tunelens.experiments.decide.report`)."""
        from tunelens.experiments.decide.report import report_part

        return report_part(results, plots_dir)


def _similarity_k(
    config: DecideConfig,
    plan: DecidePlan,
    finished: list[tuple[Cell, dict[str, Any]]],
    *,
    notes: list[str],
) -> int | None:
    """The k at which ICL-IT similarity is measured (the best ICL k by default), or None."""
    import numpy as np

    from tunelens.experiments.decide.metrics import item_scores

    split = plan.split
    if config.similarity_items == 0:
        return None
    if config.similarity_k is not None:
        if config.similarity_k > len(split.demo_pool):
            notes.append(
                f"hidden-state similarity skipped: k={config.similarity_k} is more than "
                f"the demonstration pool ({len(split.demo_pool)})"
            )
            return None
        return config.similarity_k
    icl = [(cell.data["method"], result) for cell, result in finished]
    icl = [(m, r) for m, r in icl if m.family == "icl"]
    if not icl:
        notes.append("hidden-state similarity skipped: no ICL method was measured")
        return None
    references = [i.outputs for i in split.test]
    accuracy = {
        m.examples: float(np.mean(item_scores(r["predictions"], references))) for m, r in icl
    }
    return max(accuracy, key=lambda k: (accuracy[k], -k))
