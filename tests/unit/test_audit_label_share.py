"""The audit's in-label share, against numbers worked out here by hand.

``in_label_space`` is the percent of answers that, normalised as exact match normalises
them, are one of their task's labels; per task, then a mean over the tasks that have a
label space with the interval EM gets (the same statistic, called here directly on the
hand-computed shares). Free-text tasks are left out; with none left the share is null.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tunelens.api import Cell
from tunelens.experiments.audit import AuditExperiment
from tunelens.experiments.audit.report import IN_LABEL, audit_view
from tunelens.experiments.audit.results import AuditResults
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.audit.tidy import tidy_rows
from tunelens.measures.stats import unit_mean_ci
from tunelens.tasks.types import Instance, Task

N_BOOT = 500
TRAINING = {
    "effective_batch_size": 16,
    "epochs": 2,
    "steps": 10,
    "learning_rate": 0.003,
    "seed": 0,
    "template": "tk",
}


def labelled(name: str, outputs: list[str], category: str = "Textual Entailment") -> Task:
    return Task(
        name=name,
        definition='Answer "yes" or "no".',
        instances=tuple(Instance(f"{name}-{i}", f"x{i}", (o,)) for i, o in enumerate(outputs)),
        categories=(category,),
        labels=("no", "yes"),
    )


def free_text(name: str, outputs: list[str]) -> Task:
    return Task(
        name=name,
        definition="Write a title.",
        instances=tuple(Instance(f"{name}-{i}", f"x{i}", (o,)) for i, o in enumerate(outputs)),
        categories=("Title Generation",),
    )


def evaluation(tasks: list[Task], predictions: dict[str, list[str]]) -> dict[str, Any]:
    """Samples as a cell stores them, with per-task EM / ROUGE-L placeholders."""
    samples = [
        {
            "id": inst.id,
            "task": task.name,
            "prompt": None,
            "prediction": pred,
            "references": list(inst.outputs),
            "em": 0.0,
            "rouge_l": 0.0,
        }
        for task in tasks
        for inst, pred in zip(task.instances, predictions[task.name], strict=True)
    ]
    per_task = {t.name: {"em": 10.0 * i, "rouge_l": 5.0 * i} for i, t in enumerate(tasks)}
    return {"samples": samples, "per_task": per_task}


def cell(name: str, params: dict[str, Any], tasks: list[Task]) -> Cell:
    return Cell("audit", name, params, 0, {}, "8", {"test": tasks})


def aggregate(tasks: list[Task], untuned: dict, tuned: dict, copy: dict) -> dict[str, Any]:
    section = AuditSpec(
        definitions=["original"],
        examples=["original"],
        eval_encodings=["definition_only"],
        bootstrap=N_BOOT,
    )
    grid = {"definition": "original", "examples": "original", "instances_per_task": 5}
    results = [
        (
            cell("baseline untuned", {"baseline": "untuned"}, tasks),
            {"evaluations": {"definition_only": evaluation(tasks, untuned)}},
        ),
        (
            cell("baseline copy_input", {"baseline": "copy_input"}, tasks),
            {"evaluations": {"any": evaluation(tasks, copy)}},
        ),
        (
            cell("original", grid, tasks),
            {
                "evaluations": {"definition_only": evaluation(tasks, tuned)},
                "training": TRAINING,
            },
        ),
    ]
    return AuditExperiment().aggregate(section, results)


TASKS = [
    labelled("t0", ["yes", "no"]),
    labelled("t1", ["no", "yes", "no"]),
    free_text("t2", ["A title", "Another"]),
]
# "Yes." normalises to "yes" (a label); "maybe" is none; the free-text task never counts.
TUNED = {"t0": ["Yes.", "maybe"], "t1": ["no", "NO!", "perhaps"], "t2": ["yes", "A title"]}
TUNED_SHARES = [50.0, 200.0 / 3]
UNTUNED = {"t0": ["maybe", "so"], "t1": ["the", "no", "x"], "t2": ["A title", "x"]}
UNTUNED_SHARES = [0.0, 100.0 / 3]
COPY = {"t0": ["x0", "x1"], "t1": ["x0", "x1", "x2"], "t2": ["x0", "x1"]}


@pytest.fixture(scope="module")
def out() -> dict[str, Any]:
    return aggregate(TASKS, UNTUNED, TUNED, COPY)


def test_a_condition_gets_the_mean_share_over_labelled_tasks_with_ems_interval(out):
    (entry,) = out["audit"]
    share = entry["in_label_space"]
    expected = unit_mean_ci(np.array(TUNED_SHARES), seed=0, n_resamples=N_BOOT)
    assert share["mean"] == pytest.approx(np.mean(TUNED_SHARES))
    assert share["ci"] == pytest.approx(expected["ci"])
    assert share["n"] == 2 and share["method"] == entry["em"]["method"] == "t"
    # Per task: the labelled tasks only; per category: the free-text one has none.
    assert entry["per_task"]["t0"]["in_label_space"] == pytest.approx(50.0)
    assert entry["per_task"]["t1"]["in_label_space"] == pytest.approx(66.6667)
    assert "in_label_space" not in entry["per_task"]["t2"]
    assert entry["per_category"]["Textual Entailment"]["in_label_space"]["n"] == 2
    assert "in_label_space" not in entry["per_category"]["Title Generation"]


def test_baselines_get_it_too(out):
    untuned = out["baselines"]["untuned"]["in_label_space"]
    expected = unit_mean_ci(np.array(UNTUNED_SHARES), seed=0, n_resamples=N_BOOT)
    assert untuned["mean"] == pytest.approx(np.mean(UNTUNED_SHARES))
    assert untuned["ci"] == pytest.approx(expected["ci"])
    assert out["baselines_by_encoding"]["definition_only"]["untuned"]["in_label_space"] == untuned
    copy = out["baselines"]["copy_input"]["in_label_space"]
    assert copy["mean"] == 0.0 and copy["n"] == 2


def test_from_ten_tasks_on_it_is_the_bootstrap_em_uses():
    rng = np.random.default_rng(3)
    tasks = [labelled(f"t{i}", ["yes", "no", "no", "yes"]) for i in range(12)]
    tuned = {
        t.name: [str(rng.choice(["yes", "No.", "maybe", "I think"])) for _ in range(4)]
        for t in tasks
    }
    shares = [
        100.0 * np.mean([p.rstrip(".").lower() in ("yes", "no") for p in tuned[t.name]])
        for t in tasks
    ]
    out = aggregate(tasks, tuned, tuned, tuned)
    (entry,) = out["audit"]
    expected = unit_mean_ci(np.array(shares), seed=0, n_resamples=N_BOOT)
    assert entry["in_label_space"]["method"] == entry["em"]["method"] == "bootstrap"
    assert entry["in_label_space"]["mean"] == pytest.approx(expected["mean"])
    assert entry["in_label_space"]["ci"] == pytest.approx(expected["ci"])
    assert entry["in_label_space"]["n"] == 12


def test_null_where_no_task_has_a_label_space():
    tasks = [free_text("f0", ["a", "b"]), free_text("f1", ["c"])]
    predictions = {"f0": ["a", "b"], "f1": ["c"]}
    out = aggregate(tasks, predictions, predictions, predictions)
    assert out["audit"][0]["in_label_space"] is None
    assert out["baselines"]["untuned"]["in_label_space"] is None
    assert AuditResults.model_validate(out).audit[0].in_label_space is None  # type: ignore[index]


def strip_share(data: Any) -> Any:
    """results.json as written before the share existed."""
    if isinstance(data, dict):
        return {k: strip_share(v) for k, v in data.items() if k != "in_label_space"}
    if isinstance(data, list):
        return [strip_share(v) for v in data]
    return data


def test_old_results_without_it_still_load_and_report_without_the_column(out):
    old = AuditResults.model_validate(strip_share(out))
    assert old.audit is not None and old.audit[0].in_label_space is None
    assert old.baselines is not None and old.baselines.untuned is not None
    assert old.baselines.untuned.in_label_space is None
    view = audit_view(old, [])
    assert IN_LABEL not in view["grid"]["columns"] and not view["label_share"]


def test_the_report_shows_it_beside_exact_match(out):
    view = audit_view(AuditResults.model_validate(out), [])
    for table in (view["grid"], view["baselines"]):
        columns = table["columns"]
        assert columns[columns.index("exact match") + 1] == IN_LABEL
    untuned = next(r for r in view["baselines"]["rows"] if r[0] == "untuned")
    assert untuned[2].startswith("16.7 [")  # three significant figures


def test_tidy_rows_hold_it_where_a_label_space_exists(out):
    rows = [r for r in tidy_rows(out) if r["metric"] == "in_label_space"]
    tuned = {(r["level"], r["name"]): r for r in rows if r["kind"] == "tuned"}
    labelled_rows = {("category", "Textual Entailment"), ("task", "t0"), ("task", "t1")}
    assert set(tuned) == {("overall", ""), *labelled_rows}
    assert tuned[("overall", "")]["value"] == pytest.approx(np.mean(TUNED_SHARES))
    baselines = {r["baseline"] for r in rows if r["kind"] == "baseline"}
    assert baselines == {"untuned", "copy_input"}
