"""What every experiment provides to the run machinery, and what the machinery gives it.

An :class:`Experiment` turns its spec section into cells (after its inputs are
loaded and digested through :class:`StudyInputs`), computes one cell given a
:class:`RunContext`, and aggregates finished cells into its results section.
Cell results are plain JSON; aggregation reads only them (never a model).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tunelens.api.cell import Cell

if TYPE_CHECKING:  # types only: the engine's estimates and report pieces sit above api
    from pydantic import BaseModel

__all__ = ["Experiment", "ReportPart", "RunContext", "StudyInputs"]


@dataclass
class ReportPart:
    """One experiment's section of report.html, as its ``report_part`` hook returns it.

    ``template`` is a Jinja2 template name found by ``loader`` (a
    ``jinja2.PackageLoader`` of the experiment's package; None: tunelens's own
    templates); it reads ``section.view``. ``anchor`` and ``title`` make its
    entry in the page's contents.
    """

    anchor: str
    title: str
    template: str
    view: Any
    loader: Any = None


@dataclass
class RunContext:
    """What a cell runner may use: cached models and a way to report progress."""

    load_model: Callable[..., Any]  # (name, dtype=..., device=...) -> LoadedModel, cached
    progress: Callable[[str, int, int], None] = lambda label, done, total: None
    device: str = "cpu"
    dtype: str = "float32"
    # Where a cell that tunes keeps its adapters (``--save-adapters``): one folder per cell
    # key; None = do not keep them. Saving never changes a cell's result.
    adapters_dir: str | None = None


@dataclass
class StudyInputs:
    """Loads each task set and fingerprints each model once per study, before cells are made.

    ``strict=False`` (``tunelens plan``) gives a model or task set that is not
    on this machine the digest ``absent:<name>`` (and no tasks) instead of an
    error, so a plan can be made for inputs that will only exist on the cluster;
    a task set that is here but does not load is an error either way.
    ``allow_missing`` (``--allow-missing-tasks``) skips the tasks a split file
    names that have no file (partial copies of the benchmark).
    """

    strict: bool = True
    allow_missing: bool = False
    _tasks: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _task_digests: dict[str, str] = field(default_factory=dict)
    _models: dict[str, str] = field(default_factory=dict)

    def tasks(self, ref: str) -> tuple[Any, ...]:
        """The tasks a reference names (``world:heldout``, a path, a split file), loaded once."""
        if ref not in self._tasks:
            from tunelens.errors import TunelensInputError
            from tunelens.tasks.sets import load_task_set

            try:
                self._tasks[ref] = tuple(load_task_set(ref, allow_missing=self.allow_missing))
            except TunelensInputError:
                if self.strict or _on_this_machine(ref):
                    raise  # plan too stops at a task set that is here but broken
                self._tasks[ref] = ()
                self._task_digests[ref] = f"absent:{ref}"
        return self._tasks[ref]

    def task_digest(self, ref: str) -> str:
        """Digest of the *content* of every task ``ref`` names, as loaded."""
        if ref not in self._task_digests:
            from tunelens.tasks.digest import task_set_digest

            self._task_digests[ref] = task_set_digest(self.tasks(ref))
        return self._task_digests[ref]

    def model_digest(self, name: str) -> str:
        """Fingerprint of a model's config and weight files (content, not names or times)."""
        if name not in self._models:
            from tunelens.models.fingerprint import model_fingerprint

            try:
                self._models[name] = model_fingerprint(name)
            except Exception:
                if self.strict:
                    raise
                self._models[name] = f"absent:{name}"
        return self._models[name]


def _on_this_machine(ref: str) -> bool:
    """Whether every path a task reference names exists here (``world:`` sets always do)."""
    from pathlib import Path

    pieces = [p.strip() for p in ref.split(",") if p.strip()]
    return all(p.startswith("world:") or Path(p).expanduser().exists() for p in pieces)


class Experiment(ABC):
    """The contract between an experiment and ``tunelens.runs``; register with the decorator.

    ``name`` is its spec section, its cell folder and its progress label;
    ``code_version`` is bumped whenever a change alters this experiment's cell
    results, so old cells are recomputed (other experiments' cells stay valid).
    """

    name: ClassVar[str]
    code_version: ClassVar[str] = "1"

    def cell(
        self,
        name: str,
        params: dict[str, Any],
        seed: int,
        inputs: Mapping[str, str],
        data: Mapping[str, Any] | None = None,
    ) -> Cell:
        """A cell of this experiment (its name and code version filled in)."""
        return Cell(
            self.name, name, params, seed, dict(inputs), self.code_version, dict(data or {})
        )

    @abstractmethod
    def cells(self, section: Any, inputs: StudyInputs) -> list[Cell]:
        """Every cell of this experiment's section, in a deterministic order."""

    def followup_cells(
        self, section: Any, inputs: StudyInputs, finished: list[tuple[Cell, dict[str, Any]]]
    ) -> list[Cell]:
        """Cells that depend on finished results (e.g. decide's similarity at the best k)."""
        return []

    def sample_logs(self, cell: Cell, result: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Per-sample records of a finished cell for ``DIR/samples/<key>.jsonl`` (None: no log)."""
        return None

    @abstractmethod
    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        """Compute one cell; the result must be JSON-serialisable and deterministic."""

    @abstractmethod
    def aggregate(self, section: Any, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
        """This experiment's keys of the results file (``{name: [...]}`` and any others)."""

    # ------------------------------------------------------------ the spec section
    # ``section_model`` is the pydantic model of this experiment's spec section (its
    # fields carry default, help and bounds); None: the experiment has no spec section
    # (it runs from its own command, as decide does).
    section_model: ClassVar[type[BaseModel] | None] = None

    # ``results_model``: the pydantic model (a ``tunelens.api.results.ResultsModel``) its keys
    # of the results file read back with; the docs' results.json / decide.json schema pages
    # are generated from it. None: the keys are listed without a schema.
    results_model: ClassVar[type[BaseModel] | None] = None

    # ``command_help``: the help of ``tunelens <name>``, a command generated from the section
    # model's fields that runs a study of this section alone (None: no such command).
    # ``cli_module``: a module that registers this experiment's own commands on the apps of
    # :mod:`tunelens.options.apps` when the command line imports it (None: none).
    command_help: ClassVar[str | None] = None
    cli_module: ClassVar[str | None] = None

    def fill_section(self, section: Any, study: Any) -> Any:
        """The section with what it inherits from the study filled in (model, dtype,
        device, seeds shifted by the base seed); ``study`` is the validated spec."""
        return section

    # ------------------------------------------------------------ run and plan hooks
    # The fixed seconds each cell costs beyond its counted work (``tunelens plan``'s time
    # model, calibrated by bench/plan_calibration.py).
    cell_overhead_s: ClassVar[float] = 0.0

    def limit_section(self, section: Any, n: int) -> Any:
        """The section bounded for ``--limit n`` (at most n anchors / instances per task)."""
        return section

    def preflight(self, section: Any, inputs: StudyInputs, source: str | None) -> None:
        """Raise a TunelensInputError (naming ``source`` and the key) for task-dependent
        bounds the spec alone cannot check, e.g. k against the tasks' pools."""
        return None

    def plan_prompts(self, section: Any, inputs: StudyInputs) -> list[str]:
        """The prompts whose length ``tunelens plan`` checks against each model's context."""
        return []

    def estimate_work(self, cell: Cell, estimate: Any) -> Any:
        """This cell's work for ``tunelens plan`` (a ``tunelens.runs.costs.Work``);
        ``estimate`` is the engine's ``tunelens.runs.plan.PlanContext`` (the token counter,
        the model's size and kind, the device). None: nothing but the cell itself."""
        return None

    def training_shape(self, cell: Cell) -> tuple[int, int] | None:
        """(batch size, tokens per sequence) of the cell's training batches; None: no
        training."""
        return None

    def plan_conditions(self, cells: list[Cell]) -> int:
        """How many conditions share one run's fixed costs (model loads, controls)."""
        return 0

    # ------------------------------------------------------------ results, export, report
    results_file: ClassVar[str] = "results.json"
    """The file of the run directory this experiment's results go to. ``results.json`` is
    shared by a study's experiments (each writes its ``results_keys()``); another name
    (decide's ``decide.json``) holds only this experiment's results: ``tunelens export``
    gives ``tidy_rows`` that file's data, and ``tunelens report`` makes it a page of its
    own (``decide.html``): the ``report_part``'s template rendered with the view's keys as
    the page's variables."""

    def results_keys(self) -> tuple[str, ...]:
        """The top-level keys of results.json this experiment writes."""
        return (self.name,)

    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Long-format rows of this experiment's results for ``tunelens export``."""
        return []

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        """This experiment's section of report.html (figures written under ``plots_dir``);
        None: its keys are shown as generic tables."""
        return None
