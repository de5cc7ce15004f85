"""Executors: where cells run. On this machine (local: in this process, or in worker
processes when the cores allow), or as Ray tasks (ray).

Cells are independent, so spreading them needs no coordination beyond the
store: every executor writes each finished cell to the store *as it
completes*, from the driver, so a killed run loses only the cells in flight
and a Ray cluster needs no shared file system. Models are loaded through a
cache (one per process: the driver for ``local`` in one process, each worker
process for ``local`` with workers and for ``ray``), so cells on the same model
load it once per process. A cell must not leave a cached model changed (tuning
works on a copy or an adapter that it removes).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.machinery
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field

from tunelens.api import Cell, Experiment, RunContext
from tunelens.bounds import MAX_THREADS, check_option
from tunelens.errors import DivergedError, TunelensInputError, in_cell
from tunelens.log import get_logger, logging_verbosity
from tunelens.runs.store import CellStore
from tunelens.runs.threads import apply_thread_policy, threads_for_model, usable_cores

_log = get_logger(__name__)

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
    """Cells on this machine: in this process, or several at once in worker processes.

    ``workers`` is how many cells run at once; ``None`` decides: the usable
    cores (the CPU affinity) divided by the threads one cell uses under the
    thread policy (:mod:`tunelens.runs.threads`: one for a small model, so two
    cores run two cells; every core for a large model, so one). Each cell
    runs on the same number of threads whatever the worker count, so the store
    and results.json are the same bytes with 1 worker or N, in any completion
    order (aggregation reads the store back in the order of the cells).

    With one worker (or one job) the cells run one after the other in this
    process, sharing this executor's model cache, and ``on_step`` reports the
    steps inside each cell. With more, each cell runs in a worker process that
    keeps its own model cache (:func:`_run_on_worker`, as a Ray worker does),
    the driver writes each result to the store as it arrives and calls
    ``on_done``; progress is then per cell only (``on_step`` is not called).

    Workers are started with "spawn" (a fresh interpreter), not "fork": a
    forked child of a process where torch has run copies its OpenMP and
    intra-op thread pools' locks without the threads that hold them (a
    deadlock at the child's first parallel op), and CUDA cannot be used again
    in a forked child. Spawn costs an interpreter start and a torch import per
    worker (about 2 s on an idle machine, more on a busy one), paid once per
    :meth:`run`. Workers take the driver's logging set-up (``setup_logging``).

    Cells on an accelerator (a ``cuda``/``mps`` device, or a ``device_map``
    placement) always run in this process, one at a time: each worker would
    make its own CUDA context and load its own copy of the model on the same
    GPU (the memory multiplied), the processes' kernels take turns on the
    device rather than overlap, and a device map already spreads one model
    over every GPU. A custom ``load_model`` also runs in this process, as do
    experiments that cannot be pickled (a class defined in a function) and, unless
    ``workers`` is given, experiments defined in the driver's ``__main__`` script
    (a worker would have to run that script again; see :func:`_main_not_rerun`).

    A cell's own error is raised as in one process (a TunelensInputError stays
    exit status 2; a DivergedError names its cell); on an error or an interrupt
    the cells not yet started are cancelled and the workers ended at once
    (finished cells stay in the store). Workers ignore Ctrl-C (the driver
    handles it and ends them) and exit if the driver dies.
    """

    name = "local"

    def __init__(self, load_model: Callable[..., Any] | None = None, *, workers: int | None = None):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.cache = ModelCache(load_model)
        self.workers = workers
        self._own_loader = load_model is not None

    def workers_for(self, jobs: Sequence[Job]) -> int:
        """How many cells of ``jobs`` run at once (1: in this process)."""
        if len(jobs) < 2 or self._own_loader or any(_on_accelerator(job) for job in jobs):
            return 1
        if self.workers is None and _from_main(jobs):
            return 1  # a worker would run the driver's script again to find the experiment
        wanted = self.workers if self.workers is not None else automatic_workers(jobs)
        wanted = max(1, min(wanted, len(jobs)))
        if wanted > 1 and not _sendable(jobs):
            if self.workers is not None:
                _log.warning(
                    "the experiments cannot be sent to worker processes (a class "
                    "defined inside a function?): the cells run in this process"
                )
            return 1
        return wanted

    def run(
        self,
        jobs: Sequence[Job],
        store: CellStore,
        *,
        on_done: CellCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        workers = self.workers_for(jobs)
        if workers > 1:
            _run_in_pool(jobs, store, workers, on_done)
            return
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


def _on_accelerator(job: Job) -> bool:
    """Whether ``job``'s model goes to an accelerator (a non-CPU device, or a device map)."""
    params = job.cell.params if isinstance(job.cell.params, dict) else {}
    return str(params.get("device") or "cpu") != "cpu" or bool(job.placement)


def _from_main(jobs: Sequence[Job]) -> bool:
    """Whether an experiment's class is defined in the driver's ``__main__`` (a script)."""
    return any(type(job.experiment).__module__ == "__main__" for job in jobs)


def _sendable(jobs: Sequence[Job]) -> bool:
    """Whether every experiment of ``jobs`` pickles (a class defined in a function does not)."""
    experiments = {id(job.experiment): job.experiment for job in jobs}
    for experiment in experiments.values():
        try:
            pickle.dumps(experiment)
        except Exception:  # noqa: BLE001 - pickling fails in many ways; all mean: not here
            return False
    return True


WORKERS_VARIABLE = "TUNELENS_WORKERS"
"""Environment variable that fixes the automatic worker count (as ``OMP_NUM_THREADS`` fixes
threads); ``--workers`` wins over it. The test suite sets it to 1: under pytest-xdist the
cores are already taken by test processes."""


def automatic_workers(jobs: Sequence[Job]) -> int:
    """``TUNELENS_WORKERS`` where set, else usable cores // the most threads one of ``jobs``'
    cells uses (the thread policy); >= 1."""
    value = os.environ.get(WORKERS_VARIABLE, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    models = {
        str(job.cell.params["model"])
        if isinstance(job.cell.params, dict) and job.cell.params.get("model") is not None
        else None
        for job in jobs
    }
    threads = max(threads_for_model(model) for model in models) if models else 1
    return max(1, usable_cores() // max(1, threads))


def _run_in_pool(
    jobs: Sequence[Job], store: CellStore, workers: int, on_done: CellCallback | None
) -> None:
    """``jobs`` on ``workers`` spawned processes; each result is written here as it arrives."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(logging_verbosity(),),
    )
    try:
        with _main_not_rerun(keep=_from_main(jobs)):  # spawn starts the workers in submit()
            pending: dict[Future[Any], int] = {
                pool.submit(
                    _run_in_worker, job.experiment, job.cell, job.adapters_dir, job.placement
                ): i
                for i, job in enumerate(jobs)
            }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            error: BaseException | None = None
            for future in sorted(done, key=pending.__getitem__):  # job order: one error wins
                job = jobs[pending.pop(future)]
                try:
                    result, seconds, batch_sizes = future.result()
                except Exception as failure:  # noqa: BLE001 - the cell's own error, raised below
                    error = error or _driver_error(failure, job)
                    continue
                store.write(job.cell, result)
                _merge_batch_sizes(batch_sizes)
                if on_done is not None:
                    on_done(job, seconds)
            if error is not None:
                raise error
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)


def _driver_error(error: Exception, job: Job) -> Exception:
    """A worker's error as one process raises it (a DivergedError names its cell)."""
    if isinstance(error, BrokenProcessPool):
        return RuntimeError(
            "a worker process ended abruptly (killed, or out of memory?) with cells "
            "unfinished; finished cells are kept: re-run to resume (--workers 1 runs "
            "the cells in this process)"
        )
    if isinstance(error, DivergedError):
        return in_cell(error, job.cell.experiment, job.cell.name)
    return error


@contextlib.contextmanager
def _main_not_rerun(keep: bool) -> Iterator[None]:
    """Workers started here do not run the driver's ``__main__`` script again, unless ``keep``.

    Spawn re-runs a script's top level in every worker, so that objects defined
    there can be found; a script without an ``if __name__ == "__main__":``
    guard would start its study again in each. The cells need only importable
    modules, so the script is skipped (multiprocessing skips a main module named
    ``__main__``), except when an experiment is defined in it (``keep``): then
    the script must have the guard, as Python's multiprocessing requires.
    """
    main = sys.modules.get("__main__")
    if keep or main is None:
        yield
        return
    saved = getattr(main, "__spec__", None)
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = saved


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the cells not started and end the workers now (running cells are not awaited)."""

    # No public way to end running workers before Python 3.14 (terminate_workers).
    # The pool starts workers on demand, so one may appear while it shuts down: read
    # its workers before and after, and end them all.
    def workers() -> dict[int, Any]:
        return dict(getattr(pool, "_processes", None) or {})

    manager = getattr(pool, "_executor_manager_thread", None)
    processes = workers()
    pool.shutdown(wait=False, cancel_futures=True)
    processes.update(workers())
    for process in processes.values():
        if process.is_alive():
            process.terminate()
    for process in processes.values():
        process.join(timeout=10)
    # The pool's own thread reaps the ended workers too; until it has recorded their
    # exit codes, a worker it reaped first still reads as alive here. Wait for it.
    if manager is not None:
        manager.join(timeout=10)


def _merge_batch_sizes(used: dict[str, dict[str, Any]]) -> None:
    """A worker's batch sizes into this process's record (the run's manifest.json reads it)."""
    if not used:
        return
    from tunelens.models.memory import record

    for site, entry in used.items():
        for size in entry["used"]:
            record(site, int(entry["requested"]), int(size))


def _start_worker(verbose: bool | None) -> None:
    """A local worker process: the driver's logging and warning filters (``setup_logging``);
    Ctrl-C is the driver's to handle; the driver's death ends it."""
    if verbose is not None:
        from tunelens.log import setup_logging

        setup_logging(verbose)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with_parent, args=(parent.sentinel,), daemon=True, name="parent-watch"
        ).start()


def _exit_with_parent(sentinel: int) -> None:
    """Wait until the driver is gone (killed: it cannot end its workers), then exit."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _run_in_worker(
    experiment: Experiment,
    cell: Cell,
    adapters_dir: str | None,
    placement: tuple[tuple[str, str], ...],
) -> tuple[dict[str, Any], float, dict[str, dict[str, Any]]]:
    """A local worker's task: :func:`_run_on_worker`, plus the batch sizes the cell ran."""
    _batch_sizes_so_far()  # an earlier cell's are already sent
    try:
        result, seconds = _run_on_worker(experiment, cell, adapters_dir, placement)
    except Exception as error:
        portable = _portable(error)
        if portable is error:
            raise
        raise portable from error
    return result, seconds, _batch_sizes_so_far()


def _batch_sizes_so_far() -> dict[str, dict[str, Any]]:
    """This process's recorded batch sizes, then forgotten (no torch import where none ran)."""
    memory = sys.modules.get("tunelens.models.memory")
    return memory.used_batch_sizes(reset=True) if memory is not None else {}


def _portable(error: Exception) -> Exception:
    """``error``, or its equal that survives the trip back to the driver (pickling).

    An exception whose ``__init__`` takes other arguments than its message
    (``TuningDivergedError(step, value)``) cannot be rebuilt from its pickle,
    and the driver would see a broken pool instead of the cell's error.
    """
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any failure means: send a plainer one
        pass
    else:
        return error
    if isinstance(error, TunelensInputError):
        kind = DivergedError if isinstance(error, DivergedError) else TunelensInputError
        return kind(error.message, source=error.source, where=error.where)
    return RuntimeError(f"{type(error).__name__}: {error}")


# One cache per worker process (Ray's, or the local executor's): a worker that runs several
# cells of one model loads it once.
_WORKER_CACHE: ModelCache | None = None


def _run_on_worker(
    experiment: Experiment,
    cell: Cell,
    adapters_dir: str | None = None,
    placement: tuple[tuple[str, str], ...] = (),
) -> tuple[dict[str, Any], float]:
    """The body of a Ray task and of a local worker's: one cell with this process's model cache.

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
        local = {
            "address": "local",
            "num_cpus": num_cpus,
            "include_dashboard": False,
            "object_store_memory": 200 * 1024 * 1024,
            "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
            **common,
        }
        for attempt in (1, 2):
            try:
                ray.init(**local)
                return True
            except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception here
                # Ray gives a local node a fixed 30 s to register; a loaded machine can
                # miss it once. Start afresh once, then say what happened.
                if "timed out during startup" not in str(error):
                    raise
                ray.shutdown()
                if attempt == 2:
                    raise RuntimeError(
                        "Ray's local node did not start within Ray's 30 s, twice (is the "
                        "machine overloaded?); --workers N runs the cells without Ray"
                    ) from error
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


class _WorkersOption(BaseModel):
    """The bounds of ``--workers``, checked by :func:`tunelens.bounds.check_option`."""

    workers: Annotated[int, Field(ge=1, le=MAX_THREADS)]


def make_executor(name: str, *, address: str | None = None, workers: int | None = None) -> Executor:
    """An executor by its CLI name; ``workers`` (``--workers``): cells at once, None: automatic.

    Under a multi-process launch each rank runs its share in its own process
    (one worker per rank: the ranks already divide the cells).
    """
    from tunelens.runs.ranks import RankExecutor, rank_and_world

    if workers is not None:
        check_option(_WorkersOption, "workers", workers, "--workers")
        if name == "ray":
            raise TunelensInputError(
                "needs --executor local (Ray runs each cell as a task on its own workers)",
                where="--workers",
            )
    rank, world = rank_and_world()
    if name == "local":
        if address:
            raise TunelensInputError("--address needs --executor ray", where="--address")
        if world > 1:  # under accelerate launch / torchrun: the ranks divide the cells
            if workers is not None and workers > 1:
                raise TunelensInputError(
                    "under a multi-process launch each rank runs its cells in its own process; "
                    "launch more processes instead",
                    where="--workers",
                )
            return RankExecutor(LocalExecutor(workers=1), rank, world)
        return LocalExecutor(workers=workers)
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
