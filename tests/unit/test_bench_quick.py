"""bench/run.py --quick runs end to end and ends with the JSON line the issue asks for."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"
KEYS = (
    "hidden_states_ratio",
    "hidden_states_vs_cached",
    "hidden_states_vs_cached_cpu",
    "hidden_states_vs_cached_k16",
    "per_set_tuning_ratio",
    "sft_tokens_ratio",
    "mfu_forward",
)


@pytest.mark.slow
def test_quick_bench_prints_the_four_figures(tmp_path):
    pytest.importorskip("trl")  # the baseline of the multi-task comparison (dev / bench extra)
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    for key in KEYS:
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert json.loads(out.read_text()) == result
    # one human-readable line per comparison before the JSON
    for label in (
        "machine",
        "hidden states",
        "hidden states vs cached",
        "per-set tuning",
        "multi-task tuning",
        "MFU forward",
    ):
        assert any(line.startswith(label) for line in lines[:-1]), label
    # both sides of each comparison compute the same thing
    for model in ("20m", "world"):
        states = result["hidden_states"][model]
        bound = 1e-6 * max(1.0, states["max_abs_state"])
        assert states["max_abs_diff"] <= bound  # the library's packed rows vs the loop
        assert states["tunelens_tokens"] < states["cached_tokens"] < states["prompt_tokens_total"]
        lo, hi = states["mfu_cpu_spread"]
        assert 0 < lo <= states["mfu_cpu"] <= hi  # CPU-time MFU against the same rounds' matmul
        assert states["cached_max_abs_diff"] <= 1e-4  # the competent cached baseline
        # interleaved rounds: a median and a spread of per-round ratios, wall and CPU
        for key in ("vs_cached", "ratio_median"):
            assert states[key] > 0
        lo, hi = states["vs_cached_spread"]
        assert lo <= states["vs_cached"] <= hi
        assert len(states["rounds"]["vs_cached"]["cpu_rounds"]) >= 3
    assert len(result["loadavg_at_end"]) == 3
    # per-set tuning: both models, definition on and off; the headline is the smallest
    variants = ("world", "20m", "world_no_definition", "20m_no_definition")
    assert sorted(result["per_set_tuning"]) == sorted(variants)
    for name in variants:
        tuned = result["per_set_tuning"][name]
        assert tuned["max_rel_adapter_diff"] < 1e-3
        assert len(tuned["rounds"]["wall_rounds"]) >= 3
        lo, hi = tuned["ratio_spread"]
        assert lo <= tuned["ratio"] <= hi
        assert result[f"per_set_tuning_ratio_{name}"] == tuned["ratio"]
    assert result["per_set_tuning_ratio"] == min(
        result["per_set_tuning"][name]["ratio"] for name in variants
    )
    assert result["sft"]["world"]["trl_tokens"] == result["sft"]["world"]["tunelens_tokens"]
