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
    """Cosine similarity of a[i, l] and b[i, l]: an [n, layers] array.

    NaN (never 0.0) where a vector is zero or not finite: the cosine is
    undefined there, and 0 would read as "orthogonal"; results.json writes it
    as null.
    """
    a, b = _as_states(a, b)
    dot = np.einsum("nlh,nlh->nl", a, b)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    defined = np.isfinite(norms) & (norms > _EPS)
    return np.where(defined, dot / np.where(defined, norms, 1.0), np.nan)


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


# ---------------------------------------------------------------- calibrated similarity
#
# Raw cosine between hidden states is high by default: a few "rogue" dimensions
# with large means dominate every dot product (Timkey & van Schijndel, EMNLP
# 2021; Ethayarajh 2019). Two corrections, both computed per layer from a
# reference pool of states (in the convergence study: every state of the
# condition, anchor, ICL and IT together):
#
# - centered: subtract the pool's mean state, then cosine;
# - standardized: also divide each dimension by its standard deviation over the
#   pool (z-scores), so no dimension weighs more than another.
#
# A *floor* is the same similarity between mismatched pairs (row i of one
# condition against row j != i of the other), the value two unrelated prompts
# already reach.


def layer_moments(*pools: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean and standard deviation over the rows of every pool: two [layers, hidden]."""
    stacked = np.concatenate([np.asarray(p, dtype=np.float64) for p in pools], axis=0)
    if stacked.ndim != 3 or stacked.shape[0] == 0:
        raise ValueError(f"expected non-empty [n, layers, hidden] pools, got {stacked.shape}")
    return stacked.mean(axis=0), stacked.std(axis=0)


def centered_cosine_per_layer(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Cosine of a[i, l] - mean[l] and b[i, l] - mean[l]: an [n, layers] array."""
    a, b = _as_states(a, b)
    mean = np.asarray(mean, dtype=np.float64)
    return cosine_per_layer(a - mean, b - mean)


def standardized_cosine_per_layer(
    a: np.ndarray, b: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """Cosine of the z-scored states (a - mean) / std per dimension (a constant dimension: 0).

    Where every dimension is constant over the pool (the embeddings of one shared
    last token), the z-scored vectors are zero and the cosine is NaN (undefined).
    """
    a, b = _as_states(a, b)
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    scale = np.where(std > _EPS, 1.0 / np.maximum(std, _EPS), 0.0)
    return cosine_per_layer((a - mean) * scale, (b - mean) * scale)


def mismatched_floor_per_layer(
    a: np.ndarray,
    b: np.ndarray,
    groups: list[str] | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> np.ndarray:
    """Per row i, the mean cosine of a[i] with b[j] over partners j != i: an [n, layers] array.

    Partners are the rows of the same group (task) where row i has any, else
    every other row. With ``mean``, states are centered first (the floor of the
    centered cosine); with ``std`` too, each dimension is z-scored (the floor of
    the standardized cosine). One row alone has no partner: NaN; like
    :func:`cosine_per_layer`, a zero vector makes its cosines NaN.
    """
    a, b = _as_states(a, b)
    if mean is not None:
        m = np.asarray(mean, dtype=np.float64)
        a, b = a - m, b - m
    if std is not None:
        sd = np.asarray(std, dtype=np.float64)
        scale = np.where(sd > _EPS, 1.0 / np.maximum(sd, _EPS), 0.0)
        a, b = a * scale, b * scale
    n = a.shape[0]
    na = np.linalg.norm(a, axis=-1)  # [n, layers]
    nb = np.linalg.norm(b, axis=-1)
    dots = np.einsum("ilh,jlh->lij", a, b)  # [layers, n, n]
    norms = np.einsum("il,jl->lij", na, nb)
    defined = np.isfinite(norms) & (norms > _EPS)
    cos = np.where(defined, dots / np.where(defined, norms, 1.0), np.nan)
    floor = np.full((n, a.shape[1]), np.nan)
    labels = groups if groups is not None else [""] * n
    if len(labels) != n:
        raise ValueError(f"expected {n} group labels, got {len(labels)}")
    for i in range(n):
        same = [j for j in range(n) if j != i and labels[j] == labels[i]]
        partners = same or [j for j in range(n) if j != i]
        if partners:
            floor[i] = cos[:, i, partners].mean(axis=1)
    return floor


# ---------------------------------------------------------------- debiased CKA


def _unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """The unbiased HSIC estimator of Song et al. (JMLR 2012) on two n x n Gram matrices.

    HSIC_1 = [tr(K~ L~) + (1' K~ 1)(1' L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1' K~ L~ 1] / (n(n-3)),
    with K~, L~ the Gram matrices with zeroed diagonals. Needs n >= 4.
    """
    n = k.shape[0]
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    ones_k, ones_l = k.sum(axis=0), l_.sum(axis=0)
    trace = float(np.sum(k * l_))
    total = float(ones_k.sum() * ones_l.sum()) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * float(ones_k @ ones_l)
    return (trace + total - cross) / (n * (n - 3))


def debiased_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012; Kornblith et al. 2019).

    The biased estimator (:func:`linear_cka`) of two *independent* representations
    reads about 0.2 at n = 32 items; this one is centred on 0 there. It can be
    slightly negative. NaN for fewer than 4 items, or when a self-similarity
    estimate is not positive (no variance across items).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected [n, features] arrays with the same n, got {x.shape} and {y.shape}"
        )
    if x.shape[0] < 4:
        return float("nan")
    xc = x - x.mean(axis=0, keepdims=True)
    yc = y - y.mean(axis=0, keepdims=True)
    if _no_variance(x, xc) or _no_variance(y, yc):
        return float("nan")
    k, l_ = xc @ xc.T, yc @ yc.T
    hxy, hxx, hyy = _unbiased_hsic(k, l_), _unbiased_hsic(k, k), _unbiased_hsic(l_, l_)
    if hxx <= 0 or hyy <= 0:
        return float("nan")
    return float(hxy / np.sqrt(hxx * hyy))


def debiased_linear_cka_per_layer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Debiased linear CKA across the n items at each layer: [layers]."""
    a, b = _as_states(a, b)
    return np.array([debiased_linear_cka(a[:, layer], b[:, layer]) for layer in range(a.shape[1])])
