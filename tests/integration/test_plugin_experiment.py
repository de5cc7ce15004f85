"""An experiment defined only under tests/ runs through run, plan, --limit, export and report.

The plug-in contract of issue 27: nothing in ``src/`` names the toy experiment
(``tests/helpers/toy_experiment.py``); it is registered through the public
registry API, or through an entry point of a distribution installed for the
test, and every command that reads a study serves it. Each result is checked
against what the toy's inputs say it must be, not against a stored copy.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.cli import invoke
from tests.helpers.toy_experiment import NAME, ToyExperiment

from tunelens.api import get_experiments
from tunelens.api.registry import ENTRY_POINT_GROUP, add_experiment, remove_experiment
from tunelens.tasks.sets import load_task_set

SPEC = "toy:\n  tasks: world:heldout\n  per_task: 3\nnote: toy study\n"


def expected_chars(per_task: int) -> dict[str, int]:
    """Characters of the first ``per_task`` inputs of each held-out world task, counted here."""
    return {
        task.name: sum(len(i.input) for i in task.instances[:per_task])
        for task in load_task_set("world:heldout")
    }


@pytest.fixture
def toy_registered() -> Iterator[None]:
    add_experiment(NAME, "tests.helpers.toy_experiment:ToyExperiment")
    try:
        yield
    finally:
        remove_experiment(NAME)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return path


def test_toy_runs_and_reports_through_the_public_registry(
    toy_registered: None, spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = invoke("run", str(spec_file), "--out", str(out), "--no-progress")
    assert result.code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    rows = {r["task"]: r["chars"] for r in results[NAME]["rows"]}
    assert rows == expected_chars(3)
    assert results[NAME]["total"] == sum(rows.values())
    assert results["spec"][NAME]["per_task"] == 3
    html = (out / "report.html").read_text()
    assert "Toy: characters per task" in html
    assert f"total {sum(rows.values())} characters over {len(rows)} tasks" in html

    exported = invoke("export", str(out), "--out", str(tmp_path / "export"))
    assert exported.code == 0, exported.stderr
    with open(tmp_path / "export" / f"{NAME}.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert {row["task"]: int(float(row["value"])) for row in table} == rows

    (out / "report.html").unlink()
    rebuilt = invoke("report", str(out))
    assert rebuilt.code == 0, rebuilt.stderr
    assert "Toy: characters per task" in (out / "report.html").read_text()


def test_toy_limit_bounds_its_section_and_keys(
    toy_registered: None, spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "limited"
    result = invoke("run", str(spec_file), "--out", str(out), "--no-progress", "--limit", "1")
    assert result.code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert {r["task"]: r["chars"] for r in results[NAME]["rows"]} == expected_chars(1)
    assert results["limit"] == 1
    keys = {p.stem for p in (out / "cells" / NAME).glob("*.json")}
    full = tmp_path / "full"
    assert invoke("run", str(spec_file), "--out", str(full), "--no-progress").code == 0
    assert keys.isdisjoint({p.stem for p in (full / "cells" / NAME).glob("*.json")})


def test_toy_plan_counts_its_own_estimate(
    toy_registered: None, spec_file: Path, tmp_path: Path
) -> None:
    result = invoke("plan", str(spec_file), "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    (toy,) = [e for e in plan["experiments"] if e["experiment"] == NAME]
    tasks = len(expected_chars(3))
    assert toy["cells"] == tasks
    assert toy["forward_tokens"] == 10 * 3 * tasks


def test_unknown_section_is_refused_until_registered(spec_file: Path, tmp_path: Path) -> None:
    assert NAME not in get_experiments()
    result = invoke("run", str(spec_file), "--out", str(tmp_path / "run"), "--no-progress")
    assert result.code == 2
    assert len(result.stderr_lines) == 1
    assert NAME in result.stderr and str(spec_file) in result.stderr


def test_toy_registers_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_file: Path
) -> None:
    """A distribution that declares ``tunelens.experiments`` adds its experiment on import."""
    dist = tmp_path / "site" / "toy_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n{NAME} = tests.helpers.toy_experiment:ToyExperiment\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        experiments = get_experiments()
        assert isinstance(experiments[NAME], ToyExperiment)
        assert list(experiments)[-1] == NAME  # after the shipped ones
        out = tmp_path / "run"
        result = invoke("run", str(spec_file), "--out", str(out), "--no-progress")
        assert result.code == 0, result.stderr
        rows = json.loads((out / "results.json").read_text())[NAME]["rows"]
        assert {r["task"]: r["chars"] for r in rows} == expected_chars(3)
    finally:
        monkeypatch.undo()
        remove_experiment(NAME)
        sys.modules.pop("toy_plugin", None)
