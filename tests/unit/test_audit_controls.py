"""Each control against tuning on the original definitions (results.json ``audit_controls``).

The paired difference control - original over tasks is checked against scipy's own
bootstrap and t-interval on the same differences, and the verdict against the rule the
issue states: decided when the interval excludes zero or lies within +/- 5 EM.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from tests.unit.test_audit_verdict import aggregate, make_tasks, t_ci

from tunelens.experiments.audit.report import audit_view, control_lines
from tunelens.experiments.audit.results import AuditResults
from tunelens.measures.verdicts import difference_verdict


def controls_of(n_tasks: int, original: np.ndarray, simplified: np.ndarray) -> dict:
    results = aggregate(
        make_tasks(n_tasks),
        untuned=np.zeros(n_tasks),
        original=original,
        simplified=simplified,
        guess=np.full(n_tasks, 50.0),
    )
    (row,) = results["audit_controls"]
    (comparison,) = row["controls"]
    assert comparison["control"] == "simplified"
    return {**results, "row": row, "comparison": comparison}


def scipy_percentile_ci(d: np.ndarray) -> tuple[float, float]:
    res = stats.bootstrap(
        (d,), np.mean, n_resamples=20000, method="percentile", random_state=np.random.default_rng(1)
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def test_a_paired_drop_is_lower_although_the_task_scores_overlap() -> None:
    rng = np.random.default_rng(0)
    original = rng.uniform(20, 100, 40)  # tasks differ far more than the conditions do
    simplified = original - 8 + rng.normal(0, 2, 40)
    out = controls_of(40, original, simplified)
    em = out["comparison"]["difference"]["em"]
    d = simplified - original
    assert em["mean"] == pytest.approx(d.mean())
    assert em["n"] == 40 and em["method"] == "bootstrap"
    lo, hi = scipy_percentile_ci(d)
    # Two bootstraps of 500 and 20,000 resamples: their ends agree to a fraction of the spread.
    assert em["ci"][0] == pytest.approx(lo, abs=0.25 * d.std())
    assert em["ci"][1] == pytest.approx(hi, abs=0.25 * d.std())
    assert out["comparison"]["verdict"] == "lower" and out["comparison"]["decided"]
    # Unpaired (Welch), the same scores leave the difference undecided: pairing decides it.
    welch = stats.ttest_ind(simplified, original, equal_var=False).confidence_interval()
    assert welch.low < 0 < welch.high


def test_a_small_noisy_difference_is_equivalent_within_five_points() -> None:
    rng = np.random.default_rng(1)
    original = rng.uniform(20, 100, 40)
    simplified = original + rng.normal(0, 3, 40)
    out = controls_of(40, original, simplified)
    lo, hi = out["comparison"]["difference"]["em"]["ci"]
    assert -5 <= lo < 0 < hi <= 5
    assert out["comparison"]["verdict"] == "equivalent"
    assert out["comparison"]["tasks_to_decide"] is None
    assert "no gap larger than 5 EM" in out["comparison"]["text"]


def test_a_wide_interval_is_undecided_and_says_how_many_tasks_would_decide() -> None:
    rng = np.random.default_rng(2)
    original = rng.uniform(20, 100, 40)
    simplified = original - 3 + rng.normal(0, 25, 40)
    out = controls_of(40, original, simplified)
    em = out["comparison"]["difference"]["em"]
    assert em["ci"][0] < -5 and em["ci"][1] > 0
    assert out["comparison"]["verdict"] == "undecided" and not out["comparison"]["decided"]
    assert out["comparison"]["tasks_to_decide"] > 40


def test_under_ten_tasks_the_interval_is_a_t_interval() -> None:
    original = np.array([40.0, 60, 80, 20, 50, 70])
    simplified = original - np.array([9.0, 11, 8, 12, 10, 10])
    em = controls_of(6, original, simplified)["comparison"]["difference"]["em"]
    assert em["method"] == "t"
    assert em["ci"] == pytest.approx(t_ci(simplified - original))


@pytest.mark.parametrize(
    ("ci", "verdict"),
    [
        ([-9.0, -1.0], "lower"),
        ([-4.0, -1.0], "lower"),  # excludes zero: lower, though also within the margin
        ([1.0, 7.0], "higher"),
        ([-4.9, 4.9], "equivalent"),
        ([-5.1, 2.0], "undecided"),
        ([None, None], "undecided"),
    ],
)
def test_the_verdict_rule(ci: list, verdict: str) -> None:
    assert difference_verdict({"mean": 0.0, "ci": ci, "n": 40}) == verdict


def test_the_report_shows_each_control_and_its_verdict() -> None:
    rng = np.random.default_rng(0)
    original = rng.uniform(20, 100, 40)
    out = controls_of(40, original, original - 8 + rng.normal(0, 2, 40))
    parsed = AuditResults.model_validate(out)
    view = audit_view(parsed, [])
    (row,) = view["controls"]["rows"]
    assert row[0] == "definition only" and row[3] == "simplified definition"
    assert row[4].startswith("-") and "(n 40)" in row[4] and row[5] == "lower"
    (line,) = control_lines(out, ["ipt", "seed"])
    assert "simplified definition" in line[1] and ": lower" in line[1]
