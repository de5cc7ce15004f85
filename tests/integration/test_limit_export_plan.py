"""--limit (one mechanism, in cell keys and results.json), tunelens export (tidy tables
loaded with pandas), the spec's base seed, --allow-missing-tasks and plan's input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.fakes import fake_experiments, small_spec

from tunelens.api import StudyInputs, get_experiments
from tunelens.errors import TunelensInputError
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.experiments.world_eval.spec import WorldEvalSpec
from tunelens.runs.limit import limit_cells, limit_section
from tunelens.runs.store import CellStore
from tunelens.runs.study import run_study, spec_yaml
from tunelens.spec import Spec, validate_spec


def test_limit_bounds_each_experiment():
    experiments = get_experiments()
    conv = limit_section(experiments["convergence"], ConvergenceSpec(n_pairs=30), 5)
    assert conv.n_pairs == 5
    assert limit_section(experiments["convergence"], ConvergenceSpec(), 1).n_pairs == 2
    audit = limit_section(
        experiments["audit"],
        AuditSpec(instances_per_task=[1, 5, 50, "full"], eval_instances_per_task=50),
        4,
    )
    assert (audit.instances_per_task, audit.eval_instances_per_task) == ([1, 4], 4)
    world = limit_section(experiments["world_eval"], WorldEvalSpec(queries_per_task=20), 3)
    assert world.queries_per_task == 3
    assert limit_section(experiments["audit"], AuditSpec(), None) == AuditSpec()


def test_limited_run_records_limit_and_never_shares_cells(tmp_path):
    spec = small_spec()
    full = run_study(spec, tmp_path / "full", progress=False, experiments=fake_experiments())
    limited_spec = spec.model_copy(update={"limit": 2})
    out = tmp_path / "limited"
    limited = run_study(limited_spec, out, progress=False, experiments=fake_experiments())
    assert limited["limit"] == 2 and "limit" not in full
    assert limited["spec"]["limit"] == 2
    keys_full = CellStore(tmp_path / "full").finished_keys()
    keys_limited = CellStore(out).finished_keys()
    assert keys_limited and not keys_full & keys_limited
    cell_file = next((out / "cells" / "convergence").glob("*.json"))
    params = json.loads(cell_file.read_text())["cell"]["params"]
    assert params["limit"] == 2
    # One helper tags cells; an unlimited run leaves them as they were (old stores resume).
    cells = fake_experiments()["convergence"].cells(spec.convergence, StudyInputs())
    assert [c.key for c in limit_cells(cells, None)] == [c.key for c in cells]


def test_export_writes_long_tables_that_pandas_reads(tmp_path):
    pd = pytest.importorskip("pandas")
    run = tmp_path / "run"
    results = run_study(small_spec(), run, progress=False, experiments=fake_experiments())
    from tunelens.report.tidy import export_tables

    paths = export_tables(run, format="csv")
    assert sorted(p.name for p in paths) == ["audit.csv", "convergence.csv"]
    conv = pd.read_csv(run / "export" / "convergence.csv")
    entry = results["convergence"][0]
    layer = entry["layers"][1]
    row = conv[
        (conv.k == entry["condition"]["k"])
        & (conv.seed == "pooled")
        & (conv.layer == layer["layer"])
        & (conv.measure == "cos_icl_it")
    ]
    assert len(row) == 1
    assert row.value.iloc[0] == pytest.approx(layer["cos_icl_it"]["mean"])
    assert row.ci_low.iloc[0] == pytest.approx(layer["cos_icl_it"]["ci"][0])
    assert {"cka_icl_it", "accuracy_icl"} <= set(conv.measure)
    assert set(conv.seed) == {"pooled", "0", "1", "2"}

    audit = pd.read_csv(run / "export" / "audit.csv", dtype={"instances_per_task": str})
    first = results["audit"][0]
    task, scores = next(iter(first["per_task"].items()))
    got = audit[
        (audit.kind == "tuned")
        & (audit.definition == first["condition"]["definition"])
        & (audit.examples == first["condition"]["examples"])
        & (audit.level == "task")
        & (audit.name == task)
        & (audit.metric == "em")
    ]
    assert got.value.tolist() == [pytest.approx(scores["em"])]
    assert set(audit.kind) == {"tuned", "baseline"}

    pytest.importorskip("pyarrow")
    export_tables(run, tmp_path / "pq", format="parquet")
    assert len(pd.read_parquet(tmp_path / "pq" / "convergence.parquet")) == len(conv)


def test_export_cli_errors_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tunelens", "export", str(tmp_path), "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {tmp_path}: no results.json or decide.json here (is it a run directory?)"
    )


def test_base_seed_shifts_default_seeds_only():
    spec = Spec(
        seed=5, convergence=ConvergenceSpec(), audit=AuditSpec(), world_eval=WorldEvalSpec()
    )
    assert spec.convergence.seeds == [5, 6, 7]
    assert spec.audit.seeds == [5]
    assert spec.world_eval.seed == 5
    given = Spec(seed=5, convergence=ConvergenceSpec(seeds=[0, 1]))
    assert given.convergence.seeds == [0, 1]
    # The spec as run (every default filled in) loads to the same spec: no second shift.
    import yaml

    again = validate_spec(yaml.safe_load(spec_yaml(spec)), source="spec.yaml")
    assert again == spec


def _superni_copy(root: Path, names: list[str], present: list[str]) -> Path:
    split = root / "splits" / "default" / "test_tasks.txt"
    split.parent.mkdir(parents=True)
    split.write_text("\n".join(names) + "\n")
    (root / "tasks").mkdir()
    for name in present:
        task = {
            "Definition": ["Answer yes or no."],
            "Instances": [
                {"id": f"{name}-{i}", "input": f"x{i}", "output": ["yes" if i % 2 else "no"]}
                for i in range(12)
            ],
        }
        (root / "tasks" / f"{name}.json").write_text(json.dumps(task))
    return split


def test_allow_missing_tasks_for_partial_copies_in_plan(tmp_path):
    from tunelens.runs.plan import plan_study

    split = _superni_copy(tmp_path / "superni", ["a", "gone", "b"], ["a", "b"])
    spec = Spec(convergence=ConvergenceSpec(tasks=str(split), k=[2], n_pairs=4, seeds=[0]))
    with pytest.raises(TunelensInputError) as caught:
        plan_study(spec, peak_flops=1e12, source="s.yaml")
    assert "line 2: task 'gone' has no file" in str(caught.value)
    partial = spec.model_copy(update={"allow_missing_tasks": True})
    assert plan_study(partial, peak_flops=1e12).cells == 2 * 1  # 2 controls x 1 seed


def test_plan_checks_pool_sizes_and_prompt_length(tmp_path):
    from tunelens.runs.plan import plan_study

    split = _superni_copy(tmp_path / "superni", ["a", "b"], ["a", "b"])
    small = Spec(convergence=ConvergenceSpec(tasks=str(split), k=[16], n_pairs=4, seeds=[0]))
    with pytest.raises(TunelensInputError) as caught:
        plan_study(small, peak_flops=1e12, source="s.yaml")
    assert str(caught.value).startswith("s.yaml: convergence.k: ")

    long_task = tmp_path / "long.jsonl"
    words = " ".join(["cat"] * 40)
    long_task.write_text(
        "".join(
            json.dumps({"input": f"{words} {i}", "output": "yes" if i % 2 else "no"}) + "\n"
            for i in range(30)
        )
    )
    spec = Spec(convergence=ConvergenceSpec(tasks=str(long_task), k=[8], n_pairs=4, seeds=[0]))
    with pytest.raises(TunelensInputError) as caught:
        plan_study(spec, peak_flops=1e12, source="s.yaml")
    message = str(caught.value)
    assert message.startswith("s.yaml: convergence.k: the longest prompt is ")
    assert "more than the 256 positions of model world" in message
