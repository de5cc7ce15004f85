"""A k sweep is a paired comparison: pair i of a seed is the same anchor at every k."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tunelens.api import Cell
from tunelens.experiments.convergence import aggregate_convergence

PAIRS = ("icl_it", "anchor_icl", "anchor_it")


def cell(k: int, seed: int, cos: np.ndarray) -> tuple[Cell, dict]:
    params = {
        "model": "world",
        "k": k,
        "flip_fraction": 0.0,
        "relevance": "same",
        "definition": False,
        "control": "none",
    }
    n_pairs, n_layers = cos.shape
    result = {
        "n_pairs": n_pairs,
        "n_layers": n_layers,
        "cos": {p: cos.tolist() for p in PAIRS},
        "cka": {p: [0.5] * n_layers for p in PAIRS},
        "correct": {n: [100.0] * n_pairs for n in ("anchor", "icl", "it")},
        "tasks": ["t"] * n_pairs,
    }
    return Cell("convergence", f"k={k} seed={seed}", params, seed), result


def test_k_comparison_is_the_paired_wilcoxon_against_the_largest_k():
    rng = np.random.default_rng(0)
    small = {seed: rng.uniform(0.2, 0.9, (12, 3)) for seed in (0, 1)}
    large = {seed: small[seed] + rng.normal(0.05, 0.05, (12, 3)) for seed in (0, 1)}
    results = [cell(2, s, small[s]) for s in (0, 1)] + [cell(8, s, large[s]) for s in (0, 1)]
    entries = aggregate_convergence(results)
    by_k = {e["condition"]["k"]: e for e in entries}
    assert "k_comparison" not in by_k[8]  # nothing larger to compare with
    comparison = by_k[2]["k_comparison"]
    assert comparison["against_k"] == 8 and comparison["n_pairs"] == 24
    x = np.concatenate([small[0], small[1]])
    y = np.concatenate([large[0], large[1]])
    raw = []
    for layer, row in enumerate(comparison["layers"]):
        expected = stats.wilcoxon(x[:, layer], y[:, layer])  # paired, two-sided
        assert row["p"] == pytest.approx(expected.pvalue)
        assert row["statistic"] == pytest.approx(expected.statistic)
        assert row["difference"] == pytest.approx(np.mean(x[:, layer] - y[:, layer]), abs=1e-6)
        raw.append(expected.pvalue)
    # Holm over layers 1.. only (layer 0 is the embeddings)
    assert comparison["layers"][0]["p_holm"] is None
    ordered = sorted(raw[1:])
    assert min(comparison["layers"][1]["p_holm"], comparison["layers"][2]["p_holm"]) == (
        pytest.approx(min(1.0, 2 * ordered[0]))
    )
    # A shuffled pairing would be a different test: the pairing is what is used.
    shuffled = stats.wilcoxon(x[:, 1], np.roll(y[:, 1], 1)).pvalue
    assert comparison["layers"][1]["p"] != pytest.approx(shuffled)
