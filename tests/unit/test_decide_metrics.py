"""Per-item scores, confusion matrices, paired decisions and the items-to-resolve estimate."""

from __future__ import annotations

import numpy as np
import pytest

from tunelens.experiments.decide.costs import OTHER
from tunelens.experiments.decide.metrics import (
    confusion_matrix,
    decision,
    guess_confusion,
    guess_item_scores,
    item_scores,
    items_to_resolve,
    paired_difference,
    to_label,
)


def test_to_label_uses_the_superni_normalisation():
    labels = ["Yes", "No"]
    assert to_label("yes.", labels) == "Yes"
    assert to_label("  NO ", labels) == "No"
    assert to_label("maybe", labels) == OTHER
    assert to_label("", labels) == OTHER


def test_scores_and_guess_scores():
    refs = [("yes",), ("no",), ("no", "nope")]
    assert item_scores(["yes", "yes", "nope"], refs).tolist() == [100, 0, 100]
    # a uniform guess over 4 labels hits a single reference 1 time in 4
    assert guess_item_scores([("a",), ("b",)], ["a", "b", "c", "d"]).tolist() == [25, 25]


def test_confusion_counts_and_guess_confusion():
    conf = confusion_matrix(["a", "a", "b", "b", "b"], ["a", "b", "b", OTHER, "b"], ["a", "b"])
    assert conf.predicted == ("a", "b", OTHER)
    assert conf.counts == ((1, 1, 0), (0, 2, 1))
    assert conf.total == 5
    guess = guess_confusion(["a", "a", "b", "b", "b", "b"], ["a", "b"])
    assert guess.counts == ((1.0, 1.0, 0.0), (2.0, 2.0, 0.0))


def test_paired_difference_and_decision():
    better = np.array([100.0] * 30 + [0.0] * 10)
    worse = np.array([0.0] * 30 + [0.0] * 10)
    diff = paired_difference(better, worse, seed=0, n_boot=500)
    assert diff["mean"] == pytest.approx(75.0)
    assert decision(diff) == "a"
    assert decision(paired_difference(worse, better, seed=0, n_boot=500)) == "b"
    mixed = np.array([100.0, 0.0] * 10)
    flipped = np.array([0.0, 100.0] * 10)
    assert decision(paired_difference(mixed, flipped, seed=0, n_boot=500)) == "undecided"
    assert decision({"mean": 1.0, "ci": [None, None]}) == "undecided"


def test_items_to_resolve_scales_with_the_squared_ratio():
    # half-width 10 around a difference of 5 at n = 100: (10 / 5)^2 x 100 = 400
    assert items_to_resolve(100, {"mean": 5.0, "ci": [-5.0, 15.0]}) == 400
    assert items_to_resolve(100, {"mean": -20.0, "ci": [-30.0, -10.0]}) == 25
    assert items_to_resolve(100, {"mean": 0.0, "ci": [-1.0, 1.0]}) is None
