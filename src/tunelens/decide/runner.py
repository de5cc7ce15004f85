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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

import tunelens
from tunelens.decide.compute import ModelShape
from tunelens.decide.config import DecideConfig
from tunelens.decide.costs import CostMatrix, load_costs
from tunelens.decide.methods import (
    Method,
    model_fingerprint,
    plan_methods,
    resolve_model_name,
    run_method,
    similarity_method,
)
from tunelens.decide.metrics import item_scores
from tunelens.decide.results import build_results
from tunelens.decide.split import Split, stratified_split
from tunelens.decide.verdict import verdict
from tunelens.errors import TunelensInputError
from tunelens.runs.store import CellStore, atomic_write_text, dumps, strict_json
from tunelens.tasks.types import Task

DECIDE_JSON = "decide.json"
DECIDE_HTML = "decide.html"
TIMINGS = "timings.json"


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


def _environment(config: DecideConfig) -> dict[str, Any]:
    from tunelens.runs.study import environment

    return environment(SimpleNamespace(device=config.device, seed=config.seed))


class _Progress:
    """One rich bar over the methods on stderr (or nothing)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self._bar: Any = None
        self._task: Any = None

    @contextmanager
    def running(self) -> Iterator[_Progress]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("[bold]decide[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as bar:
            self._bar = bar
            self._task = bar.add_task("", total=self.total)
            yield self

    def start(self, name: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=name)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def add(self, n: int) -> None:
        if self._bar is not None:
            self.total += n
            self._bar.update(self._task, total=self.total)


def _run_cells(
    methods: list[Method],
    store: CellStore,
    compute: Callable[[Method], dict],
    bar: _Progress,
    timings: dict[str, float],
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        bar.start(method.name)
        cached = store.read(method.cell)
        if cached is None:
            started = time.perf_counter()
            cached = json.loads(dumps(compute(method)))  # exactly what a re-run reads back
            store.write(method.cell, cached)
            timings[method.cell.name] = round(time.perf_counter() - started, 3)
        results[method.id] = cached
        bar.done()
    return results


def _similarity_k(
    config: DecideConfig,
    split: Split,
    results: dict[str, dict[str, Any]],
    methods: list[Method],
    notes: list[str],
) -> int | None:
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
    icl = [m for m in methods if m.family == "icl"]
    if not icl:
        notes.append("hidden-state similarity skipped: no ICL method was measured")
        return None
    references = [i.outputs for i in split.test]
    accuracy = {
        m.examples: float(np.mean(item_scores(results[m.id]["predictions"], references)))
        for m in icl
    }
    return max(accuracy, key=lambda k: (accuracy[k], -k))


def run_decide(
    task_path: str | Path,
    model: str,
    config: DecideConfig,
    out_dir: str | Path | None = None,
    *,
    costs_path: str | Path | None = None,
    progress: bool = True,
) -> DecideOutcome:
    """Measure every method on the task's test set and write decide.json and decide.html."""
    from tunelens.decide.report import write_report

    task = load_decide_task(task_path)
    costs: CostMatrix | None = load_costs(costs_path, task.labels) if costs_path else None
    out = Path(out_dir) if out_dir is not None else default_out_dir(task)
    demo_size = config.demo_size if config.demo_size is not None else max(config.k)
    split = stratified_split(
        task.instances, test_size=config.test_size, demo_size=demo_size, seed=config.seed
    )
    model_name = resolve_model_name(model)
    model_key = model_fingerprint(model_name)
    shape, model_info = model_shape(model_name)
    methods, notes = plan_methods(task, split, config, model_key)

    store = CellStore(out)
    timings_path = out / TIMINGS
    timings: dict[str, float] = {}
    loaded_holder: list[Any] = []

    def compute(method: Method) -> dict[str, Any]:
        if not loaded_holder:
            from tunelens.models.loading import load_model

            loaded_holder.append(load_model(model_name, dtype=config.dtype, device=config.device))
        return run_method(method, loaded_holder[0], task, split, config)

    bar = _Progress(progress, len(methods) + (1 if config.similarity_items else 0))
    try:
        with bar.running():
            results = _run_cells(methods, store, compute, bar, timings)
            k = _similarity_k(config, split, results, methods, notes)
            if k is not None:
                sim = similarity_method(task, split, config, model_key, k)
                results.update(_run_cells([sim], store, compute, bar, timings))
                methods = [*methods, sim]
            elif config.similarity_items:
                bar.done()
    finally:
        if timings:
            previous = {}
            if timings_path.is_file():
                try:
                    previous = json.loads(timings_path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    previous = {}
            atomic_write_text(timings_path, dumps({**previous, **timings}, indent=1) + "\n")

    measured = build_results(
        task=task,
        split=split,
        methods=methods,
        results=results,
        costs=costs,
        shape=shape,
        seed=config.seed,
        n_boot=config.bootstrap,
    )
    data: dict[str, Any] = {
        "tunelens_version": tunelens.__version__,
        "environment": _environment(config),
        "task": {
            "name": task.name,
            "source": task.source,
            "definition": task.definition,
            "labels": list(task.labels),
            "examples": len(task.instances),
        },
        "model": {"name": model, **model_info},
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
    data = strict_json(json.loads(dumps(data)))
    json_path = out / DECIDE_JSON
    atomic_write_text(json_path, dumps(data, indent=1) + "\n")
    html_path = write_report(out, data)
    return DecideOutcome(json_path, html_path, data)
