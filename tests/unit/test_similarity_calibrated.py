"""Centered / standardized cosine, mismatched floor and debiased CKA against direct numpy."""

from __future__ import annotations

import numpy as np
import pytest

from tunelens.measures.similarity import (
    centered_cosine_per_layer,
    debiased_linear_cka,
    debiased_linear_cka_per_layer,
    layer_moments,
    linear_cka,
    mismatched_floor_per_layer,
    standardized_cosine_per_layer,
)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def direct_unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), eq. (5), written with explicit loops over the zero-diagonal terms."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l_ - np.diag(np.diag(l_))
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2 / (n - 2) * (one @ kt @ lt @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def direct_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    k, l_ = x @ x.T, y @ y.T
    return direct_unbiased_hsic(k, l_) / np.sqrt(
        direct_unbiased_hsic(k, k) * direct_unbiased_hsic(l_, l_)
    )


def test_centered_and_standardized_cosine_match_direct_numpy():
    rng = np.random.default_rng(0)
    # A rogue dimension: dimension 0 has a huge shared offset, so raw cosine is near 1.
    a = rng.normal(size=(6, 2, 5))
    b = rng.normal(size=(6, 2, 5))
    c = rng.normal(size=(6, 2, 5))
    a[..., 0] += 50
    b[..., 0] += 50
    c[..., 0] += 50
    mean, std = layer_moments(a, b, c)
    pool = np.concatenate([a, b, c])
    centered = centered_cosine_per_layer(a, b, mean)
    standardized = standardized_cosine_per_layer(a, b, mean, std)
    for i in range(6):
        for layer in range(2):
            mu = pool[:, layer].mean(axis=0)
            sd = pool[:, layer].std(axis=0)
            u, v = a[i, layer] - mu, b[i, layer] - mu
            assert centered[i, layer] == pytest.approx(_cos(u, v), abs=1e-12)
            assert standardized[i, layer] == pytest.approx(_cos(u / sd, v / sd), abs=1e-12)
    raw = np.array([[_cos(a[i, 0], b[i, 0])] for i in range(6)])
    assert raw.min() > 0.99 and abs(centered[:, 0].mean()) < 0.6


def test_standardized_cosine_ignores_constant_dimension():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 1, 3)), rng.normal(size=(4, 1, 3))
    a[..., 2] = b[..., 2] = 7.0
    mean, std = layer_moments(a, b)
    got = standardized_cosine_per_layer(a, b, mean, std)
    sd = np.concatenate([a, b])[:, 0, :2].std(axis=0)
    mu = np.concatenate([a, b])[:, 0, :2].mean(axis=0)
    for i in range(4):
        expected = _cos((a[i, 0, :2] - mu) / sd, (b[i, 0, :2] - mu) / sd)
        assert got[i, 0] == pytest.approx(expected, abs=1e-12)


def test_mismatched_floor_same_task_partners_else_all():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 2, 4)), rng.normal(size=(5, 2, 4))
    groups = ["t1", "t1", "t1", "t2", "t3"]
    mean, _ = layer_moments(a, b)
    got = mismatched_floor_per_layer(a, b, groups, mean=mean)
    for i in range(5):
        same = [j for j in range(5) if j != i and groups[j] == groups[i]]
        partners = same or [j for j in range(5) if j != i]
        for layer in range(2):
            expected = np.mean(
                [_cos(a[i, layer] - mean[layer], b[j, layer] - mean[layer]) for j in partners]
            )
            assert got[i, layer] == pytest.approx(expected, abs=1e-12)
    raw = mismatched_floor_per_layer(a, b)
    assert raw[0, 0] == pytest.approx(np.mean([_cos(a[0, 0], b[j, 0]) for j in range(1, 5)]))


@pytest.mark.parametrize("n,d1,d2", [(10, 20, 30), (40, 6, 4)])
def test_debiased_cka_matches_direct_formula(n, d1, d2):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d1))
    y = x[:, :1] * 2 + rng.normal(size=(n, d2))
    assert debiased_linear_cka(x, y) == pytest.approx(direct_debiased_cka(x, y), rel=1e-9)


def test_cka_of_a_representation_with_itself_is_one():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 7))
    assert debiased_linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    states = rng.normal(size=(12, 3, 7))
    np.testing.assert_allclose(debiased_linear_cka_per_layer(states, states), 1.0, atol=1e-12)


def test_debiased_cka_of_independent_gaussians_is_centred_on_zero():
    """At n = 32 the biased estimator reads about 0.2 on independent data; the debiased one ~0.

    (The biased reading grows with the feature count: 0.2 at 8 features, 0.5 at 32.)
    """
    rng = np.random.default_rng(5)
    biased, debiased = [], []
    for _ in range(50):
        x, y = rng.normal(size=(32, 8)), rng.normal(size=(32, 8))
        biased.append(linear_cka(x, y))
        debiased.append(debiased_linear_cka(x, y))
    assert abs(np.mean(debiased)) < 0.03
    assert 0.15 < np.mean(biased) < 0.25


def test_debiased_cka_needs_four_items():
    assert np.isnan(debiased_linear_cka(np.ones((3, 2)), np.ones((3, 2))))


def test_standardized_floor_matches_direct_numpy():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(4, 1, 3)) * [1, 10, 100], rng.normal(size=(4, 1, 3))
    mean, std = layer_moments(a, b)
    got = mismatched_floor_per_layer(a, b, mean=mean, std=std)
    z = lambda v: (v - mean[0]) / std[0]  # noqa: E731
    for i in range(4):
        expected = np.mean([_cos(z(a[i, 0]), z(b[j, 0])) for j in range(4) if j != i])
        assert got[i, 0] == pytest.approx(expected, abs=1e-12)
