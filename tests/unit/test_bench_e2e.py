"""bench/e2e.py and bench/scaling.py run end to end in their smoke modes (no timing asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_e2e_quick_compares_the_production_cell_with_the_script():
    result = run("e2e.py", "--quick", "--repeats", "1", "--threads", "1")
    ratio = result["e2e_convergence_cell_ratio"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    cell = result["e2e_convergence_cell"]
    assert cell["untuned_predictions_agree"] >= 0.9  # both sides computed the same cell
    assert cell["untuned_cosine_max_abs_diff"] <= 1e-3
    assert math.isnan(result["plan_error"])  # opt-in (--plan-error)


@pytest.mark.slow
def test_scaling_quick_prints_both_tables():
    result = run("scaling.py", "--quick", "--repeats", "1")
    assert [r["anchors"] for r in result["capture"]] == [4, 8]
    assert [r["sets"] for r in result["tuning"]] == [2, 4]
    assert all(r["cpu_s"] > 0 for r in result["capture"] + result["tuning"])
