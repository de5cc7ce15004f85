"""Resolve a task-set reference from a spec or an option to a list of tasks.

References: ``world:train`` / ``world:heldout`` (the embedded world, seed 0),
``world:<seed>:train``; a split file ``<root>/splits/<name>/<part>_tasks.txt``
(Super-NaturalInstructions layout); or any path the loaders read (task JSON,
directory, JSONL). Several references can be joined with commas.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tunelens.errors import TunelensInputError
from tunelens.tasks.loaders import load_split, load_tasks
from tunelens.tasks.types import Task
from tunelens.tasks.world.generator import World, generate_world


@lru_cache(maxsize=8)
def _world(seed: int) -> World:
    """The embedded world of ``seed``, generated once per process."""
    return generate_world(seed)


def _one(ref: str, allow_missing: bool = False) -> list[Task]:
    if ref.startswith("world:"):
        parts = ref.split(":")[1:]
        seed = int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else 0
        which = parts[-1]
        if which not in ("train", "heldout", "test"):
            raise TunelensInputError(
                f"unknown world task set {ref!r}; use world:train or world:heldout"
            )
        world = _world(seed)
        return list(world.train if which == "train" else world.heldout)
    path = Path(ref)
    if path.name.endswith("_tasks.txt") and path.parent.parent.name == "splits":
        part = path.name[: -len("_tasks.txt")]
        return load_split(path.parents[2], path.parent.name, part, allow_missing=allow_missing)
    return load_tasks([path], allow_missing=allow_missing)


def load_task_set(ref: str, *, allow_missing: bool = False) -> list[Task]:
    """All tasks a reference names, in a stable order.

    ``allow_missing``: a split file's tasks without a file are skipped (partial
    copies of the benchmark; ``--allow-missing-tasks``) instead of an error.
    """
    tasks: list[Task] = []
    for piece in (p.strip() for p in ref.split(",")):
        if piece:
            tasks.extend(_one(piece, allow_missing))
    if not tasks:
        raise TunelensInputError(f"no tasks found for {ref!r}")
    return tasks
