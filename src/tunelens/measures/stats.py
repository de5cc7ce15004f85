"""Statistics for results.json: paired one-sided Wilcoxon, bootstrap CIs, Holm correction.

Everything is deterministic for a given input and seed (results are part of a
resumable, content-addressed run), and degenerate inputs (all differences
zero, one value, nothing) give defined numbers instead of exceptions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Resamples are drawn in blocks of at most this many values to bound memory.
_BLOCK_VALUES = 2_000_000


@dataclass(frozen=True)
class WilcoxonResult:
    """Paired signed-rank test of x against y (one-sided x > y, or two-sided).

    ``statistic`` is scipy's (the sum of ranks of positive differences, zero
    differences dropped); ``effect`` the matched-pairs rank-biserial correlation
    (T+ - T-) / (T+ + T-) in [-1, 1] on the same ranks; ``n`` the pairs with a
    nonzero difference.
    """

    statistic: float
    p: float
    effect: float
    n: int = 0


def paired_wilcoxon_greater(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> WilcoxonResult:
    """The one-sided paired test that x > y (see :func:`paired_wilcoxon`)."""
    return paired_wilcoxon(x, y, alternative="greater")


def paired_wilcoxon(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    alternative: str = "two-sided",
) -> WilcoxonResult:
    """``scipy.stats.wilcoxon(x, y, alternative=...)`` plus its rank-biserial effect.

    All-zero differences (or no pairs) give p = 1, effect 0, statistic 0 without
    calling scipy (which would warn). NaNs propagate to a NaN result.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of one length, got {x.shape} and {y.shape}")
    d = x - y
    if np.isnan(d).any():
        return WilcoxonResult(
            statistic=float("nan"),
            p=float("nan"),
            effect=float("nan"),
            n=int(np.count_nonzero(d[~np.isnan(d)])),
        )
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return WilcoxonResult(statistic=0.0, p=1.0, effect=0.0, n=0)
    from scipy import stats as _scipy_stats  # lazy: scipy.stats costs ~0.5 s to import

    result = _scipy_stats.wilcoxon(x, y, alternative=alternative)
    ranks = _scipy_stats.rankdata(np.abs(nonzero))
    t_plus, t_minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    effect = (t_plus - t_minus) / (t_plus + t_minus)
    return WilcoxonResult(
        statistic=float(result.statistic),
        p=float(result.pvalue),
        effect=float(effect),
        n=int(nonzero.size),
    )


def _takes_axis(stat: Callable) -> bool:
    try:
        return "axis" in inspect.signature(stat).parameters
    except (TypeError, ValueError):  # builtins and ufuncs without a signature
        return False


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` over ``values``, seeded and deterministic.

    Plain numpy (``numpy.random.default_rng(seed)``, resampling with
    replacement, quantiles of the resampled statistic) rather than
    ``scipy.stats.bootstrap``: the draws are then fixed by the seed alone,
    independent of scipy's version and its BCa/percentile defaults. ``stat`` is
    applied with ``axis=-1`` to a block of resamples when it accepts ``axis``,
    else one resample at a time. No values: (nan, nan); one value or constant
    values: a zero-width interval.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = data.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vectorised = _takes_axis(stat)
    block = max(1, _BLOCK_VALUES // n)
    estimates = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        samples = data[rng.integers(0, n, size=(stop - start, n))]
        if vectorised:
            estimates[start:stop] = stat(samples, axis=-1)
        else:
            estimates[start:stop] = [stat(row) for row in samples]
    alpha = 1.0 - confidence
    low, high = np.quantile(estimates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order, monotone and capped at 1.

    adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j)) for the sorted
    p-values p_(1) <= ... <= p_(m). NaNs stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def mean_ci(
    values: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> dict[str, float | list[float]]:
    """``{"mean": m, "ci": [low, high]}``: the shape results.json uses for an estimate."""
    data = np.asarray(values, dtype=np.float64).ravel()
    mean = float(data.mean()) if data.size else float("nan")
    low, high = bootstrap_ci(
        data, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return {"mean": mean, "ci": [low, high]}


# ---------------------------------------------------------------- clustered data
#
# Pairs that share a demonstration set (several anchors probed on one tuned
# set), or a seed, are not independent. Pooled statistics resample and test
# clusters, not pairs: a cluster bootstrap (clusters drawn with replacement,
# all their pairs kept) and tests on cluster means. Where every cluster holds
# one pair these reduce exactly to the per-pair statistics above.


def _cluster_index(clusters: Sequence[object]) -> tuple[np.ndarray, int]:
    """Integer cluster ids in first-seen order, and the number of clusters."""
    ids: dict[object, int] = {}
    index = np.array([ids.setdefault(c, len(ids)) for c in clusters], dtype=np.int64)
    return index, len(ids)


def cluster_means(values: Sequence[float] | np.ndarray, clusters: Sequence[object]) -> np.ndarray:
    """Mean of ``values`` within each cluster, clusters in first-seen order."""
    data = np.asarray(values, dtype=np.float64).ravel()
    index, n = _cluster_index(clusters)
    if index.size != data.size:
        raise ValueError(f"expected {data.size} cluster labels, got {index.size}")
    sums = np.bincount(index, weights=data, minlength=n)
    return sums / np.bincount(index, minlength=n)


def cluster_bootstrap(
    columns: np.ndarray,
    clusters: Sequence[object],
    stat: Callable[[np.ndarray], np.ndarray],
    n_resamples: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap estimates of ``stat`` over resampled clusters: ``[n_resamples]``.

    ``columns`` is ``[n_pairs, m]``; each resample draws clusters with
    replacement, takes the column means over all pairs of the drawn clusters
    (``[n_resamples, m]``) and applies ``stat`` to them along the last axis.
    """
    data = np.asarray(columns, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    index, n = _cluster_index(clusters)
    if index.size != data.shape[0]:
        raise ValueError(f"expected {data.shape[0]} cluster labels, got {index.size}")
    sums = np.stack([np.bincount(index, weights=col, minlength=n) for col in data.T], axis=1)
    counts = np.bincount(index, minlength=n).astype(np.float64)
    rng = np.random.default_rng(seed)
    estimates = np.empty(n_resamples, dtype=np.float64)
    block = max(1, _BLOCK_VALUES // max(1, n * data.shape[1]))
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        draws = rng.integers(0, n, size=(stop - start, n))
        means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)[:, None]
        estimates[start:stop] = stat(means)
    return estimates


def cluster_mean_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object],
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> dict[str, float | list[float]]:
    """``{"mean", "ci"}`` with a cluster-bootstrap CI (:func:`mean_ci` when clusters are pairs)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    index, n = _cluster_index(clusters)
    if n == data.size:
        return mean_ci(data, seed=seed, n_resamples=n_resamples, confidence=confidence)
    estimates = cluster_bootstrap(data, clusters, lambda m: m[:, 0], n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(estimates, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(data.mean()), "ci": [float(low), float(high)]}


def gain_share(
    patched: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    clusters: Sequence[object],
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """``(mean(patched) - mean(base)) / (mean(target) - mean(base))`` with a cluster-bootstrap CI.

    Resamples where the denominator is 0 are dropped from the interval; with no
    gain at all (the denominator 0 on the data) the share is undefined: mean and
    CI are None.
    """
    columns = np.stack(
        [np.asarray(x, dtype=np.float64).ravel() for x in (patched, base, target)], axis=1
    )
    p, b, t = columns.mean(axis=0)
    if t == b:
        return {"mean": None, "ci": [None, None]}

    def share(means: np.ndarray) -> np.ndarray:
        gain = means[:, 2] - means[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gain != 0, (means[:, 0] - means[:, 1]) / gain, np.nan)

    estimates = cluster_bootstrap(columns, clusters, share, n_resamples, seed)
    estimates = estimates[np.isfinite(estimates)]
    alpha = 1.0 - confidence
    if estimates.size == 0:
        return {"mean": float((p - b) / (t - b)), "ci": [None, None]}
    low, high = np.quantile(estimates, [alpha / 2, 1 - alpha / 2])
    return {"mean": float((p - b) / (t - b)), "ci": [float(low), float(high)]}


# Below this many units (tasks, seeds) a percentile bootstrap covers the truth too rarely
# (about 78-86% at 4-6 tasks, simulated); a t-interval is used instead.
MIN_BOOTSTRAP_UNITS = 10


def t_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Student-t interval of the mean: m -/+ t(n-1) s / sqrt(n). Fewer than 2 values: (nan, nan)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    n = data.size
    if n < 2:
        return float("nan"), float("nan")
    mean = float(data.mean())
    sd = float(data.std(ddof=1))
    if sd == 0.0:
        return mean, mean
    from scipy import stats as _scipy_stats  # lazy: scipy.stats costs ~0.5 s to import

    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
    return mean - half, mean + half


def unit_mean_ci(
    values: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    min_bootstrap: int = MIN_BOOTSTRAP_UNITS,
) -> dict[str, float | int | str | list[float]]:
    """:func:`mean_ci` over units (tasks, seeds) with honest coverage at small n.

    ``{"mean", "ci", "n", "method"}``: a percentile bootstrap from ``min_bootstrap``
    units on, a t-interval below (``method`` says which; ``n`` is shown beside
    the interval in the report).
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size >= min_bootstrap:
        out: dict[str, float | int | str | list[float]] = dict(
            mean_ci(data, seed=seed, n_resamples=n_resamples, confidence=confidence)
        )
        method = "bootstrap"
    else:
        low, high = t_interval(data, confidence)
        out = {"mean": float(data.mean()) if data.size else float("nan"), "ci": [low, high]}
        method = "t"
    out["n"] = int(data.size)
    out["method"] = method
    return out
