"""The audit's verdict rule, against numbers computed here independently.

A format share is reported only where the tuning gain's paired interval over
tasks excludes zero; otherwise results say "tuning gain not significant" with
the gain and its interval. Intervals over fewer than 10 tasks are t-intervals.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tunelens.api import Cell
from tunelens.experiments.audit import NOT_SIGNIFICANT, AuditExperiment
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.tasks.types import Instance, Task


def make_tasks(n: int) -> list[Task]:
    return [
        Task(
            name=f"t{i}",
            definition='Answer "yes" or "no".',
            instances=(Instance(f"t{i}-0", f"x{i}", ("yes",)), Instance(f"t{i}-1", "y", ("no",))),
            categories=("Textual Entailment",) if i % 2 else ("Title Generation",),
            labels=("no", "yes"),
        )
        for i in range(n)
    ]


def per_task(values) -> dict[str, dict[str, float]]:
    return {f"t{i}": {"em": float(v), "rouge_l": float(v)} for i, v in enumerate(values)}


TRAINING = {
    "effective_batch_size": 16,
    "epochs": 2,
    "steps": 10,
    "learning_rate": 0.003,
    "seed": 0,
    "template": "tk",
}


def aggregate(tasks, untuned, original, simplified, guess):
    section = AuditSpec(
        definitions=["original", "simplified"],
        examples=["original"],
        eval_encodings=["definition_only"],
        bootstrap=500,
    )
    exp = AuditExperiment()
    data = {"test": tasks}
    results = []

    def baseline(which, result):
        params = {"baseline": which}
        results.append((Cell("audit", f"baseline {which}", params, 0, {}, "4", data), result))

    baseline("untuned", {"evaluations": {"definition_only": {"per_task": per_task(untuned)}}})
    baseline(
        "random",
        {
            "evaluations": {
                "any": {"per_task": per_task(guess), "expected_per_task": per_task(guess)}
            }
        },
    )
    for definition, values in (("original", original), ("simplified", simplified)):
        params = {"definition": definition, "examples": "original", "instances_per_task": 5}
        result = {
            "evaluations": {"definition_only": {"per_task": per_task(values)}},
            "training": TRAINING,
        }
        results.append((Cell("audit", definition, params, 0, {}, "4", data), result))
    return exp.aggregate(section, results)


def t_ci(d: np.ndarray) -> list[float]:
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return [d.mean() - half, d.mean() + half]


def test_a_significant_gain_gets_a_share_and_its_interval():
    rng = np.random.default_rng(0)
    n = 6
    untuned = rng.uniform(20, 40, n)
    original = untuned + 30 + rng.normal(0, 3, n)
    simplified = untuned + 12 + rng.normal(0, 3, n)
    guess = np.full(n, 50.0)
    out = aggregate(make_tasks(n), untuned, original, simplified, guess)
    row = out["audit_format_share"][0]
    gain = row["tuning_gain"]["em"]
    assert gain["n"] == n and gain["method"] == "t"
    assert gain["mean"] == pytest.approx((original - untuned).mean())
    assert gain["ci"] == pytest.approx(t_ci(original - untuned))
    share = row["simplified"]["em"]
    assert share["verdict"] == "share"
    expected = (simplified.mean() - untuned.mean()) / (original.mean() - untuned.mean())
    assert share["mean"] == pytest.approx(expected)
    lo, hi = share["ci"]
    assert lo < expected < hi  # BCa over 6 tasks
    (verdict,) = out["audit_verdict"]
    assert verdict["significant"] and "simplified" in verdict["text"]
    # Manifest per condition and headline metric per category.
    entry = out["audit"][0]
    assert entry["training"] == TRAINING
    assert entry["evaluation"]["encoding"] == "definition_only"
    assert entry["evaluation"]["n_positive"] == 0
    cats = entry["per_category"]
    assert cats["Textual Entailment"]["headline_metric"] == "em"
    assert cats["Title Generation"]["headline_metric"] == "rouge_l"
    assert cats["Textual Entailment"]["em"]["n"] == 3


def test_a_gain_whose_interval_spans_zero_gets_no_ratio():
    n = 8
    untuned = np.array([50, 60, 40, 70, 55, 45, 65, 35], dtype=float)
    original = untuned + np.array([4, -3, 2, -1, 3, -4, 1, 0], dtype=float)
    simplified = untuned + 5
    out = aggregate(make_tasks(n), untuned, original, simplified, np.full(n, 50.0))
    row = out["audit_format_share"][0]
    for name in ("simplified", "random_guess"):
        share = row[name]["em"]
        assert share["mean"] is None and share["ci"] == [None, None]
        assert share["verdict"] == NOT_SIGNIFICANT
        assert share["gain"]["mean"] == pytest.approx(0.25)
        assert share["gain"]["ci"] == pytest.approx(t_ci(original - untuned))
        assert share["gain"]["ci"][0] < 0 < share["gain"]["ci"][1]
    (verdict,) = out["audit_verdict"]
    assert not verdict["significant"]
    assert NOT_SIGNIFICANT in verdict["text"] and "+0.25 EM" in verdict["text"]
    assert "n = 8" in verdict["text"]
    # The whole interval lies within +/- 5 EM: decided as "no gain of practical size".
    assert verdict["decided"] and "no tuning gain of practical size" in verdict["text"]


def test_a_wide_interval_says_how_many_tasks_would_decide_it():
    n = 8
    untuned = np.full(n, 50.0)
    original = untuned + np.array([20, -15, 10, -5, 15, -20, 12, -9], dtype=float)
    out = aggregate(make_tasks(n), untuned, original, untuned + 1, np.full(n, 50.0))
    (verdict,) = out["audit_verdict"]
    assert not verdict["significant"] and not verdict["decided"]
    lo, hi = t_ci(original - untuned)
    gain = (original - untuned).mean()
    need = int(np.ceil(n * ((hi - lo) / 2 / abs(gain)) ** 2 * 1.1))
    assert f"roughly {need} tasks" in verdict["text"]
