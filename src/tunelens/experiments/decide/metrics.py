"""Per-item scores, confusion matrices and paired comparisons of methods on one test set.

Quality is exact match with the Super-NaturalInstructions normalisation
(:func:`tunelens.measures.text.exact_match`, 0 or 100 per item), so a number
here means what it means in the audit. A prediction counts as a label when its
normalised text equals a label's normalised text; anything else is ``(other)``
in the confusion matrix. Intervals are 95% percentile bootstrap intervals over
test items (:func:`tunelens.measures.stats.mean_ci`); a comparison of two
methods bootstraps the per-item *differences* (the methods answered the same
items, so the pairing removes the items' own difficulty from the interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelens.experiments.decide.costs import OTHER
from tunelens.measures.stats import mean_ci
from tunelens.measures.text import exact_match, normalize_answer


def to_label(prediction: str, labels: Sequence[str]) -> str:
    """The label whose normalised text equals the prediction's, else ``(other)``."""
    norm = normalize_answer(prediction)
    for label in labels:
        if normalize_answer(label) == norm:
            return label
    return OTHER


def item_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Exact match (0 or 100) of each prediction against its references."""
    return np.array(
        [exact_match(p, r) for p, r in zip(predictions, references, strict=True)], dtype=np.float64
    )


def guess_item_scores(references: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """The exact expected exact match of a uniform guess over ``labels``, per item."""
    return np.array(
        [float(np.mean([exact_match(label, refs) for label in labels])) for refs in references],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class Confusion:
    """Counts of (true label, predicted label or ``(other)``); rows follow ``labels``."""

    labels: tuple[str, ...]
    counts: tuple[tuple[float, ...], ...]  # [true][predicted], predicted = labels + (other)

    @property
    def predicted(self) -> tuple[str, ...]:
        return (*self.labels, OTHER)

    @property
    def total(self) -> float:
        return float(sum(sum(row) for row in self.counts))

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "predicted": list(self.predicted),
            "counts": [list(row) for row in self.counts],
        }


def confusion_matrix(
    trues: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> Confusion:
    """Counts per (true, predicted); ``predicted`` holds labels or ``(other)``."""
    labels = tuple(labels)
    columns = {label: j for j, label in enumerate((*labels, OTHER))}
    rows = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(columns) for _ in labels]
    for t, p in zip(trues, predicted, strict=True):
        counts[rows[t]][columns[p]] += 1
    return Confusion(labels, tuple(tuple(row) for row in counts))


def guess_confusion(trues: Sequence[str], labels: Sequence[str]) -> Confusion:
    """Expected counts of a uniform guess: each true row spread evenly over the labels."""
    labels = tuple(labels)
    counts = []
    for label in labels:
        n = sum(1 for t in trues if t == label)
        counts.append(tuple([n / len(labels)] * len(labels) + [0.0]))
    return Confusion(labels, tuple(counts))


def summary(values: Sequence[float] | np.ndarray, *, seed: int, n_boot: int) -> dict[str, Any]:
    """``{"mean", "ci"}`` over items (the results.json shape)."""
    return mean_ci(np.asarray(values, dtype=np.float64), seed=seed, n_resamples=n_boot)


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, seed: int, n_boot: int
) -> dict[str, Any]:
    """Mean of a - b over the same items, with a bootstrap CI of the per-item differences."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.shape} and {b.shape}")
    return mean_ci(a - b, seed=seed, n_resamples=n_boot)


def decision(difference: dict[str, Any]) -> str:
    """'a' when the CI of a - b lies above 0, 'b' when below, else 'undecided'."""
    lo, hi = difference["ci"]
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "undecided"
    if lo > 0:
        return "a"
    if hi < 0:
        return "b"
    return "undecided"


def items_to_resolve(n_items: int, difference: dict[str, Any]) -> int | None:
    """Test items needed for the CI of a difference this size to exclude 0 (normal scaling).

    The half-width shrinks as 1/sqrt(n): n' = n x (half-width / |mean|)^2, rounded
    up. None when the mean difference is 0 (no difference to resolve).
    """
    mean = difference["mean"]
    lo, hi = difference["ci"]
    if mean is None or lo is None or hi is None or not np.isfinite(mean) or mean == 0:
        return None
    half = (hi - lo) / 2
    return int(np.ceil(n_items * (half / abs(mean)) ** 2))
