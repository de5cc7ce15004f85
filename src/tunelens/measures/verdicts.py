"""The format share of a tuning gain and how it reads: the one home of what the audit and
decide both say about "is the tuning gain only the output format?".

* :func:`format_share`: (condition - untuned) / (original - untuned) over paired units
  (tasks for the audit, test items for decide), with its bootstrap interval;
* :func:`share_reading`: a share whose interval lies above :data:`MOSTLY_FORMAT` reads
  "mostly format", below :data:`MORE_THAN_FORMAT` "more than the format"; in between,
  or when the tuning gain itself is within noise, "undecided".

Each experiment decides *when* a share is shown (the audit only where the tuning gain is
significant, decide with its own rule); both compute and word it here, so the two never
drift apart and neither experiment imports the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tunelens.measures.stats import MIN_BOOTSTRAP_UNITS

__all__ = [
    "MORE_THAN_FORMAT",
    "MOSTLY_FORMAT",
    "NEGLIGIBLE_GAIN",
    "difference_verdict",
    "format_share",
    "negligible_gain",
    "ratio_ci",
    "share_reading",
    "significant",
    "units_to_decide",
]

MOSTLY_FORMAT = 0.8
MORE_THAN_FORMAT = 0.5
# A paired difference whose interval lies within +/- this many EM points is read as
# "no gap of practical size" (a decided answer, though the interval spans zero).
NEGLIGIBLE_GAIN = 5.0


def _finite(*values: Any) -> bool:
    return all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values
    )


def significant(difference: Mapping[str, Any]) -> bool:
    """Whether a paired interval excludes zero."""
    lo, hi = difference["ci"]
    return bool(_finite(lo, hi) and (lo > 0 or hi < 0))


def negligible_gain(difference: Mapping[str, Any], margin: float | None = None) -> bool:
    """Whether a paired interval lies within +/- ``margin`` EM points (no practical gap)."""
    margin = NEGLIGIBLE_GAIN if margin is None else margin
    lo, hi = difference["ci"]
    return bool(_finite(lo, hi) and -margin <= lo and hi <= margin)


def units_to_decide(difference: Mapping[str, Any]) -> int | None:
    """Roughly how many units (tasks) at this mean and spread would make the interval
    exclude zero: the half-width shrinks as 1/sqrt(n), plus 10% to spare."""
    lo, hi = difference["ci"]
    mean, n = difference["mean"], difference.get("n", 0)
    if not _finite(lo, hi, mean) or not n or abs(mean) < 1e-9:
        return None
    half = (hi - lo) / 2
    return int(math.ceil(n * (half / abs(mean)) ** 2 * 1.1))


def difference_verdict(difference: Mapping[str, Any], margin: float | None = None) -> str:
    """'lower' | 'higher' (the paired interval excludes zero), 'equivalent' (it lies
    within +/- ``margin``: no gap of practical size), else 'undecided'."""
    if significant(difference):
        return "lower" if difference["ci"][1] < 0 else "higher"
    return "equivalent" if negligible_gain(difference, margin) else "undecided"


def share_reading(share: Mapping[str, Any], gain_decided: bool) -> str:
    """'mostly format' | 'more than the format' | 'undecided' (see the module rules)."""
    lo, hi = share.get("ci", [None, None])
    if not gain_decided or not (_finite(lo) and _finite(hi)):
        return "undecided"
    if lo > MOSTLY_FORMAT:
        return "mostly format"
    if hi < MORE_THAN_FORMAT:
        return "more than the format"
    return "undecided"


def ratio_ci(c: np.ndarray, o: np.ndarray, u: np.ndarray, n_boot: int, seed: int) -> list[Any]:
    """Paired interval of mean(c - u) / mean(o - u) over units: percentile, or BCa below 10."""
    n = len(c)

    def ratio(idx: np.ndarray) -> float:
        gain = o[idx].mean() - u[idx].mean()
        return float((c[idx].mean() - u[idx].mean()) / gain) if abs(gain) > 1e-9 else float("nan")

    if n >= MIN_BOOTSTRAP_UNITS:
        rng = np.random.default_rng(seed)
        draws = np.array([ratio(rng.integers(0, n, n)) for _ in range(n_boot)])
        draws = draws[np.isfinite(draws)]
        if not len(draws):
            return [None, None]
        return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    if n < 3:
        return [None, None]
    from scipy import stats as _scipy_stats

    def stat(ci_: np.ndarray, oi: np.ndarray, ui: np.ndarray, axis: int = -1) -> np.ndarray:
        gain = oi.mean(axis=axis) - ui.mean(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (ci_.mean(axis=axis) - ui.mean(axis=axis)) / gain

    try:
        res = _scipy_stats.bootstrap(
            (c, o, u),
            stat,
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            method="BCa",
            random_state=np.random.default_rng(seed),
        )
    except Exception:  # noqa: BLE001 - degenerate resamples: no interval rather than a crash
        return [None, None]
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return [lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None]


def format_share(
    cond: dict[str, dict[str, float]],
    original: dict[str, dict[str, float]],
    untuned: dict[str, dict[str, float]],
    names: list[str],
    metric: str,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The raw share (condition - untuned) / (original - untuned) over units, paired interval.

    ``{"mean", "ci", "tuning_gain"}`` whatever the gain: the caller decides whether the
    gain is large enough to read a share of it (the audit gates it on significance).
    """
    c = np.array([cond[n][metric] for n in names])
    o = np.array([original[n][metric] for n in names])
    u = np.array([untuned[n][metric] for n in names])
    gain = float(o.mean() - u.mean()) if len(names) else float("nan")
    point = float((c.mean() - u.mean()) / gain) if abs(gain) > 1e-9 else float("nan")
    return {
        "mean": point if math.isfinite(point) else None,
        "ci": ratio_ci(c, o, u, n_boot, seed),
        "tuning_gain": gain,
    }
