"""`tunelens convergence` and `tunelens audit`: results.json keys, and exit 2 on bad options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def tunelens(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunelens", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_convergence_writes_the_contract_keys(tmp_path: Path):
    out = tmp_path / "conv"
    result = tunelens(
        "convergence",
        "--out",
        str(out),
        "--n-pairs",
        "3",
        "--seeds",
        "0",
        "--k",
        "2",
        "--controls",
        "none,random_init",
        "--epochs",
        "2",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    entries = json.loads((out / "results.json").read_text())["convergence"]
    assert [e["condition"]["control"] for e in entries] == ["none", "random_init"]
    for entry in entries:
        assert entry["n_pairs"] == 3 and entry["condition"]["k"] == 2
        assert set(entry["accuracy"]) == {"anchor", "icl", "it"}
        layer = entry["layers"][-1]
        for key in ("cos_icl_it", "cos_anchor_icl", "cos_anchor_it"):
            assert set(layer[key]) == {"mean", "ci"}
        for test in layer["wilcoxon"].values():
            assert {"statistic", "p", "p_holm", "effect"} <= set(test)
    assert (out / "report.html").exists()


@pytest.mark.slow
def test_audit_writes_the_contract_keys(tmp_path: Path):
    out = tmp_path / "audit"
    result = tunelens(
        "audit",
        "--out",
        str(out),
        "--definitions",
        "original,simplified",
        "--examples",
        "original",
        "--eval-instances-per-task",
        "2",
        "--eval-encodings",
        "definition_only",
        "--epochs",
        "1",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    conditions = [e["condition"] for e in results["audit"]]
    assert [c["definition"] for c in conditions] == ["original", "simplified"]
    assert set(conditions[0]) == {
        "definition",
        "examples",
        "instances_per_task",
        "seed",
        "encoding",
    }
    assert {c["encoding"] for c in conditions} == {"definition_only"}
    for entry in results["audit"]:
        # {"mean", "ci"} plus the number of tasks and the interval method beside them
        assert set(entry["em"]) == {"mean", "ci", "n", "method"} and "per_task" in entry
        assert "per_category" in entry and "training" in entry
    assert set(results["baselines"]) == {"untuned", "random", "copy_input", "copy_demo"}


def test_bad_option_values_exit_2_with_one_line(tmp_path: Path):
    bad_k = tunelens("convergence", "--out", str(tmp_path / "a"), "--k", "two")
    assert bad_k.returncode == 2 and "--k" in bad_k.stderr and "Traceback" not in bad_k.stderr
    bad_def = tunelens("audit", "--out", str(tmp_path / "b"), "--definitions", "origenal")
    assert bad_def.returncode == 2 and "definitions" in bad_def.stderr
    assert "Traceback" not in bad_def.stderr
    assert not (tmp_path / "b" / "results.json").exists()
