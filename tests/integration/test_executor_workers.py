"""The local executor's worker processes: same bytes as one process, errors, the automatic count.

One real study on the world model (two tiny convergence cells and two world-eval cells) runs
once in this process and once on two spawned workers; the rest uses the fake experiments,
whose workers start without torch (about a second each).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.cli import invoke
from tests.helpers.fakes import FakeConvergence, small_spec

from tunelens.api import Cell, Experiment, RunContext
from tunelens.errors import DivergedError, TunelensInputError
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.experiments.world_eval.spec import WorldEvalSpec
from tunelens.runs.executors import Job, LocalExecutor, automatic_workers, make_executor
from tunelens.runs.store import CellStore
from tunelens.runs.study import run_study
from tunelens.spec import Spec

N_FAKE_CELLS = 6  # small_spec()'s convergence: 2 k x 3 seeds


def world_spec() -> Spec:
    """The smallest real study with several cells: 2 convergence seeds + 2 world-eval k."""
    return Spec(
        limit=2,
        convergence=ConvergenceSpec(
            n_pairs=2,
            seeds=[0, 1],
            k=[2],
            controls=["none"],
            patching=False,
            tuning={"epochs": 1, "max_steps": 1},
        ),
        world_eval=WorldEvalSpec(shots=[0, 2], queries_per_task=2),
    )


@pytest.fixture(scope="module")
def world_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The study run in this process (``--workers 1``) and on two worker processes."""
    base = tmp_path_factory.mktemp("workers")
    one, two = base / "one", base / "two"
    run_study(world_spec(), one, progress=False, workers=1)
    run_study(world_spec(), two, progress=False, workers=2)
    return one, two


def files_under(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_two_workers_write_the_bytes_of_one_process(world_runs: tuple[Path, Path]) -> None:
    one, two = world_runs
    timings = [json.loads((d / "timings.json").read_text())["runs"][-1] for d in world_runs]
    assert [t["cells_run"] for t in timings] == [4, 4]
    # Same machine, same spec: nothing in results.json may differ, environment included.
    assert (two / "results.json").read_bytes() == (one / "results.json").read_bytes()
    cells = files_under(one / "cells")
    assert len(cells) == 4
    assert files_under(two / "cells") == cells
    # The workers' batch sizes reach the driver's manifest as if the cells had run here.
    manifests = [json.loads((d / "manifest.json").read_text()) for d in world_runs]
    assert manifests[1].get("batch_sizes") == manifests[0].get("batch_sizes")


class StepDiverged(DivergedError):
    """Like TuningDivergedError: its __init__ does not take its message (no plain unpickling)."""

    def __init__(self, step: int):
        super().__init__(f"the loss is nan at step {step}", where="tuning")


class FailingConvergence(FakeConvergence):
    """The fake convergence whose last cell fails, once the other cells are in ``out``'s store.

    Waiting makes the test deterministic: in a worker the last cell starts while
    another may still run; in this process it runs after all of them anyway.
    """

    def __init__(self, out: str, error: str):
        super().__init__()
        self.out, self.error = out, error

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        if cell.name != "k=4 seed=2":
            return super().run_cell(cell, context)
        deadline = time.monotonic() + 60
        while len(CellStore(Path(self.out)).finished_keys()) < N_FAKE_CELLS - 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the other cells never arrived")
            time.sleep(0.05)
        if self.error == "input":
            raise TunelensInputError("k=4 cannot be used here", where="convergence.k")
        raise StepDiverged(3)


def failing_run(out: Path, error: str, workers: int) -> BaseException:
    spec = small_spec().model_copy(update={"audit": None})
    experiments: dict[str, Experiment] = {"convergence": FailingConvergence(str(out), error)}
    with pytest.raises(TunelensInputError) as raised:
        run_study(spec, out, progress=False, experiments=experiments, workers=workers)
    assert len(CellStore(out).finished_keys()) == N_FAKE_CELLS - 1  # the others are kept
    return raised.value


@pytest.mark.parametrize("error", ["input", "diverged"])
def test_a_cells_error_in_a_worker_is_the_error_of_one_process(tmp_path: Path, error: str) -> None:
    here = failing_run(tmp_path / "here", error, workers=1)
    there = failing_run(tmp_path / "there", error, workers=2)
    assert type(there) is type(here)
    assert str(there) == str(here)
    if error == "input":  # exit status 2, the message unchanged
        assert type(there) is TunelensInputError
        assert str(there) == "convergence.k: k=4 cannot be used here"
    else:  # named with its cell, as in one process
        assert str(there).startswith("convergence cell 'k=4 seed=2': tuning: the loss is nan")
    assert not multiprocessing.active_children()  # the pool is gone


class SlowConvergence(FakeConvergence):
    """Every cell but the first sleeps ``pause`` seconds."""

    def __init__(self, pause: float):
        super().__init__()
        self.pause = pause

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        if cell.name != "k=2 seed=0":
            time.sleep(self.pause)
        return super().run_cell(cell, context)


def fake_jobs(experiment: FakeConvergence, models: list[str | None] | None = None) -> list[Job]:
    section = ConvergenceSpec(k=[2, 4], seeds=[0, 1, 2], n_pairs=5)
    cells = experiment.cells(section)
    if models is not None:
        cells = [
            Cell(c.experiment, c.name, {**c.params, "model": m}, c.seed)
            for c, m in zip(cells, models, strict=False)
        ][: len(models)]
    return [Job(experiment, cell) for cell in cells]


def test_an_interrupt_ends_the_workers_at_once(tmp_path: Path) -> None:
    experiment = SlowConvergence(pause=120.0)
    jobs = fake_jobs(experiment)
    store = CellStore(tmp_path)

    def interrupt(job: Job, seconds: float) -> None:
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(workers=2).run(jobs, store, on_done=interrupt)
    assert time.monotonic() - started < 60  # the sleeping worker was ended, not awaited
    assert len(store.finished_keys()) == 1  # the finished cell was written first
    assert not multiprocessing.active_children()


KILLED_DRIVER = """
import sys
sys.path[:0] = [{root!r}, {here!r}]
from test_executor_workers import SlowConvergence, fake_jobs
from tunelens.runs.executors import LocalExecutor
from tunelens.runs.store import CellStore
LocalExecutor(workers=2).run(fake_jobs(SlowConvergence(pause=120.0)), CellStore(sys.argv[1]))
"""


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_workers_of_a_killed_driver_exit(tmp_path: Path) -> None:
    """SIGKILL gives the driver no chance to end its workers: they notice and exit."""
    script = tmp_path / "driver.py"
    here = Path(__file__).resolve().parent
    script.write_text(KILLED_DRIVER.format(root=str(here.parents[1]), here=str(here)))
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")])
    store = CellStore(tmp_path / "run")
    try:
        deadline = time.monotonic() + 60
        while not store.finished_keys():  # the fast cell: both workers are up
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        workers = children(driver.pid)
        assert len(workers) >= 2  # the workers (and multiprocessing's resource tracker)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("TUNELENS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TUNELENS_WORKERS", raising=False)


def large_model(directory: Path) -> str:
    """A model directory whose safetensors header declares 200M parameters (no data)."""
    directory.mkdir()
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [20_000, 10_000], "data_offsets": [0, 800_000_000]}}
    ).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return str(directory)


def test_the_automatic_count_follows_the_thread_policy(
    four_cores: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    experiment = FakeConvergence()
    small = fake_jobs(experiment, ["world", "world-small", None, "world"])
    assert automatic_workers(small) == 4  # one thread per small-model cell
    assert LocalExecutor().workers_for(small) == 4
    assert LocalExecutor().workers_for(small[:3]) == 3  # never more workers than cells
    assert LocalExecutor().workers_for(small[:1]) == 1  # one cell: in this process
    assert LocalExecutor(workers=2).workers_for(small) == 2  # --workers wins
    big = large_model(tmp_path / "big")
    assert automatic_workers(fake_jobs(experiment, ["world", big])) == 1  # every core per cell
    unreadable = tmp_path / "empty"
    unreadable.mkdir()
    assert automatic_workers(fake_jobs(experiment, [str(unreadable)])) == 1  # counted as large
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert automatic_workers(small) == 2
    monkeypatch.setenv("TUNELENS_THREADS", "3")  # tunelens's own wins over OpenMP's
    assert automatic_workers(small) == 1
    assert automatic_workers(fake_jobs(experiment, [big])) == 1
    monkeypatch.setenv("TUNELENS_WORKERS", "3")  # fixes the count, whatever the threads
    assert automatic_workers(small) == 3
    assert LocalExecutor(workers=2).workers_for(small) == 2  # --workers still wins


def test_gpu_cells_and_a_custom_loader_stay_in_this_process(four_cores: None) -> None:
    experiment = FakeConvergence()
    jobs = fake_jobs(experiment, ["world", "world"])
    gpu = [
        Job(
            experiment,
            Cell(
                j.cell.experiment, j.cell.name, {**j.cell.params, "device": "cuda:0"}, j.cell.seed
            ),
        )
        for j in jobs
    ]
    assert LocalExecutor(workers=4).workers_for(gpu) == 1
    placed = [Job(j.experiment, j.cell, placement=(("device_map", "auto"),)) for j in jobs]
    assert LocalExecutor().workers_for(placed) == 1
    assert LocalExecutor(lambda *a, **k: None).workers_for(jobs) == 1

    class Local(FakeConvergence):  # defined in a function: cannot be sent to a worker
        pass

    assert LocalExecutor(workers=4).workers_for(fake_jobs(Local(), ["world", "world"])) == 1


def test_one_worker_per_rank_under_a_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    executor = make_executor("local")
    assert executor.inner.workers == 1  # type: ignore[attr-defined]
    assert make_executor("local", workers=1).inner.workers == 1  # type: ignore[attr-defined]
    with pytest.raises(TunelensInputError, match="--workers: under a multi-process launch"):
        make_executor("local", workers=2)


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ["--workers", "0"],
            "error: --workers: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            ["--workers", "2", "--executor", "ray"],
            "error: --workers: needs --executor local (Ray runs each cell as a task on its own "
            "workers)",
        ),
    ],
)
def test_bad_workers_are_exit_2_with_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    result = invoke("run", "--out", str(tmp_path / "out"), "--no-progress", *args)
    assert result.code == 2
    assert result.stderr_lines == [line]
    assert not (tmp_path / "out").exists()
