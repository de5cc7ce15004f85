"""Under `accelerate launch` / `torchrun` with 2 CPU processes (gloo), the ranks divide the work.

1. A study's cells are divided among the ranks; rank 0 aggregates, and
   results.json is byte-identical to a single-process run.
2. Multi-task tuning runs data-parallel (DDP) through Accelerate: with the same
   global batch (2 x 4 vs 1 x 8) the tuned adapter equals the single-process
   one within 1e-5. (DDP averages the two half-batch gradients where one process
   averages all eight: equal in exact arithmetic, as the world's answers have
   equal token counts, and a few 1e-8 apart in float32, which Adam can turn into
   up to 2 x lr per step on a near-zero gradient; lr 1e-3 keeps that inside 1e-5.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tests.helpers.numerics import assert_close_scaled

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
convergence:
  n_pairs: 3
  seeds: [0, 1]
  k: [2]
  controls: [none]
  tuning: {epochs: 2}
audit:
  definitions: [original]
  examples: [original]
  eval_instances_per_task: 3
  tuning: {max_steps: 2}
"""

TUNE = """
import sys
import torch
from safetensors.torch import save_file
from tunelens.experiments.audit import training_pairs
from tunelens.models.loading import load_model
from tunelens.models.tuning import multitask_tune
from tunelens.spec import TuningSpec
from tunelens.tasks.world.generator import generate_world

batch, out = int(sys.argv[1]), sys.argv[2]
loaded = load_model("world")
tasks = generate_world(0).train[:8]
pairs = training_pairs(tasks, definition="original", examples="original",
                       instances_per_task=4, n_positive=2, seed=0)
config = TuningSpec(batch_size=batch, max_steps=3, learning_rate=1e-3, seed=0)
tuned = multitask_tune(loaded, pairs, config, progress=False)
state = tuned.adapter_state()
import os
if int(os.environ.get("RANK", "0")) == 0:
    save_file({k: v.contiguous() for k, v in state.items()}, out)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")},
        "PYTHONPATH": str(ROOT / "src"),
    }


def run(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=600, cwd=cwd, env=env()
    )
    assert done.returncode == 0, done.stderr[-3000:]


def launch(tmp_path: Path, *args: str) -> None:
    # --multi_gpu is Accelerate's torchrun launcher; without GPUs the ranks use gloo on the CPU
    # (its --cpu flag always starts a single process).
    run(
        tool("accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        *args,
        cwd=tmp_path,
    )


def test_two_ranks_divide_the_cells_and_write_what_one_process_writes(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text(SPEC, encoding="utf-8")
    run(
        sys.executable,
        "-m",
        "tunelens",
        "run",
        "spec.yaml",
        "--out",
        "one",
        "--no-progress",
        cwd=tmp_path,
    )
    launch(tmp_path, "-m", "tunelens", "run", "spec.yaml", "--out", "two", "--no-progress")
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "results.json").read_bytes() == (one / "results.json").read_bytes()
    assert (two / "report.html").is_file()
    timings = json.loads((two / "timings.json").read_text())
    # rank 0 ran (and timed) only its share of the 7 cells; rank 1 ran the rest
    assert timings["runs"][-1]["cells_run"] == 7
    assert 0 < len(timings["cells"]) < 7
    assert len(list((two / "cells").rglob("*.json"))) == 7


def test_data_parallel_tuning_equals_one_process_with_the_same_global_batch(tmp_path: Path):
    script = tmp_path / "tune.py"
    script.write_text(TUNE, encoding="utf-8")
    run(sys.executable, str(script), "8", str(tmp_path / "one.safetensors"), cwd=tmp_path)
    launch(tmp_path, str(script), "4", str(tmp_path / "two.safetensors"))
    one = load_file(str(tmp_path / "one.safetensors"))
    two = load_file(str(tmp_path / "two.safetensors"))
    assert one.keys() == two.keys() and one
    for name in one:
        assert_close_scaled(two[name], one[name], 1e-5)
    # and tuning did move the adapter (the comparison is not of two untouched inits)
    assert any(float(t.abs().max()) > 0 for name, t in one.items() if "lora_B" in name)
