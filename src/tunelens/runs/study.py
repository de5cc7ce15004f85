"""One command for a whole study: spec -> cells -> store -> aggregate -> results.json.

Run directory::

    DIR/spec.yaml       the spec as run (every default filled in)
    DIR/cells/<experiment>/<key>.json   one finished cell each (see runs.store)
    DIR/results.json    aggregated results (deterministic: no times, sorted keys)
    DIR/timings.json    seconds per cell and per run (varies between runs)
    DIR/report.html, DIR/plots/   written by tunelens.report

Resume: cells whose file is in the store are skipped, so re-running the same
command after a kill computes only what is missing. Aggregation always reads
the results back from the store, in the order of ``Experiment.cells()``, so a
resumed run and an uninterrupted one write the same bytes.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import tunelens
from tunelens.experiments.base import Cell, Experiment
from tunelens.runs.executors import Executor, Job, make_executor
from tunelens.runs.store import CellStore, atomic_write_text, dumps, strict_json
from tunelens.spec import Spec

RESERVED_KEYS = ("spec", "tunelens_version", "environment")
RESULTS = "results.json"
TIMINGS = "timings.json"
SPEC = "spec.yaml"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _device_name(device: str) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H100 80GB HBM3)' when a CUDA device is named."""
    if not device.startswith("cuda"):
        return device
    try:
        import torch

        if torch.cuda.is_available():
            return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    except Exception:  # noqa: BLE001 - a description must never fail a run
        pass
    return device


def environment(spec: Spec) -> dict[str, Any]:
    """What results depend on besides the spec: versions, machine, device, seed.

    Nothing here changes between two runs on one machine, so it may sit in
    results.json without breaking byte-identical resumes.
    """
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "platform": platform.platform(),
        "device": _device_name(spec.device),
        "cpu_count": os.cpu_count(),
        "seed": spec.seed,
    }


def spec_yaml(spec: Spec) -> str:
    """The spec as YAML, every default filled in; loading it gives the same spec."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def plan_cells(
    spec: Spec, experiments: Mapping[str, Experiment]
) -> list[tuple[str, Any, list[Cell]]]:
    """(section name, section, cells) for each experiment whose spec section is present."""
    planned = []
    seen: set[str] = set()
    for name, experiment in experiments.items():
        section = getattr(spec, name, None)
        if section is None:
            continue
        cells = experiment.cells(section)
        for cell in cells:
            if cell.key in seen:
                raise ValueError(f"{name}: two cells share the key {cell.key} ({cell.name})")
            seen.add(cell.key)
        planned.append((name, section, cells))
    return planned


class _Bars:
    """Rich progress bars (per experiment, with ETA in cells) or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress: Any = None
        self._bars: dict[str, Any] = {}
        self._step: Any = None

    def __enter__(self) -> _Bars:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def experiment(self, name: str, total: int, done: int) -> None:
        if self._progress is not None:
            # Cells finished earlier start the bar filled; the ETA uses only this run's pace.
            self._bars[name] = self._progress.add_task(f"{name} cells", total=total, completed=done)

    def cell_done(self, job: Job, seconds: float) -> None:
        if self._progress is not None:
            self._progress.advance(self._bars[job.cell.experiment])
            if self._step is not None:
                self._progress.update(self._step, visible=False)

    def step(self, label: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if self._step is None:
            self._step = self._progress.add_task(f"  {label}", total=total, completed=done)
        else:
            self._progress.reset(
                self._step, total=total, completed=done, description=f"  {label}", visible=True
            )


def _read_timings(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_study(
    spec: Spec,
    out_dir: Path,
    *,
    executor: str | Executor = "local",
    address: str | None = None,
    progress: bool = True,
    experiments: Mapping[str, Experiment] | None = None,
) -> dict[str, Any]:
    """Run every unfinished cell of ``spec`` and write ``out_dir/results.json``; return it.

    ``experiments`` maps spec section names to experiments (default: the
    registry); ``executor`` is ``"local"``, ``"ray"`` or an executor object.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / SPEC, spec_yaml(spec))
    if experiments is None:
        from tunelens.experiments.registry import get_experiments

        experiments = get_experiments()
    runner = make_executor(executor, address=address) if isinstance(executor, str) else executor
    store = CellStore(out_dir)
    planned = plan_cells(spec, experiments)
    finished = store.finished_keys()

    timings_path = out_dir / TIMINGS
    timings = _read_timings(timings_path)
    cell_times: dict[str, Any] = dict(timings.get("cells") or {})

    def done(job: Job, seconds: float) -> None:
        cell_times[job.cell.key] = {
            "experiment": job.cell.experiment,
            "name": job.cell.name,
            "seconds": round(seconds, 3),
        }
        bars.cell_done(job, seconds)

    jobs = [
        Job(experiments[name], cell)
        for name, _, cells in planned
        for cell in cells
        if cell.key not in finished
    ]
    with _Bars(progress) as bars:
        for name, _, cells in planned:
            bars.experiment(name, len(cells), sum(c.key in finished for c in cells))
        runner.run(jobs, store, on_done=done, on_step=bars.step)
    ran = time.perf_counter() - started

    results: dict[str, Any] = {}
    for name, section, cells in planned:
        pairs = []
        for cell in cells:
            result = store.read(cell)
            if result is None:
                raise RuntimeError(f"{name}: cell {cell.name} ({cell.key}) missing after the run")
            pairs.append((cell, result))
        for key, value in experiments[name].aggregate(section, pairs).items():
            if key in results or key in RESERVED_KEYS:
                raise ValueError(f"{name}: results key {key!r} is already taken")
            results[key] = value
    results["spec"] = spec.model_dump(mode="json")
    results["tunelens_version"] = tunelens.__version__
    results["environment"] = environment(spec)
    results = strict_json(results)
    atomic_write_text(out_dir / RESULTS, dumps(results, indent=2) + "\n")

    runs = list(timings.get("runs") or [])
    runs.append(
        {
            "executor": runner.name,
            "cells_run": len(jobs),
            "cells_skipped": sum(len(c) for _, _, c in planned) - len(jobs),
            "run_seconds": round(ran, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        }
    )
    atomic_write_text(timings_path, dumps({"cells": cell_times, "runs": runs}, indent=2) + "\n")
    return results
