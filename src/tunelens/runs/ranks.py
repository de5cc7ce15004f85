"""``accelerate launch`` / ``torchrun``: the ranks of one launch divide a study's cells.

Each of N processes (``RANK`` / ``WORLD_SIZE`` in the environment, as both
launchers set them) plans the same cells, runs every N-th unfinished one
(``jobs[rank::N]``) and then waits until the others' cells are in the store,
so every rank sees every result and follow-up cells are divided the same way.
The store is the only channel: ranks must share the run directory (one
machine, or a shared file system), and no collective with a timeout is held
while a long cell runs. Only rank 0 takes the run lock and writes the
manifest, ``timings.json`` (its own cells' seconds), results and report. A rank
that fails makes the launcher stop the others (torchrun's default), so a
waiting rank never waits for a dead one for long.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tunelens.runs.store import CellStore

__all__ = ["RankExecutor", "is_main_process", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in a launch; (0, 1) outside one."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    if world < 1 or not 0 <= rank < world:
        return 0, 1
    return rank, world


def is_main_process() -> bool:
    """Whether this process writes the run's shared files (rank 0, or no launch at all)."""
    return rank_and_world()[0] == 0


# What torch.distributed and Accelerate read to join a process group.
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


@contextlib.contextmanager
def single_process_environment() -> Iterator[None]:
    """This rank's cells run as if launched alone.

    A cell that builds an ``Accelerator`` (multi-task tuning) would otherwise
    join a process group with the other ranks, which are busy with their own
    cells: a deadlock. Cells are divided, so each one is a single-process job.
    """
    saved = {name: os.environ.get(name) for name in _LAUNCH_VARIABLES}
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    os.environ.pop("GROUP_RANK", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RankExecutor:
    """Runs this rank's share of the jobs on ``inner``, then waits for the other ranks'."""

    def __init__(self, inner: Any, rank: int, world: int, poll_seconds: float = 0.5):
        self.inner = inner
        self.rank, self.world = rank, world
        self.poll_seconds = poll_seconds
        self.name = getattr(inner, "name", "local")

    def run(
        self,
        jobs: Sequence[Any],
        store: CellStore,
        *,
        on_done: Any = None,
        on_step: Any = None,
    ) -> None:
        mine = list(jobs)[self.rank :: self.world]
        with single_process_environment():
            self.inner.run(mine, store, on_done=on_done, on_step=on_step)
        waiting = [job for job in jobs if job not in mine]
        while waiting:
            # A cheap stat first: a cell file is read and parsed only once it exists.
            waiting = [
                job
                for job in waiting
                if not (store.path(job.cell).is_file() and store.has(job.cell))
            ]
            if waiting:
                time.sleep(self.poll_seconds)
