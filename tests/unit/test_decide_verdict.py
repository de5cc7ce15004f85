"""The verdict's sentences on hand-made decide results."""

from __future__ import annotations

import copy

from tunelens.experiments.decide.verdict import (
    fmt_diff,
    fmt_share,
    fmt_stat,
    share_reading,
    too_wide,
    verdict,
)


def stat(mean, lo, hi):
    return {"mean": mean, "ci": [lo, hi]}


def method(id_, family, name, examples, acc, flops, training=None):
    compute = {
        "per_1000_items": {
            "prompt_tokens_per_item": 10.0,
            "prompt_tokens": 10_000.0,
            "answer_tokens": 2000.0,
            "flops": flops,
        }
    }
    if training is not None:
        compute["training"] = {"tokens": 100.0, "flops": training}
    return {
        "id": id_,
        "family": family,
        "name": name,
        "examples": examples,
        "n_items": 100,
        "accuracy": acc,
        "out_of_space": 0,
        "compute": compute,
    }


RESULTS = {
    "methods": [
        method("zero_shot", "zero_shot", "zero-shot", 0, stat(40.0, 30.0, 50.0), 1000.0),
        method("icl_k4", "icl", "ICL, k=4", 4, stat(60.0, 50.0, 70.0), 3000.0),
        method("tune_n8", "tuning", "tuned, n=8", 8, stat(80.0, 70.0, 90.0), 1000.0, 1e6),
        method(
            "control_simplified",
            "control",
            "simplified control",
            8,
            stat(70.0, 60.0, 80.0),
            1000.0,
            1e6,
        ),
        method("label_guess", "baseline", "label guess", 0, stat(50.0, 50.0, 50.0), 0.0),
    ],
    "comparisons": {
        "vs_zero_shot": [
            {
                "a": "icl_k4",
                "b": "zero_shot",
                "examples": 4,
                "difference": stat(20.0, 10.0, 30.0),
                "winner": "icl_k4",
                "items_to_resolve": None,
            },
            {
                "a": "tune_n8",
                "b": "zero_shot",
                "examples": 8,
                "difference": stat(40.0, 30.0, 50.0),
                "winner": "tune_n8",
                "items_to_resolve": None,
            },
        ],
        "at_equal_size": [
            {
                "a": "tune_n8",
                "b": "icl_k4",
                "examples": 8,
                "difference": stat(20.0, -5.0, 45.0),
                "winner": None,
                "items_to_resolve": 150,
                "tuning_pays_back_after_items": 500.0,
            },
        ],
    },
    "best": {
        "id": "tune_n8",
        "indistinguishable": ["icl_k4"],
        "cheapest_at_equal_quality": "tune_n8",
    },
    "format_share": {
        "tuned": "tune_n8",
        "zero_shot": "zero_shot",
        "tuning_gain": stat(40.0, 30.0, 50.0),
        "controls": {
            "control_simplified": {
                "share": stat(0.75, 0.5, 0.9),
                "vs_tuned": stat(-10.0, -20.0, 0.0),
            },
            "label_guess": {"share": stat(0.25, 0.1, 0.4), "vs_tuned": stat(-30.0, -40.0, -20.0)},
        },
    },
}


def test_formatting():
    assert fmt_stat(stat(45.0, 38.25, 51.75)) == "45.0% [38.2, 51.8]"
    assert fmt_diff(stat(12.34, 4.1, 20.0)) == "+12.3 points [4.1, 20.0]"
    assert fmt_diff(stat(-2.0, -5.0, 1.0)) == "-2.0 points [-5.0, 1.0]"
    assert fmt_share(stat(0.85, 0.6, 1.1)) == "85% [60, 110]"
    assert fmt_share(stat(None, 1.0, 1.0)).startswith("undefined")
    assert fmt_stat(stat(None, None, None)) == "n/a% [n/a, n/a]"


def test_share_reading_thresholds():
    assert share_reading(stat(0.9, 0.85, 0.95), True) == "mostly format"
    assert share_reading(stat(0.2, 0.1, 0.45), True) == "more than the format"
    assert share_reading(stat(0.6, 0.3, 0.9), True) == "undecided"
    assert share_reading(stat(0.9, 0.85, 0.95), False) == "undecided"


def test_verdict_sentences():
    out = verdict(RESULTS, ["tuning n=128 skipped"])
    assert out["summary"][0] == (
        "Best: tuned, n=8, accuracy 80.0% [70.0, 90.0]. Equal in quality within the intervals: "
        "ICL, k=4. Cheapest of these per 1,000 items: tuned, n=8 (1.00e+03 FLOPs, 10,000 prompt "
        "tokens, plus 1.00e+06 FLOPs once for tuning)."
    )
    assert "1 comparison(s) are too close to call" in out["summary"][-1]
    assert out["by_size"][0] == (
        "With 4 example(s): ICL k=4 60.0% [50.0, 70.0] vs zero-shot "
        "40.0% [30.0, 50.0]: ICL wins by +20.0 points [10.0, 30.0]."
    )
    assert out["by_size"][1].startswith(
        "With 8 examples: tuned, n=8 80.0% [70.0, 90.0] vs ICL "
        "k=4 60.0% [50.0, 70.0]: too close to call: +20.0 points "
        "[-5.0, 45.0]; about 150 test items would resolve"
    )
    assert "pays back after about 500 items" in out["by_size"][1]
    assert out["format"][0] == (
        "Tuning gain (tuned, n=8 minus zero-shot): +40.0 points [30.0, 50.0]."
    )
    assert "reaches 75% [50, 90] of the tuning gain: the interval is too wide" in out["format"][1]
    assert (
        "25% [10, 40] of the tuning gain: tuning taught more than the output format"
        in out["format"][2]
    )
    assert out["notes"] == ["tuning n=128 skipped"]
    assert [w["a"] for w in out["too_wide"]] == ["tuned, n=8"]


def test_guess_level_best_and_unreadable_gain():
    results = copy.deepcopy(RESULTS)
    results["best"] = {
        "id": "tune_n8",
        "indistinguishable": ["label_guess"],
        "cheapest_at_equal_quality": "label_guess",
    }
    results["format_share"]["tuning_gain"] = stat(5.0, -5.0, 15.0)
    out = verdict(results)
    assert "not distinguishable from guessing a label" in out["summary"][0]
    assert "cannot be read" in out["format"][0]
    assert all("too wide to say" in line for line in out["format"][1:])


def test_guess_is_best():
    results = copy.deepcopy(RESULTS)
    results["best"] = {
        "id": "label_guess",
        "indistinguishable": [],
        "cheapest_at_equal_quality": "label_guess",
    }
    line = verdict(results)["summary"][0]
    assert line.startswith("No method beats guessing a label (50.0% [50.0, 50.0])")
    assert line.endswith("The best model method is tuned, n=8, 80.0% [70.0, 90.0].")


def test_identical_scores_are_not_called_too_wide():
    results = copy.deepcopy(RESULTS)
    results["comparisons"]["at_equal_size"][0].update(
        difference=stat(0.0, 0.0, 0.0), items_to_resolve=None
    )
    out = verdict(results)
    assert "the same score on every test item" in out["by_size"][1]
    assert too_wide(results) == []
