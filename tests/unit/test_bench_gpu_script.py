"""bench/gpu.sh runs on CPU with a tiny random Llama and prints every figure it promises."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"
SECTIONS = {
    "hidden_states": ("tunelens", "cached", "loop"),
    "per_set_tuning": ("tunelens", "peft"),
    "multitask_tuning": ("tunelens",),
}
FIGURES = ("tokens_per_s", "mfu", "peak_memory_gib", "seconds")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_runs_tiny_on_cpu(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert json.loads(out.read_text()) == result
    assert result["device"] == "cpu" and result["tiny"] and result["dtype"] == "float32"
    assert result["peak_source"] == "measured" and result["peak_tflops"] > 0
    for section, sides in SECTIONS.items():
        for side in sides:
            figures = result[section][side]
            for key in FIGURES:
                value = figures[key]
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (
                    section,
                    side,
                    key,
                )
    states = result["hidden_states"]
    assert states["max_abs_diff_cached"] <= 1e-4  # fp32: the cached baseline equals tunelens
    lo, hi = states["vs_cached_spread"]
    assert 0 < lo <= states["vs_cached"] <= hi
    scoring = result["label_scoring"]  # prompt once + labels on its cache = full strings
    assert scoring["max_rel_diff"] <= 1e-4 and scoring["tunelens_s"] > 0
    dispatch = result["dispatch"]
    assert dispatch["max_rel_diff"] <= 1e-4 and dispatch["placed_on"]
    for cell in ("convergence_cell", "audit_cell"):
        assert result[cell]["seconds"] > 0 and result[cell]["peak_memory_gib"] > 0
    for label in (
        "device",
        "hidden states",
        "label scoring",
        "dispatched model",
        "per-set tuning",
        "multi-task",
        "convergence cell",
    ):
        assert any(line.startswith(label) for line in lines[:-1]), label
    assert len(result["loadavg_at_start"]) == 3
