"""Representation similarity per layer: cosine per item and linear CKA across items.

Cosine compares two representations of the *same* prompt (ICL vs IT on one
anchor); CKA compares the *geometry* of a whole set of anchors under two
conditions, invariant to rotations and isotropic scaling of either space
(Kornblith et al., "Similarity of Neural Network Representations Revisited",
ICML 2019). Both compute in float64 so that results do not depend on the
dtype the states were captured in.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _as_states(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"expected two [n, layers, hidden] arrays of one shape, got {a.shape} and {b.shape}"
        )
    return a, b


def cosine_per_layer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of a[i, l] and b[i, l]: an [n, layers] array (0 where a vector is 0)."""
    a, b = _as_states(a, b)
    dot = np.einsum("nlh,nlh->nl", a, b)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(norms > _EPS, dot / np.maximum(norms, _EPS), 0.0)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two [n, features] representations of the same n items.

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc;
    computed through the n x n Gram matrices when n is smaller than the feature
    count (the same number, fewer operations). NaN when either side has no
    variance across items (CKA is undefined there, and 0 would be a false reading).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected [n, features] arrays with the same n, got {x.shape} and {y.shape}"
        )
    xc = x - x.mean(axis=0, keepdims=True)
    yc = y - y.mean(axis=0, keepdims=True)
    if x.shape[0] < min(x.shape[1], y.shape[1]):
        k, l_ = xc @ xc.T, yc @ yc.T
        cross, norm_x, norm_y = np.sum(k * l_), np.linalg.norm(k), np.linalg.norm(l_)
    else:
        cross = np.linalg.norm(yc.T @ xc) ** 2
        norm_x, norm_y = np.linalg.norm(xc.T @ xc), np.linalg.norm(yc.T @ yc)
    if _no_variance(x, xc) or _no_variance(y, yc):
        return float("nan")
    return float(cross / (norm_x * norm_y))


def _no_variance(raw: np.ndarray, centred: np.ndarray) -> bool:
    """True when centring leaves only rounding noise (relative to the data's own scale)."""
    total = float(np.sum(raw * raw))
    return total == 0.0 or float(np.sum(centred * centred)) <= 1e-20 * total


def linear_cka_per_layer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Linear CKA across the n items at each layer of two [n, layers, hidden] arrays: [layers]."""
    a, b = _as_states(a, b)
    return np.array([linear_cka(a[:, layer], b[:, layer]) for layer in range(a.shape[1])])
