"""Per-architecture sanity (issue 18): stack labels of captured layers, the cross-pair check."""

from __future__ import annotations

import numpy as np
import pytest

from tunelens.measures.sanity import NEAR_IDENTICAL, annotate, cross_pair_cosine
from tunelens.models.layers import block_counts, labels_for


def test_cross_pair_cosine_is_the_mean_over_distinct_pairs():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(5, 3, 8))
    got = cross_pair_cosine(states)
    for layer in range(3):
        h = states[:, layer]
        expected = np.mean(
            [
                h[i] @ h[j] / np.linalg.norm(h[i]) / np.linalg.norm(h[j])
                for i in range(5)
                for j in range(5)
                if i != j
            ]
        )
        assert got[layer] == pytest.approx(expected, abs=1e-6)
    one = np.ones((4, 2, 8))
    assert cross_pair_cosine(one) == [1.0, 1.0]
    assert cross_pair_cosine(states[:1]) == [None, None, None]


def test_labels_keep_encoder_and_decoder_apart():
    causal = labels_for(0, 2)
    assert [(r["stack"], r["block"], r["label"]) for r in causal] == [
        ("decoder-only", 0, "emb"),
        ("decoder-only", 1, "1"),
        ("decoder-only", 2, "2"),
    ]
    seq2seq = labels_for(2, 1)
    assert [r["label"] for r in seq2seq] == ["enc emb", "enc 1", "enc 2", "dec emb", "dec 1"]
    assert [r["stack"] for r in seq2seq] == ["encoder"] * 3 + ["decoder"] * 2


def test_block_counts_from_configs():
    from transformers import BartConfig, GPT2Config, LlamaConfig, T5Config

    assert block_counts(LlamaConfig(num_hidden_layers=3)) == (0, 3)
    assert block_counts(GPT2Config(n_layer=4)) == (0, 4)
    assert block_counts(T5Config(num_layers=2, num_decoder_layers=3)) == (2, 3)
    assert block_counts(T5Config(num_layers=2)) == (2, 2)
    assert block_counts(BartConfig(encoder_layers=1, decoder_layers=2)) == (1, 2)


def _entry(n_layers: int) -> dict:
    return {"layers": [{"layer": i} for i in range(n_layers)], "per_seed": []}


def test_annotate_labels_layers_and_warns_per_stack():
    labels = labels_for(1, 1)  # enc emb, enc 1, dec emb, dec 1
    varied = [0.3, 0.5, 1.0, 0.999]  # the decoder stack is one direction
    result = {
        "layer_labels": labels,
        "cross_pair_cos": {"anchor": varied, "icl": varied, "it": [0.2, 0.4, 0.5, 0.6]},
    }
    entry = _entry(4)
    annotate(entry, [result])
    assert [row["label"] for row in entry["layers"]] == ["enc emb", "enc 1", "dec emb", "dec 1"]
    assert entry["layers"][3]["cross_pair_cos_icl"] == 0.999
    (warning,) = entry["warnings"]
    assert warning.startswith("anchor, ICL states are nearly identical across pairs at every ")
    assert "every decoder layer (cross-pair cosine >= 0.999)" in warning
    assert NEAR_IDENTICAL == 0.99


def test_annotate_is_quiet_for_varied_states_and_old_cells():
    entry = _entry(3)
    varied = [1.0, 0.6, 0.5]
    annotate(entry, [{"cross_pair_cos": {"anchor": varied, "icl": varied, "it": varied}}])
    assert "warnings" not in entry and "stack" not in entry["layers"][0]
    old = _entry(3)
    annotate(old, [{}])  # a cell from before these checks
    assert old == _entry(3)
    seeds = _entry(2)  # two seeds: means, then the check
    annotate(
        seeds,
        [
            {"cross_pair_cos": {s: [1.0, 0.995] for s in ("anchor", "icl", "it")}},
            {"cross_pair_cos": {s: [1.0, 0.999] for s in ("anchor", "icl", "it")}},
        ],
    )
    assert seeds["layers"][1]["cross_pair_cos_it"] == pytest.approx(0.997)
    assert "at every layer" in seeds["warnings"][0]
