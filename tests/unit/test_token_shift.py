"""Token distribution shift arithmetic: buckets, categories, kinds, shares and intervals.

References are hand counts over hand-made token lists, and scipy's t-interval /
numpy's percentile bootstrap for the intervals over tasks.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tunelens.measures.token_shift import (
    is_format_text,
    positions_of,
    rank_bucket,
    shift_kind,
    shift_reading,
    summarise,
    token_category,
    top_shifted,
)

LABELS = {10, 11}  # "yes", "no"
SPECIAL = {0, 2}  # pad, end of sequence


@pytest.mark.parametrize(
    ("rank", "bucket"),
    [(1, "unshifted"), (2, "marginal"), (3, "marginal"), (4, "shifted"), (50_000, "shifted")],
)
def test_rank_buckets(rank, bucket):
    assert rank_bucket(rank) == bucket


def test_rank_zero_is_refused():
    with pytest.raises(ValueError):
        rank_bucket(0)


@pytest.mark.parametrize(
    ("token_id", "text", "category"),
    [
        (10, "yes", "label"),
        (11, " no", "label"),
        (2, "</s>", "format"),  # special
        (5, "\n", "format"),
        (6, " ", "format"),
        (7, "", "format"),  # SentencePiece's lone space decodes to nothing
        (8, ".", "format"),
        (9, ' "', "format"),
        (12, "→", "format"),  # a symbol
        (13, "Output", "other"),
        (14, " 7", "other"),  # a digit that is not a label
        (15, "é", "other"),
        (16, "ok.", "other"),  # letters with punctuation
    ],
)
def test_token_categories_on_hand_made_tokens(token_id, text, category):
    assert token_category(token_id, text, LABELS, SPECIAL) == category


def test_a_label_token_stays_a_label_even_as_punctuation():
    assert token_category(20, "?", {20}, SPECIAL) == "label"
    assert is_format_text("?!") and not is_format_text("a?")


def test_shift_kinds():
    assert shift_kind("label", top_id=13, label_ids=LABELS) == "into_label_space"
    assert shift_kind("label", top_id=11, label_ids=LABELS) == "between_labels"
    assert shift_kind("format", top_id=10, label_ids=LABELS) == "format"
    assert shift_kind("other", top_id=10, label_ids=LABELS) == "other"


def _sample(task, ids, texts, ranks, tops, item=0):
    return {
        "task": task,
        "id": f"{task}-{item}",
        "output_ids": ids,
        "output_texts": texts,
        "base_ranks": ranks,
        "base_top_ids": tops,
    }


# Task a: labels yes(10)/no(11). Task b: labels up(20)/down(21). Task c: labels yes/no.
SAMPLES = [
    # a: yes shifted (top "Output"), newline unshifted
    _sample("a", [10, 5], ["yes", "\n"], [7, 1], [13, 5]),
    # a: no shifted (top "yes": between labels), newline marginal
    _sample("a", [11, 5], ["no", "\n"], [5, 3], [10, 2], item=1),
    # b: "up" unshifted, "." shifted (format)
    _sample("b", [20, 8], ["up", "."], [1, 9], [20, 5]),
    # b: "yes" is not b's label: other, shifted; end of sequence marginal
    _sample("b", [10, 2], ["yes", "</s>"], [4, 2], [20, 5], item=1),
    # c: one token, unshifted
    _sample("c", [10], ["yes"], [1], [10]),
    # a sample from an older cell: no ranks, no positions
    {"task": "c", "id": "old", "prediction": "no"},
]
LABEL_IDS = {"a": [10, 11], "b": [20, 21], "c": [10, 11]}


def test_positions_and_categories_per_task():
    positions, labels = positions_of(SAMPLES, LABEL_IDS, SPECIAL)
    assert len(positions) == 9
    assert labels == {"a": {10, 11}, "b": {20, 21}, "c": {10, 11}}
    categories = [(p.unit, p.text, p.category) for p in positions]
    assert ("b", "yes", "other") in categories and ("a", "yes", "label") in categories
    assert ("b", "</s>", "format") in categories


def test_shares_and_intervals_against_a_hand_count():
    positions, labels = positions_of(SAMPLES, LABEL_IDS, SPECIAL)
    summary = summarise(positions, labels, n_boot=500, seed=0, unit="task")
    assert summary is not None
    # by hand: a = [shifted, unshifted, shifted, marginal]; b = [unshifted, shifted, shifted,
    # marginal]; c = [unshifted]
    hand = {"a": (25.0, 25.0, 50.0), "b": (25.0, 25.0, 50.0), "c": (100.0, 0.0, 0.0)}
    assert summary["counts"] == {"unshifted": 3, "marginal": 2, "shifted": 4}
    assert summary["n_units"] == 3 and summary["n_positions"] == 9
    for i, bucket in enumerate(("unshifted", "marginal", "shifted")):
        values = [hand[t][i] for t in "abc"]
        stat = summary[bucket]
        assert stat["mean"] == pytest.approx(np.mean(values))
        assert stat["n"] == 3 and stat["method"] == "t"  # below 10 tasks: a t-interval
        sem = stats.sem(values)
        low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=sem)
        assert stat["ci"] == pytest.approx([low, high])
    for task, (u, m, s) in hand.items():
        assert summary["per_unit"][task] == pytest.approx(
            {"unshifted": u, "marginal": m, "shifted": s, "positions": 4 if task != "c" else 1}
        )
    # shifted kinds by hand: a: into_label_space (yes), between_labels (no); b: format (.),
    # other (yes, not b's label)
    assert summary["shifted_by_kind"] == {
        "format": 1,
        "into_label_space": 1,
        "between_labels": 1,
        "other": 1,
    }
    # over the tasks with a shifted token (a and b): label or format a 100%, b 50%;
    # format-like a 50% (into the space; between labels is not), b 50%
    assert summary["label_or_format"]["mean"] == pytest.approx(75.0)
    assert summary["label_or_format"]["n"] == 2
    assert summary["format_like"]["mean"] == pytest.approx(50.0)


def test_bootstrap_interval_from_ten_tasks_on():
    """From 10 tasks on, the percentile bootstrap over tasks (numpy, same seed)."""
    samples = []
    for t in range(12):
        ranks = [1] * (t % 4) + [9]  # one shifted token among 1-4 positions
        samples.append(
            _sample(f"t{t}", [30] * len(ranks), ["w"] * len(ranks), ranks, [31] * len(ranks))
        )
    positions, labels = positions_of(samples, {}, SPECIAL)
    summary = summarise(positions, labels, n_boot=1000, seed=3)
    per_task = np.array([100.0 / ((t % 4) + 1) for t in range(12)])
    stat = summary["shifted"]
    assert stat["method"] == "bootstrap" and stat["n"] == 12
    assert stat["mean"] == pytest.approx(per_task.mean())
    rng = np.random.default_rng(3)
    means = per_task[rng.integers(0, 12, size=(1000, 12))].mean(axis=1)
    assert stat["ci"] == pytest.approx(list(np.quantile(means, [0.025, 0.975])))


def test_top_shifted_tokens_per_category():
    positions, _ = positions_of(SAMPLES, LABEL_IDS, SPECIAL)
    top = top_shifted(positions)
    assert [t["token"] for t in top["label"]] == ["no", "yes"]  # one each, by text
    assert top["label"][1] == {"token": "yes", "id": 10, "shifted": 1, "occurrences": 3}
    assert [t["token"] for t in top["format"]] == ["."]
    assert [t["token"] for t in top["other"]] == ["yes"]


def test_no_positions_and_the_reading():
    assert summarise([], {}, n_boot=100) is None
    assert "No token shift" in shift_reading(None)
    positions, labels = positions_of(SAMPLES, LABEL_IDS, SPECIAL)
    summary = summarise(positions, labels, n_boot=200)
    text = shift_reading(summary, "Tuning")
    assert text.startswith("Tuning moved 33.3% [")
    assert "n = 3 tasks, 9 tokens" in text and "undecided" in text
    # every shifted token format-like in every task: mostly format
    like = {**summary, "format_like": {"mean": 90.0, "ci": [80.0, 100.0], "n": 5}}
    assert "mostly format" in shift_reading(like)
    content = {**summary, "format_like": {"mean": 10.0, "ci": [0.0, 20.0], "n": 5}}
    assert "mostly not format" in shift_reading(content)
