"""Wilcoxon against scipy and by hand, Holm by hand, bootstrap determinism and coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tunelens.measures.stats import (
    WilcoxonResult,
    bootstrap_ci,
    holm,
    mean_ci,
    paired_wilcoxon_greater,
)


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    got = paired_wilcoxon_greater(x, y)
    ref = stats.wilcoxon(x, y, alternative="greater")
    assert got.statistic == ref.statistic
    assert got.p == ref.pvalue
    assert got.n == 20


def test_wilcoxon_effect_by_hand():
    x = np.array([5.0, 3.0, 4.0, 1.0, 2.0, 7.0])
    y = np.array([1.0, 4.0, 2.0, 1.0, 4.5, 1.0])
    # differences 4, -1, 2, 0, -2.5, 6; zero dropped -> |d| = 4, 1, 2, 2.5, 6
    # ranks: 1 -> 1, 2 -> 2, 2.5 -> 3, 4 -> 4, 6 -> 5; T+ = 4 + 2 + 5 = 11, T- = 1 + 3 = 4
    got = paired_wilcoxon_greater(x, y)
    assert got.statistic == 11.0
    assert got.effect == pytest.approx((11 - 4) / 15)
    assert got.n == 5
    assert got.p == stats.wilcoxon(x, y, alternative="greater").pvalue


def test_wilcoxon_effect_with_ties():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 1.0, 4.0, 3.0])  # d = 1, 1, -1, 1: all ranks 2.5
    got = paired_wilcoxon_greater(x, y)
    assert got.effect == pytest.approx((7.5 - 2.5) / 10)


def test_wilcoxon_all_zero_differences():
    x = np.array([0.5, 0.25, 0.75])
    assert paired_wilcoxon_greater(x, x.copy()) == WilcoxonResult(0.0, 1.0, 0.0, 0)


def test_wilcoxon_planted_effect_and_null():
    rng = np.random.default_rng(42)
    y = rng.normal(size=30)
    x = y + 0.3 + rng.normal(scale=0.3, size=30)
    planted = paired_wilcoxon_greater(x, y)
    assert planted.p < 0.01
    assert planted.effect > 0.5
    null = paired_wilcoxon_greater(rng.normal(size=30), rng.normal(size=30))
    assert null.p > 0.05
    # one-sided: the reverse direction is not significant
    assert paired_wilcoxon_greater(y, x).p > 0.99


def test_wilcoxon_rejects_unpaired():
    with pytest.raises(ValueError):
        paired_wilcoxon_greater([1.0, 2.0], [1.0])


def test_holm_hand_worked_example():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1 = 0.5)
    got = holm([0.03, 0.5, 0.01, 0.02])
    np.testing.assert_allclose(got, [0.06, 0.5, 0.04, 0.06])


def test_holm_monotone_and_capped():
    got = holm([0.4, 0.3, 0.9, 0.001])
    # sorted: 0.001*4, 0.3*3 = 0.9, 0.4*2 = 0.8 -> 0.9 (monotone), 0.9*1 = 0.9
    np.testing.assert_allclose(got, [0.9, 0.9, 0.9, 0.004])
    assert (holm([0.6, 0.7]) == 1.0).all()
    assert holm([]).shape == (0,)
    nan_case = holm([0.01, float("nan"), 0.04])
    assert np.isnan(nan_case[1])
    np.testing.assert_allclose(nan_case[[0, 2]], [0.02, 0.04])


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(1).normal(loc=2.0, size=40)
    low, high = bootstrap_ci(values, seed=3)
    assert low < values.mean() < high
    assert bootstrap_ci(values, seed=3) == (low, high)
    assert bootstrap_ci(values, seed=4) != (low, high)


def test_bootstrap_ci_narrows_with_n():
    rng = np.random.default_rng(2)
    small, large = rng.normal(size=20), rng.normal(size=500)
    width = [np.subtract(*bootstrap_ci(v, seed=0)[::-1]) for v in (small, large)]
    assert width[1] < width[0] / 2


def test_bootstrap_ci_non_vectorised_stat_and_edge_cases():
    values = np.arange(10.0)
    low, high = bootstrap_ci(values, stat=lambda v: float(np.max(v)), n_resamples=200, seed=0)
    assert low <= high <= 9.0
    assert bootstrap_ci([3.0], seed=0) == (3.0, 3.0)
    assert all(np.isnan(bootstrap_ci([], seed=0)))
    np.testing.assert_allclose(bootstrap_ci(np.full(7, 0.25)), (0.25, 0.25))


def test_mean_ci_shape():
    out = mean_ci([1.0, 2.0, 3.0, 4.0], seed=0, n_resamples=500)
    assert out["mean"] == 2.5
    assert len(out["ci"]) == 2 and out["ci"][0] <= 2.5 <= out["ci"][1]
    assert mean_ci([1.0, 2.0, 3.0, 4.0], seed=0, n_resamples=500) == out
