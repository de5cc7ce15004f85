"""The report's convergence sentences follow the numbers: significance, width, denominators."""

from __future__ import annotations

from tunelens.experiments.convergence.words import convergence_sentences, layer_ranges


def stat(mean, lo, hi):
    return {"mean": mean, "ci": [lo, hi]}


def layer(i, p_holm, centered=0.5, floor=0.1):
    return {
        "layer": i,
        "cos_icl_it": stat(0.9, 0.88, 0.92),
        "floor_raw_icl_it": stat(0.85, 0.84, 0.86),
        "cos_centered_icl_it": stat(centered, centered - 0.05, centered + 0.05),
        "floor_icl_it": stat(floor, floor - 0.01, floor + 0.01),
        "wilcoxon": {"icl_it>floor": {"p": p_holm, "p_holm": p_holm}},
    }


def entry(p_values, share=(0.82, 0.70, 0.91), gain=(40.0, 20.0, 60.0)):
    patching = []
    for i in range(len(p_values)):
        for source in ("icl", "it"):
            patching.append(
                {
                    "layer": i,
                    "source": source,
                    "accuracy": stat(50, 40, 60),
                    "gain_share": stat(*share) if source == "icl" else stat(0.41, 0.1, 0.95),
                    "kl_to_icl": stat(0.1, 0.05, 0.2),
                }
            )
    return {
        "layers": [layer(i, p) for i, p in enumerate(p_values)],
        "patching": patching,
        "behaviour": {
            "icl_gain": stat(*gain),
            "kl_icl_it": stat(0.2, 0.1, 0.3),
            "kl_icl_anchor": stat(0.6, 0.5, 0.7),
            "kl_anchor_minus_it": stat(0.4, 0.3, 0.5),
            "agreement": stat(0.8, 0.7, 0.9),
        },
        "seed_agreement": {
            "icl_it>floor": {
                "alpha": 0.05,
                "pooled_layers": [1, 2],
                "per_seed_layers": {"0": [1, 2], "1": [2]},
                "holds_in_every_seed": [2],
            }
        },
    }


def test_layer_ranges():
    assert layer_ranges([1, 2, 3, 5]) == "layers 1-3 and 5"
    assert layer_ranges([4]) == "layer 4"
    assert layer_ranges([]) == "no layer"


def test_floor_patching_and_behaviour_sentences():
    text = " ".join(convergence_sentences(entry([None, 0.004, 0.0001, 0.5, 0.2])))
    assert "exceeds its mismatched-pair floor at layers 1-2 (p_holm < 0.01)" in text
    assert "at layers 1-2 only" not in text and "holds at layer 2 only" in text
    assert "most of the raw number is shared by unrelated prompts" in text
    assert "recovers 82% [70%, 91%] of that gain" in text
    assert "the IT state recovers 41% [10%, 95%] (undecided)" in text
    assert "toward ICL's" in text and "agree on 80% [70%, 90%]" in text


def test_no_share_without_a_significant_gain_and_undecided_when_wide():
    text = " ".join(convergence_sentences(entry([None, 0.5, 0.5], gain=(5.0, -3.0, 12.0))))
    assert "does not exceed its mismatched-pair floor" in text
    assert "no share of an ICL gain is given" in text and "recovers" not in text
    wide = " ".join(convergence_sentences(entry([None, 0.01, 0.5], share=(0.5, -0.2, 1.1))))
    assert "recovers 50% [-20%, 110%] of that gain (undecided" in wide
