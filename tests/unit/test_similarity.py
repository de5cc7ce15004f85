"""Cosine per layer and linear CKA against direct formulas and CKA's invariances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from tunelens.measures.similarity import cosine_per_layer, linear_cka, linear_cka_per_layer


def direct_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. for linear CKA, written out with a centring matrix."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = np.trace(k @ h @ l_ @ h)
    return hsic / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h))


def test_cosine_per_layer_matches_loop_and_shape():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3, 8)), rng.normal(size=(5, 3, 8))
    got = cosine_per_layer(a, b)
    assert got.shape == (5, 3)
    for i in range(5):
        for layer in range(3):
            u, v = a[i, layer], b[i, layer]
            assert got[i, layer] == pytest.approx(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_cosine_self_is_one_opposite_is_minus_one_zero_or_nonfinite_vector_is_nan():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 2, 6)).astype(np.float32)
    np.testing.assert_allclose(cosine_per_layer(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(cosine_per_layer(a, -2 * a), -1.0, atol=1e-12)
    b = a.copy()
    b[0, 1] = 0.0
    b[1, 0, 2] = np.inf
    b[2, 1, 3] = np.nan
    got = cosine_per_layer(a, b)
    # Undefined, never reported as 0.0 ("orthogonal"); results.json writes NaN as null.
    assert np.isnan(got[0, 1]) and np.isnan(got[1, 0]) and np.isnan(got[2, 1])
    assert np.isfinite(got[3]).all()


def test_cosine_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        cosine_per_layer(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


@pytest.mark.parametrize("n,d1,d2", [(10, 20, 30), (50, 6, 4)])  # Gram path and feature path
def test_cka_matches_direct_formula(n, d1, d2):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, d1))
    y = x[:, :1] * 2 + rng.normal(size=(n, d2))
    assert linear_cka(x, y) == pytest.approx(direct_cka(x, y), rel=1e-10)


@pytest.mark.parametrize("n,d", [(8, 16), (40, 5)])
def test_cka_self_is_one_and_invariances(n, d):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, d)) + x
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(d, random_state=4)
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-12)  # orthogonal transform
    assert linear_cka(x * 7.5, y * 0.01) == pytest.approx(base, abs=1e-12)  # isotropic scaling
    assert linear_cka(x + 3.0, y) == pytest.approx(base, abs=1e-12)  # translation (centred)
    assert 0.0 <= base <= 1.0


def test_cka_without_variance_is_nan():
    x = np.ones((5, 3))
    assert np.isnan(linear_cka(x, np.random.default_rng(0).normal(size=(5, 3))))


def test_cka_per_layer():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(12, 3, 7))
    b = rng.normal(size=(12, 3, 7))
    b[:, 0] = a[:, 0] * 3
    got = linear_cka_per_layer(a, b)
    assert got.shape == (3,)
    assert got[0] == pytest.approx(1.0)
    for layer in range(3):
        assert got[layer] == pytest.approx(direct_cka(a[:, layer], b[:, layer]))
