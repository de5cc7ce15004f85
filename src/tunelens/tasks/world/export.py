"""Write world tasks in the Super-NaturalInstructions layout, so one loader serves both."""

from __future__ import annotations

import json
from pathlib import Path

from tunelens.io import atomic_write_text
from tunelens.tasks.types import Task
from tunelens.tasks.world.generator import World


def task_to_superni(task: Task) -> dict:
    """A task as a Super-NaturalInstructions task JSON object."""
    example = lambda e: {"input": e.input, "output": e.output, "explanation": e.explanation}  # noqa: E731
    return {
        "Contributors": ["tunelens instruction world"],
        "Source": [task.source or "tunelens"],
        "Categories": list(task.categories),
        "Definition": [task.definition],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Domains": ["Instruction world"],
        "Positive Examples": [example(e) for e in task.positive_examples],
        "Negative Examples": [example(e) for e in task.negative_examples],
        "Instances": [
            {"id": i.id, "input": i.input, "output": list(i.outputs)} for i in task.instances
        ],
        "Instance License": ["Apache 2.0"],
        "World Rule": task.metadata,
    }


def export_world(world: World, root: Path) -> list[Path]:
    """tasks/<name>.json plus splits/default/{train,test}_tasks.txt under ``root``."""
    tasks_dir = root / "tasks"
    split_dir = root / "splits" / "default"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    split_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in world.train + world.heldout:
        path = tasks_dir / f"{task.name}.json"
        text = json.dumps(task_to_superni(task), indent=1, ensure_ascii=False) + "\n"
        atomic_write_text(path, text)
        written.append(path)
    atomic_write_text(split_dir / "train_tasks.txt", "".join(f"{t.name}\n" for t in world.train))
    atomic_write_text(split_dir / "test_tasks.txt", "".join(f"{t.name}\n" for t in world.heldout))
    return written
