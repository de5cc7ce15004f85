"""Cells are addressed by content: an edited task or model recomputes exactly the cells using it.

The audit on two small JSONL task files and a copy of the world model: four
baselines (three depend on the held-out tasks alone, ``untuned`` on those and
the model) and one tuned grid cell (training tasks, held-out tasks, model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelens.experiments.audit.spec import AuditSpec
from tunelens.models.paths import world_model_dir
from tunelens.runs.study import run_study
from tunelens.spec import Spec

LABELS = ["yes", "no"]


def write_task(path: Path, name: str, rows: list[tuple[str, str]]) -> None:
    header = {"tunelens_task": 1, "task": name, "definition": f"Answer {name}.", "labels": LABELS}
    lines = [json.dumps(header)] + [json.dumps({"input": i, "output": o}) for i, o in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def last_run(out: Path) -> dict:
    return json.loads((out / "timings.json").read_text())["runs"][-1]


def recomputed(out: Path, before: dict) -> set[str]:
    """Names of the cells whose timing entry is new since ``before``."""
    cells = json.loads((out / "timings.json").read_text())["cells"]
    return {v["name"] for k, v in cells.items() if k not in before}


def timings_cells(out: Path) -> dict:
    return dict(json.loads((out / "timings.json").read_text())["cells"])


def test_edits_recompute_exactly_the_cells_that_use_them(tmp_path: Path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_task(train, "train_task", [("apple", "yes"), ("stone", "no"), ("pear", "yes")])
    # Every held-out input equals its output, so copying the input scores 100.
    write_task(test, "test_task", [("yes", "yes"), ("no", "no")])
    model = tmp_path / "model"
    shutil.copytree(world_model_dir(), model)
    spec = Spec(
        model=str(model),
        audit=AuditSpec(
            train=str(train),
            test=str(test),
            definitions=["original"],
            examples=["original"],
            instances_per_task=[2],
            eval_instances_per_task=2,
            max_new_tokens=2,
            bootstrap=100,
            tuning={"max_steps": 1, "batch_size": 2, "epochs": 1},
        ),
    )
    out = tmp_path / "run"
    first = run_study(spec, out, progress=False)
    assert first["baselines"]["copy_input"]["em"]["mean"] == 100.0
    assert last_run(out)["cells_run"] == 5

    run_study(spec, out, progress=False)  # unchanged inputs: nothing is recomputed
    assert last_run(out)["cells_run"] == 0

    before = timings_cells(out)
    write_task(train, "train_task", [("apple", "no"), ("stone", "yes"), ("pear", "no")])
    run_study(spec, out, progress=False)
    assert recomputed(out, before) == {"def=original ex=original n=2 seed=0"}

    before = timings_cells(out)
    write_task(test, "test_task", [("yes", "no"), ("no", "yes")])  # copying now always fails
    edited = run_study(spec, out, progress=False)
    assert last_run(out)["cells_run"] == 5 and len(recomputed(out, before)) == 5
    assert edited["baselines"]["copy_input"]["em"]["mean"] == 0.0

    before = timings_cells(out)
    weights = model / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    run_study(spec, out, progress=False)
    assert recomputed(out, before) == {"baseline untuned", "def=original ex=original n=2 seed=0"}
