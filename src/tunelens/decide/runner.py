"""``run_decide``: task + model (+ costs) -> DIR/decide.json and DIR/decide.html.

The flow: load and check the task (it needs a label space), read the costs
file, split the examples (:mod:`tunelens.decide.split`), run every method as a
cell (:mod:`tunelens.decide.methods`; finished cells are stored atomically
under ``DIR/cells/decide/`` and skipped by a re-run, so a killed run loses only
the method in flight), then aggregate (:mod:`tunelens.decide.results`), write
the verdict (:mod:`tunelens.decide.verdict`) and the report. decide.json holds
no times (those go to ``DIR/timings.json``), so equal inputs give equal files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelens.decide.compute import ModelShape
from tunelens.decide.config import DecideConfig
from tunelens.decide.costs import CostMatrix, load_costs
from tunelens.errors import TunelensInputError
from tunelens.runs.store import atomic_write_text, dumps, strict_json
from tunelens.tasks.types import Task

DECIDE_JSON = "decide.json"
DECIDE_HTML = "decide.html"


@dataclass(frozen=True)
class DecideOutcome:
    """Where the results went, and the results themselves."""

    json_path: Path
    html_path: Path
    results: dict[str, Any]


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
    return task


def default_out_dir(task: Task) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task.name)
    return Path(f"decide-{safe}")


def model_shape(model: str) -> tuple[ModelShape, dict[str, Any]]:
    """Sizes for the FLOP estimate, from the model's config.json (as ``tunelens plan``)."""
    from tunelens.runs.plan import model_size

    size = model_size(model)
    shape = ModelShape(size.non_embedding, size.layers, size.hidden)
    return shape, {**shape.to_json(), "total_parameters": size.total, "sizes_from": size.source}


def run_decide(
    task_path: str | Path,
    model: str,
    config: DecideConfig,
    out_dir: str | Path | None = None,
    *,
    costs_path: str | Path | None = None,
    progress: bool = True,
    executor: str | Any = "local",
    address: str | None = None,
    save_adapters: bool = False,
) -> DecideOutcome:
    """Measure every method on the task's test set and write decide.json and decide.html.

    The methods are cells of :class:`tunelens.experiments.decide.DecideExperiment`,
    run by the same machinery as ``tunelens run`` (store, resume, local or Ray
    executor, progress, ``timings.json``).
    """
    from tunelens.api import StudyInputs, get_experiments
    from tunelens.decide.report import write_report
    from tunelens.experiments.decide import DecideSection
    from tunelens.runs.study import execute

    task = load_decide_task(task_path)
    costs: CostMatrix | None = load_costs(costs_path, task.labels or ()) if costs_path else None
    out = Path(out_dir) if out_dir is not None else default_out_dir(task)
    section = DecideSection(str(task_path), model, config, costs, task=task)
    inputs = StudyInputs()
    section.plan(inputs)  # a bad task or model fails here, before the folder is made
    experiment = get_experiments()["decide"]
    (run,) = execute(
        out,
        [(experiment, section)],
        inputs=inputs,
        executor=executor,
        address=address,
        progress=progress,
        limit=config.limit,
        results_file=DECIDE_JSON,
        save_adapters=save_adapters,
    )
    from tunelens.api.results import dump_decide
    from tunelens.runs.ranks import is_main_process

    data = dump_decide(strict_json(json.loads(dumps(run.aggregate()))))  # the typed shape
    json_path, html_path = out / DECIDE_JSON, out / DECIDE_HTML
    if is_main_process():  # under accelerate launch / torchrun, rank 0 writes
        atomic_write_text(json_path, dumps(data, indent=1) + "\n")
        html_path = write_report(out, data)
    return DecideOutcome(json_path, html_path, data)
