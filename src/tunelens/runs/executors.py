"""Executors: where cells run. In this process, in order (local), or as Ray tasks (ray).

Cells are independent, so spreading them needs no coordination beyond the
store: every executor writes each finished cell to the store *as it
completes*, from the driver, so a killed run loses only the cells in flight
and a Ray cluster needs no shared file system. Models are loaded through a
cache (one per process: the driver for ``local``, each Ray worker for ``ray``),
so cells on the same model load it once. A cell must not leave a cached model
changed (tuning works on a copy or an adapter that it removes).
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunelens.api import Cell, Experiment, RunContext
from tunelens.errors import DivergedError, TunelensInputError, in_cell
from tunelens.runs.store import CellStore
from tunelens.runs.threads import apply_thread_policy

StepCallback = Callable[[str, int, int], None]  # (label, done, total) inside one cell


@dataclass(frozen=True)
class Job:
    """One cell to compute and the experiment that knows how."""

    experiment: Experiment
    cell: Cell
    adapters_dir: str | None = None  # --save-adapters: DIR/adapters
    # load_model's placement keywords (--device-map, --max-memory): like the hardware, not
    # part of the cell's key.
    placement: tuple[tuple[str, str], ...] = ()


CellCallback = Callable[[Job, float], None]  # (finished job, seconds it took)


class Executor(Protocol):
    """Runs jobs and writes each result to the store as soon as it is finished."""

    name: str

    def run(
        self,
        jobs: Sequence[Job],
        store: CellStore,
        *,
        on_done: CellCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        """Compute every job; on return all of them are in the store (or an error was raised)."""


class ModelCache:
    """``load_model`` with memory: one load per (model, dtype, device) in this process.

    At most ``max_models`` stay loaded (least recently used goes first): cells
    come grouped by model, and a sweep over several 7B models must not keep
    them all on one GPU.
    """

    def __init__(self, loader: Callable[..., Any] | None = None, max_models: int = 2):
        self._loader = loader
        self.max_models = max(1, max_models)
        self._models: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.loads = 0

    def __call__(
        self, name: str, dtype: str = "float32", device: str = "cpu", **options: Any
    ) -> Any:
        key = (name, dtype, device, tuple(sorted(options.items())))
        if key in self._models:
            self._models.move_to_end(key)
            apply_thread_policy(self._models[key])
            return self._models[key]
        while len(self._models) >= self.max_models:
            self._models.popitem(last=False)
            gc.collect()
        loader = self._loader
        if loader is None:
            from tunelens.models.loading import load_model

            loader = load_model
        self._models[key] = loader(name, dtype=dtype, device=device, **options)
        self.loads += 1
        apply_thread_policy(self._models[key])
        return self._models[key]

    def __len__(self) -> int:
        return len(self._models)


def _context(
    cell: Cell,
    cache: ModelCache,
    on_step: StepCallback | None,
    adapters_dir: str | None = None,
    placement: tuple[tuple[str, str], ...] = (),
) -> RunContext:
    params = cell.params if isinstance(cell.params, dict) else {}
    return RunContext(
        load_model=functools.partial(cache, **dict(placement)) if placement else cache,
        progress=on_step or (lambda label, done, total: None),
        device=str(params.get("device") or "cpu"),
        dtype=str(params.get("dtype") or "float32"),
        adapters_dir=None if adapters_dir is None else str(Path(adapters_dir) / cell.key),
    )


class LocalExecutor:
    """Cells one after the other in this process, sharing one model cache."""

    name = "local"

    def __init__(self, load_model: Callable[..., Any] | None = None):
        self.cache = ModelCache(load_model)

    def run(
        self,
        jobs: Sequence[Job],
        store: CellStore,
        *,
        on_done: CellCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        for job in jobs:
            start = time.perf_counter()
            try:
                result = job.experiment.run_cell(
                    job.cell,
                    _context(job.cell, self.cache, on_step, job.adapters_dir, job.placement),
                )
            except DivergedError as error:
                raise in_cell(error, job.cell.experiment, job.cell.name) from None
            store.write(job.cell, result)
            if on_done is not None:
                on_done(job, time.perf_counter() - start)


# One cache per Ray worker process: a worker that runs several cells of one model loads it once.
_WORKER_CACHE: ModelCache | None = None


def _run_on_worker(
    experiment: Experiment,
    cell: Cell,
    adapters_dir: str | None = None,
    placement: tuple[tuple[str, str], ...] = (),
) -> tuple[dict[str, Any], float]:
    """The body of a Ray task: run one cell with this worker's model cache.

    ``adapters_dir`` (``--save-adapters``) is a path on the worker's file system:
    on a cluster, a shared one.
    """
    global _WORKER_CACHE
    if _WORKER_CACHE is None:
        _WORKER_CACHE = ModelCache()
    start = time.perf_counter()
    context = _context(cell, _WORKER_CACHE, None, adapters_dir, placement)
    result = experiment.run_cell(cell, context)
    return result, time.perf_counter() - start


def import_ray() -> Any:
    """``ray``, or a TunelensInputError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise TunelensInputError(
            "the ray executor needs Ray, which is not installed; "
            "install it with `pip install 'tunelens[ray]'` or use --executor local",
            where="--executor ray",
        ) from None
    return ray


def _cell_gpus(cell: Cell) -> float:
    """A cell whose device is CUDA asks Ray for one GPU; others for none."""
    device = str(cell.params.get("device") or "cpu") if isinstance(cell.params, dict) else "cpu"
    return 1.0 if device.startswith("cuda") else 0.0


class RayExecutor:
    """Each cell one Ray task, on a cluster (``address``) or on a local Ray instance.

    ``address=None`` starts a private local instance with ``num_cpus`` CPUs
    (default: at most 2) and no dashboard; it is shut down after the run.
    ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster,
    whose workers must have tunelens (and the models' directories) installed.
    If Ray is already initialised in this process, that instance is used.
    Each task asks for one CPU, and one GPU when its cell's device is CUDA
    (``gpus_per_cell`` overrides).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        gpus_per_cell: float | None = None,
    ):
        self.address = address
        self.num_cpus = num_cpus
        self.gpus_per_cell = gpus_per_cell

    def _init(self, ray: Any) -> bool:
        """Connect or start Ray; True when this executor started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        common = {"log_to_driver": False, "configure_logging": False}
        if self.address:
            try:
                ray.init(address=self.address, **common)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise TunelensInputError(
                    f"cannot connect to the Ray cluster: {' '.join(str(error).split())[:300]}"
                    f"{_auth_hint()}",
                    where=f"--address {self.address}",
                ) from None
            return True
        num_cpus = self.num_cpus or max(1, min(2, os.cpu_count() or 1))
        # Local workers import the same code as this driver (an editable checkout, a test's
        # helper module) because they get the driver's import path.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
            **common,
        )
        return True

    def run(
        self,
        jobs: Sequence[Job],
        store: CellStore,
        *,
        on_done: CellCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        if not jobs:
            return
        ray = import_ray()
        started = self._init(ray)
        try:
            remote = ray.remote(_run_on_worker)
            pending: dict[Any, Job] = {}
            for job in jobs:
                gpus = (
                    self.gpus_per_cell if self.gpus_per_cell is not None else _cell_gpus(job.cell)
                )
                # A cell is deterministic and idempotent, so a task whose worker died is
                # simply run again (cell errors are not retried: they are the cell's answer).
                ref = remote.options(num_cpus=1, num_gpus=gpus, max_retries=3).remote(
                    job.experiment, job.cell, job.adapters_dir, job.placement
                )
                pending[ref] = job
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        job = pending.pop(ref)
                        try:
                            result, seconds = _get(ray, ref)
                        except DivergedError as error:
                            raise in_cell(error, job.cell.experiment, job.cell.name) from None
                        store.write(job.cell, result)
                        if on_done is not None:
                            on_done(job, seconds)
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if started:
                ray.shutdown()


def _auth_hint() -> str:
    """Ray (2.59+) authenticates with a token; a driver without it is refused with no reason."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return " (a token is set: is it the cluster's? `ray get-auth-token` on the head node)"
    return (
        " (if the cluster uses token authentication, set RAY_AUTH_MODE=token and "
        "RAY_AUTH_TOKEN to its token: `ray get-auth-token` on the head node)"
    )


def _get(ray: Any, ref: Any) -> tuple[dict[str, Any], float]:
    """``ray.get`` that re-raises a cell's own error (bad input stays exit status 2)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


EXECUTORS = ("local", "ray")


def make_executor(name: str, *, address: str | None = None) -> Executor:
    """An executor by its CLI name."""
    from tunelens.runs.ranks import RankExecutor, rank_and_world

    rank, world = rank_and_world()
    if name == "local":
        if address:
            raise TunelensInputError("--address needs --executor ray", where="--address")
        if world > 1:  # under accelerate launch / torchrun: the ranks divide the cells
            return RankExecutor(LocalExecutor(), rank, world)
        return LocalExecutor()
    if name == "ray":
        if world > 1:
            raise TunelensInputError(
                "--executor ray under a multi-process launch: each rank would send every "
                "cell to Ray; launch one process, or use the local executor to divide cells "
                "among the ranks",
                where="--executor ray",
            )
        import_ray()
        return RayExecutor(address)
    raise TunelensInputError(
        f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}", where="--executor"
    )
