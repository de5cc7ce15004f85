"""`tunelens run / report / plan` on the command line: outputs, exit status 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.fakes import fake_experiments

from tunelens.spec import default_spec, load_spec

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "examples" / "specs"


def tunelens(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunelens", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text,where",
    [
        ("convergence:\n  kk: 3\n", "convergence.kk"),
        ("audit:\n  tuning:\n    lr: 0.1\n", "audit.tuning.lr"),
        ("modle: world\n", "modle"),
    ],
)
def test_unknown_key_exits_2_naming_its_dotted_path(tmp_path, text, where):
    spec = write(tmp_path / "bad.yaml", text)
    result = tunelens("run", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {spec}: {where}:"), lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_bad_values_and_missing_spec_exit_2(tmp_path):
    bad = write(tmp_path / "bad.yaml", "convergence:\n  flip_fraction: [2.0]\n")
    result = tunelens("run", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "convergence.flip_fraction" in result.stderr
    result = tunelens("run", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "no such spec file" in result.stderr
    result = tunelens("run", "--out", str(tmp_path / "out"), "--executor", "dask")
    assert result.returncode == 2


def test_report_command_errors_and_rebuild(tmp_path):
    result = tunelens("report", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'results.json'}: no results.json; "
        "run `tunelens run SPEC --out DIR` first"
    )
    write(tmp_path / "results.json", "{not json")
    result = tunelens("report", str(tmp_path))
    assert result.returncode == 2 and "invalid JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    write(tmp_path / "results.json", json.dumps({"tunelens_version": "0.1.0"}))
    result = tunelens("report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.html").is_file()


def test_run_command_writes_results_and_report(tmp_path, monkeypatch):
    """The CLI path in-process, with fake experiments in place of the registry."""
    from typer.testing import CliRunner

    from tunelens.cli import app
    from tunelens.runs import study

    monkeypatch.setattr(study, "get_experiments", lambda: fake_experiments())
    spec = write(tmp_path / "spec.yaml", "convergence:\n  k: [2]\n  seeds: [0, 1]\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(spec), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"results: {out / 'results.json'}" in result.output
    assert f"report:  {out / 'report.html'}" in result.output
    results = json.loads((out / "results.json").read_text())
    assert [e["condition"]["k"] for e in results["convergence"]] == [2]
    assert "audit" not in results and (out / "report.html").is_file()


def test_plan_llama2_spec_prints_the_budget():
    result = tunelens("plan", str(SPECS / "duan2023_llama2_7b_convergence.yaml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for column in ("cells", "forward tokens", "training tokens", "FLOPs", "peak memory", "time"):
        assert column in out, column
    assert "6.48G non-embedding parameters" in out and "known architecture llama-2-7b" in out
    assert "989 TFLOP/s" in out and "GiB" in out and "min" in out
    row = next(line for line in out.splitlines() if line.startswith("│ convergence"))
    assert " 48 " in row

    result = tunelens(
        "plan",
        str(SPECS / "kung2023_t5_large_audit.yaml"),
        "--gpu",
        "a100",
        "--mfu",
        "0.3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["accelerator"] == "a100" and plan["peak_flops"] == 312e12
    assert plan["total"]["cells"] == 4 + 9 * 4 and plan["total"]["flops"] > 1e15
    assert tunelens("plan", "--mfu", "1.5").returncode == 2
    result = tunelens("plan", "--gpu", "tpu")
    assert result.returncode == 2 and "unknown accelerator 'tpu'" in result.stderr


def test_example_specs_load_and_default_matches_the_embedded_one():
    assert load_spec(SPECS / "default.yaml") == default_spec()
    duan = load_spec(SPECS / "duan2023_llama2_7b_convergence.yaml")
    assert duan.convergence.models == ["models/Llama-2-7b-hf"] and duan.audit is None
    kung = load_spec(SPECS / "kung2023_t5_large_audit.yaml")
    assert kung.audit.model == "models/t5-large-lm-adapt" and kung.convergence is None
    assert kung.audit.instances_per_task == [5, 10, 100, 800] and kung.audit.n_positive == 2
    tuning = kung.audit.tuning  # the Tk-Instruct recipe
    assert (tuning.learning_rate, tuning.lr_schedule, tuning.epochs) == (5e-5, "constant", 2)
    assert kung.audit.max_new_tokens == 128 and kung.audit.eval_instances_per_task == 100


def test_accelerate_configs_parse():
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    kinds = {}
    for path in sorted((REPO / "examples" / "accelerate").glob("*.yaml")):
        kinds[path.stem] = str(config_args.load_config_from_file(str(path)).distributed_type)
    assert kinds == {
        "deepspeed_zero3": "DistributedType.DEEPSPEED",
        "fsdp": "DistributedType.FSDP",
        "multi_gpu": "DistributedType.MULTI_GPU",
    }
