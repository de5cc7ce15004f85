"""Statistics for results.json: paired one-sided Wilcoxon, bootstrap CIs, Holm correction.

Everything is deterministic for a given input and seed (results are part of a
resumable, content-addressed run), and degenerate inputs (all differences
zero, one value, nothing) give defined numbers instead of exceptions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
