"""One command for a whole study: spec -> cells -> store -> aggregate -> results.json.

Run directory::

    DIR/spec.yaml       the spec as run (every default filled in)
    DIR/cells/<experiment>/<key>.json   one finished cell each (see runs.store)
    DIR/results.json    aggregated results (deterministic: no times, sorted keys)
    DIR/timings.json    seconds per cell and per run (varies between runs)
    DIR/manifest.json   command line, start time, versions, code revision (see runs.manifest)
    DIR/report.html, DIR/plots/   written by tunelens.report

Resume: cells whose file is in the store are skipped, so re-running the same
command after a kill computes only what is missing. Aggregation always reads
the results back from the store, in the order of ``Experiment.cells()``, so a
resumed run and an uninterrupted one write the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import tunelens
from tunelens import interrupt
from tunelens.api import Cell, Experiment, StudyInputs, get_experiments
from tunelens.errors import TunelensInputError
from tunelens.progress import ProgressDisplay
from tunelens.runs.executors import Executor, Job, make_executor
from tunelens.runs.limit import limit_cells, limit_section
from tunelens.runs.lock import RunLock
from tunelens.runs.manifest import record_batch_sizes, write_manifest
from tunelens.runs.preflight import preflight
from tunelens.runs.ranks import is_main_process
from tunelens.runs.samples import write_sample_logs
from tunelens.runs.store import CellStore, atomic_write_text, dumps, strict_json
from tunelens.spec import Spec

if TYPE_CHECKING:
    from tunelens.experiments.decide.config import DecideConfig

RESERVED_KEYS = ("spec", "tunelens_version", "environment", "limit")
RESULTS = "results.json"
TIMINGS = "timings.json"
ADAPTERS = "adapters"
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


def environment(spec: Spec | DecideConfig) -> dict[str, Any]:
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


def spec_sections(
    spec: Spec, experiments: Mapping[str, Experiment] | None = None
) -> list[tuple[Experiment, Any]]:
    """(experiment, section) for each registered experiment whose spec section is present."""
    if experiments is None:
        experiments = get_experiments()
    return [
        (experiment, getattr(spec, name))
        for name, experiment in experiments.items()
        if getattr(spec, name, None) is not None
    ]


def plan_cells(
    spec: Spec,
    experiments: Mapping[str, Experiment] | None = None,
    inputs: StudyInputs | None = None,
) -> list[tuple[str, Any, list[Cell]]]:
    """(section name, section, cells) for each experiment whose spec section is present.

    Tasks are loaded and models fingerprinted here, before any cell exists, so
    every cell key covers the content it depends on.
    """
    inputs = inputs or StudyInputs(allow_missing=spec.allow_missing_tasks)
    planned = []
    for experiment, section in spec_sections(spec, experiments):
        section = limit_section(experiment, section, spec.limit)
        cells = limit_cells(experiment.cells(section, inputs), spec.limit)
        planned.append((experiment.name, section, cells))
    check_unique_keys(cell for _, _, cells in planned for cell in cells)
    return planned


def check_unique_keys(cells: Iterable[Cell]) -> None:
    """Two cells with one key would overwrite each other's results."""
    seen: dict[str, str] = {}
    for cell in cells:
        if cell.key in seen:
            raise ValueError(
                f"{cell.experiment}: cells {seen[cell.key]!r} and {cell.name!r} share the key "
                f"{cell.key}"
            )
        seen[cell.key] = cell.name


class _Bars:
    """The study's progress: one bar per experiment (cells) and one for steps inside a cell."""

    def __init__(self, display: ProgressDisplay):
        self.display = display
        self._bars: dict[str, int] = {}
        self._step: int | None = None

    def experiment(self, name: str, total: int, done: int) -> None:
        if name in self._bars:
            self.display.update(self._bars[name], total=total)
        else:
            # Cells finished earlier start the bar filled; the ETA uses only this run's pace.
            self._bars[name] = self.display.add(f"{name} cells", total=total, completed=done)

    def cell_done(self, job: Job, seconds: float) -> None:
        self.display.advance(self._bars[job.cell.experiment])
        if self._step is not None:
            self.display.update(self._step, visible=False)

    def step(self, label: str, done: int, total: int) -> None:
        if self._step is None:
            self._step = self.display.add(f"  {label}", total=total, completed=done)
        else:
            self.display.update(
                self._step, total=total, completed=done, description=f"  {label}", visible=True
            )


def _read_timings(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class SectionRun:
    """One experiment's section and its finished cells, in the order of its cells."""

    experiment: Experiment
    section: Any
    results: list[tuple[Cell, dict[str, Any]]]

    def aggregate(self) -> dict[str, Any]:
        return self.experiment.aggregate(self.section, self.results)


def execute(
    out_dir: Path,
    sections: Sequence[tuple[Experiment, Any]],
    *,
    inputs: StudyInputs | None = None,
    executor: str | Executor = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    results_file: str | None = None,
    source: str | None = None,
    wait: bool = False,
    files: Mapping[str, str] | None = None,
    finish: Callable[[list[SectionRun]], None] | None = None,
    limit: int | None = None,
    save_adapters: bool = False,
    placement: Mapping[str, str] | None = None,
) -> list[SectionRun]:
    """Run every unfinished cell of ``sections`` into ``out_dir``'s store; return all of them.

    ``workers``: cells the local executor runs at once (``--workers``; None: automatic);
    ``placement`` (``device_map``, ``max_memory``) goes to every model load;
    ``save_adapters`` keeps tuned adapters under ``out_dir/adapters/<cell key>/``
    (cells computed by this run); ``limit`` (``--limit N``) bounds each section
    first (:mod:`tunelens.runs.limit`) and goes into every cell's key.

    This is the one cell loop of tunelens (``run``, the study commands, ``decide`` and
    ``world eval`` all come here): cells are planned after the inputs load, finished ones
    are skipped, the rest run on the executor, then each experiment may add follow-up cells
    that depend on finished results (rounds repeat until none is new). Seconds per cell and
    per invocation go to ``out_dir/timings.json``.

    Order of checks, so that bad input fails before anything is written or a model loads:
    tasks load and models are fingerprinted (paths checked), the task-dependent bounds of
    :mod:`tunelens.runs.preflight` (errors name ``source``, the spec file, and the dotted
    key), then ``out_dir`` is made, probed for writing and locked (``DIR/.lock``; ``wait``
    waits for another run to end instead of refusing), then ``files`` (name -> text, e.g.
    the spec as run) are written; ``finish`` (writing results.json, say) runs on the
    finished sections while the lock is still held. An interrupt keeps every finished cell
    and reports their number (:mod:`tunelens.interrupt`).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    inputs = inputs or StudyInputs()
    runner = _runner(executor, address, workers)
    store = CellStore(out_dir)
    # Until the cells are planned, an interrupt reports what the store already holds.
    interrupt.set_status(lambda: interrupt.cells_message(len(store.finished_keys())))
    sections = [(exp, limit_section(exp, section, limit)) for exp, section in sections]
    planned = [
        (exp, section, limit_cells(exp.cells(section, inputs), limit)) for exp, section in sections
    ]
    check_unique_keys(cell for _, _, cells in planned for cell in cells)
    preflight(sections, inputs, source)
    prepare_output_dir(out_dir)
    main = is_main_process()  # under accelerate launch / torchrun only rank 0 writes (runs.ranks)
    with RunLock(out_dir, wait=wait) if main else contextlib.nullcontext():
        for name, text in (files or {}).items() if main else ():
            atomic_write_text(out_dir / name, text)
        runs = _execute_locked(
            out_dir,
            planned,
            inputs,
            runner,
            store,
            sections,
            results_file,
            progress and main,
            started,
            limit=limit,
            main=main,
            adapters_dir=str(out_dir / ADAPTERS) if save_adapters else None,
            placement=tuple(sorted((placement or {}).items())),
        )
        if main:
            write_sample_logs(out_dir, runs)
            if finish is not None:
                finish(runs)
        return runs


def _runner(executor: str | Executor, address: str | None, workers: int | None) -> Executor:
    """``executor`` itself, or the executor its CLI name makes (``--address``, ``--workers``)."""
    if isinstance(executor, str):
        return make_executor(executor, address=address, workers=workers)
    return executor


def prepare_output_dir(out_dir: Path) -> None:
    """Make ``out_dir`` and prove it writable (a read-only folder fails here, not after a cell)."""
    import tempfile

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe.", suffix=".tmp"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise TunelensInputError(
            f"output folder is not writable: {reason}", source=str(out_dir)
        ) from None


class _CellLoop:
    """The cells of one run: what is finished, the times per cell, and the rounds of cells
    (follow-up cells that depend on finished results make another round)."""

    def __init__(
        self,
        out_dir: Path,
        planned: list[tuple[Experiment, Any, list[Cell]]],
        store: CellStore,
        runner: Executor,
        started: float,
    ) -> None:
        self.planned = planned
        self.store = store
        self.runner = runner
        self.started = started
        self.finished = store.finished_keys()
        planned_keys = {cell.key for _, _, cells in planned for cell in cells}
        self.kept = len(self.finished & planned_keys)
        self.timings_path = out_dir / TIMINGS
        self.timings = _read_timings(self.timings_path)
        self.cell_times: dict[str, Any] = dict(self.timings.get("cells") or {})
        self.cells_run = 0
        self.bars: _Bars | None = None

    def done(self, job: Job, seconds: float) -> None:
        """A cell finished (its result is in the store): record its time, move the bars."""
        self.cell_times[job.cell.key] = {
            "experiment": job.cell.experiment,
            "name": job.cell.name,
            "seconds": round(seconds, 3),
        }
        self.kept += 1
        if self.bars is not None:
            self.bars.cell_done(job, seconds)

    def finished_pairs(
        self, exp: Experiment, cells: list[Cell]
    ) -> list[tuple[Cell, dict[str, Any]]]:
        """(cell, result) of ``cells``, read back from the store in their order."""
        pairs = []
        for cell in cells:
            result = self.store.read(cell)
            if result is None:
                raise RuntimeError(
                    f"{exp.name}: cell {cell.name} ({cell.key}) missing after the run"
                )
            pairs.append((cell, result))
        return pairs

    def write_timings(self) -> None:
        """timings.json: every cell's seconds, and this run's line beside earlier runs'."""
        runs = list(self.timings.get("runs") or [])
        total = sum(len(cells) for _, _, cells in self.planned)
        runs.append(
            {
                "executor": self.runner.name,
                "cells_run": self.cells_run,
                "cells_skipped": total - self.cells_run,
                "run_seconds": round(time.perf_counter() - self.started, 3),
            }
        )
        text = dumps({"cells": self.cell_times, "runs": runs}, indent=2) + "\n"
        atomic_write_text(self.timings_path, text)

    def run_round(
        self,
        pending: list[tuple[Experiment, Any, list[Cell]]],
        adapters_dir: str | None,
        placement: tuple[tuple[str, str], ...],
    ) -> None:
        """Run the unfinished cells of ``pending``; each is in the store when it returns."""
        assert self.bars is not None
        for exp, _, cells in self.planned:
            self.bars.experiment(exp.name, len(cells), sum(c.key in self.finished for c in cells))
        jobs = [
            Job(exp, cell, adapters_dir, placement)
            for exp, _, cells in pending
            for cell in cells
            if cell.key not in self.finished
        ]
        self.runner.run(jobs, self.store, on_done=self.done, on_step=self.bars.step)
        self.cells_run += len(jobs)
        self.finished |= {job.cell.key for job in jobs}

    def followups(
        self, inputs: StudyInputs, limit: int | None
    ) -> list[tuple[Experiment, Any, list[Cell]]]:
        """Cells that finished results call for (added to the plan), as the next round."""
        more = []
        for index, (exp, section, cells) in enumerate(self.planned):
            known = {c.key for c in cells}
            found = exp.followup_cells(section, inputs, self.finished_pairs(exp, cells))
            extra = [c for c in limit_cells(found, limit) if c.key not in known]
            if extra:
                self.planned[index] = (exp, section, cells + extra)
                more.append((exp, section, extra))
        check_unique_keys(cell for _, _, cells in self.planned for cell in cells)
        return more


def _execute_locked(
    out_dir: Path,
    planned: list[tuple[Experiment, Any, list[Cell]]],
    inputs: StudyInputs,
    runner: Executor,
    store: CellStore,
    sections: Sequence[tuple[Experiment, Any]],
    results_file: str | None,
    progress: bool,
    started: float,
    *,
    limit: int | None = None,
    main: bool = True,
    adapters_dir: str | None = None,
    placement: tuple[tuple[str, str], ...] = (),
) -> list[SectionRun]:
    if main:
        write_manifest(
            out_dir,
            [exp for exp, _ in sections],
            results_file=results_file,
            sections=sections,
        )
    loop = _CellLoop(out_dir, planned, store, runner, started)
    interrupt.set_status(lambda: interrupt.cells_message(loop.kept))
    with ProgressDisplay(progress) as display:
        loop.bars = _Bars(display)
        pending = planned
        try:
            while pending:
                loop.run_round(pending, adapters_dir, placement)
                pending = loop.followups(inputs, limit)
        finally:
            try:
                if main:
                    loop.write_timings()
                    record_batch_sizes(out_dir)
            except OSError:
                pass  # a full disk: the error that brought us here is the one to report
    return [
        SectionRun(exp, section, loop.finished_pairs(exp, cells))
        for exp, section, cells in loop.planned
    ]


def run_study(
    spec: Spec,
    out_dir: Path,
    *,
    executor: str | Executor = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    experiments: Mapping[str, Experiment] | None = None,
    source: str | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Run every unfinished cell of ``spec`` and write ``out_dir/results.json``; return it.

    ``experiments`` maps spec section names to experiments (default: the
    registry); ``executor`` is ``"local"``, ``"ray"`` or an executor object;
    ``workers``: cells the local executor runs at once (None: automatic).
    ``source`` names the spec in errors; ``wait`` waits for another run on
    ``out_dir`` to end (default: refuse). Nothing is created before the tasks
    and model paths are checked.
    """
    out_dir = Path(out_dir)
    results: dict[str, Any] = {}

    def write_results(runs: list[SectionRun]) -> None:
        for run in runs:
            for key, value in run.aggregate().items():
                if key in results or key in RESERVED_KEYS:
                    raise ValueError(f"{run.experiment.name}: results key {key!r} is already taken")
                results[key] = value
        results["spec"] = spec.model_dump(mode="json")
        results["tunelens_version"] = tunelens.__version__
        results["environment"] = environment(spec)
        if spec.limit is not None:
            results["limit"] = spec.limit  # a limited run says so (tunelens.runs.limit)
        atomic_write_text(out_dir / RESULTS, dumps(strict_json(results), indent=2) + "\n")

    execute(
        out_dir,
        spec_sections(spec, experiments),
        executor=executor,
        address=address,
        workers=workers,
        progress=progress,
        results_file=RESULTS,
        source=source,
        wait=wait,
        files={SPEC: spec_yaml(spec)},
        finish=write_results,
        limit=spec.limit,
        inputs=StudyInputs(allow_missing=spec.allow_missing_tasks),
        save_adapters=spec.save_adapters,
        placement=spec.placement(),
    )
    return strict_json(results)
