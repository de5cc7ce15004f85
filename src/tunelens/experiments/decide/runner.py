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

from tunelens.errors import TunelensInputError
from tunelens.experiments.decide.compute import ModelShape
from tunelens.experiments.decide.config import DecideConfig
from tunelens.experiments.decide.costs import CostMatrix, load_costs
from tunelens.io import atomic_write_all, refuse_overwriting_inputs
from tunelens.runs.store import dumps, strict_json
from tunelens.tasks.types import Task
from tunelens.terminal import warn

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
    check_decide_labels(task, str(path))
    for line in contradictions(task):
        warn(f"{path}: {line}")
    return task


def check_decide_labels(task: Task, source: str) -> None:
    """Labels that decide's scoring cannot use: two with one normalised text (also refused by
    the loaders), the name of the out-of-space bucket, and a label that normalises to nothing
    (an empty answer would count as it)."""
    from tunelens.experiments.decide.costs import OTHER
    from tunelens.measures.text import normalize_answer
    from tunelens.tasks.labels import check_label_space

    labels = task.labels or ()
    check_label_space(labels, source=source, task=task.name, where="labels")
    for label in labels:
        if label.strip().casefold() == OTHER:
            raise TunelensInputError(
                f"task {task.name!r}: the label {label!r} is reserved: decide counts answers "
                f"outside the label space as {OTHER!r}; rename the label",
                source=source,
                where="labels",
            )
        if not normalize_answer(label):
            raise TunelensInputError(
                f"task {task.name!r}: the label {label!r} is empty under the exact-match "
                "normalisation (punctuation and spaces are dropped), so an empty answer "
                "would count as it; use a word",
                source=source,
                where="labels",
            )


def contradictions(task: Task, *, limit: int = 3) -> list[str]:
    """Warnings for inputs given twice with different outputs (a model cannot learn both)."""
    outputs: dict[str, set[tuple[str, ...]]] = {}
    ids: dict[str, list[str]] = {}
    for inst in task.instances:
        outputs.setdefault(inst.input, set()).add(inst.outputs)
        ids.setdefault(inst.input, []).append(inst.id)
    clashes = [text for text, seen in outputs.items() if len(seen) > 1]
    lines = [
        f"instances {', '.join(map(repr, ids[text]))} have the same input and different "
        "outputs: no method can answer all of them"
        for text in clashes[:limit]
    ]
    if len(clashes) > limit:
        lines.append(f"{len(clashes) - limit} more inputs have contradictory outputs")
    return lines


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
