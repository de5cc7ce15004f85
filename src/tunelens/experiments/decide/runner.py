"""``run_decide``: task + model (+ costs) -> DIR/decide.json and DIR/decide.html.

The flow: load and check the task (it needs a label space), read the costs
file, split the examples (:mod:`tunelens.experiments.decide.split`), run every method as a
cell (:mod:`tunelens.experiments.decide.methods`; finished cells are stored atomically
under ``DIR/cells/decide/`` and skipped by a re-run, so a killed run loses only
the method in flight), then aggregate (:mod:`tunelens.experiments.decide.results`), write
the verdict (:mod:`tunelens.experiments.decide.verdict`) and the report. decide.json holds
no times (those go to ``DIR/timings.json``), so equal inputs give equal files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelens.experiments.decide.config import DecideConfig
from tunelens.experiments.decide.costs import CostMatrix, load_costs
from tunelens.experiments.decide.inputs import (
    load_decide_task,
)
from tunelens.io import atomic_write_all, refuse_overwriting_inputs
from tunelens.runs.store import dumps, strict_json
from tunelens.tasks.types import Task

DECIDE_JSON = "decide.json"
DECIDE_HTML = "decide.html"


@dataclass(frozen=True)
class DecideOutcome:
    """Where the results went, and the results themselves."""

    json_path: Path
    html_path: Path
    results: dict[str, Any]


def default_out_dir(task: Task) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task.name)
    return Path(f"decide-{safe}")


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
    placement: dict[str, str] | None = None,
) -> DecideOutcome:
    """Measure every method on the task's test set and write decide.json and decide.html.

    The methods are cells of :class:`tunelens.experiments.decide.experiment.DecideExperiment`,
    run by the same machinery as ``tunelens run`` (store, resume, local or Ray
    executor, progress, ``timings.json``). ``placement`` (``device_map``,
    ``max_memory``) goes to the model load.
    """
    from tunelens.api import StudyInputs, get_experiments
    from tunelens.experiments.decide.experiment import DecideSection
    from tunelens.experiments.decide.report import render_page
    from tunelens.runs.study import execute

    task = load_decide_task(task_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(task)
    written = [out / name for name in (DECIDE_JSON, DECIDE_HTML, "timings.json", "manifest.json")]
    refuse_overwriting_inputs([out, *written], [task_path, *([costs_path] if costs_path else [])])
    costs: CostMatrix | None = load_costs(costs_path, task.labels or ()) if costs_path else None
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
        placement=placement,
    )
    from tunelens.experiments.decide.schema import dump_decide
    from tunelens.runs.ranks import is_main_process

    data = dump_decide(strict_json(json.loads(dumps(run.aggregate()))))  # the typed shape
    json_path, html_path = out / DECIDE_JSON, out / DECIDE_HTML
    if is_main_process():  # under accelerate launch / torchrun, rank 0 writes
        # Both or neither: the page is rendered first, then both files are written together
        # (a full disk fails before either is replaced), decide.json last.
        page = render_page(out, data)
        atomic_write_all({html_path: page, json_path: dumps(data, indent=1) + "\n"})
    return DecideOutcome(json_path, html_path, data)
