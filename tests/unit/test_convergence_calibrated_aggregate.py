"""Aggregation of the calibrated measures, behaviour and patching against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tunelens.api import Cell
from tunelens.experiments.convergence import aggregate_convergence
from tunelens.measures.stats import cluster_mean_ci, gain_share, mean_ci

PAIRS = ("icl_it", "anchor_icl", "anchor_it")
MEASURES = ("cos", "cos_centered", "cos_standardized", "floor", "floor_raw", "floor_standardized")


def cell(seed: int, n: int = 10, n_layers: int = 3, sets: list[int] | None = None):
    rng = np.random.default_rng(seed)
    params = {
        "model": "world",
        "k": 4,
        "flip_fraction": 0.0,
        "relevance": "same",
        "definition": False,
        "control": "none",
        "tuning": {"method": "lora", "lora_r": 8, "target_modules": ["q_proj", "v_proj"]},
    }
    result = {
        "n_pairs": n,
        "n_layers": n_layers,
        **{m: {p: rng.uniform(-0.5, 1, (n, n_layers)).tolist() for p in PAIRS} for m in MEASURES},
        "cka": {p: rng.uniform(0, 1, n_layers).tolist() for p in PAIRS},
        "cka_debiased": {p: rng.uniform(-0.1, 1, n_layers).tolist() for p in PAIRS},
        "correct": {c: rng.choice([0.0, 100.0], n).tolist() for c in ("anchor", "icl", "it")},
        "behaviour": {
            "kl_icl_it": rng.uniform(0, 2, n).tolist(),
            "kl_icl_anchor": rng.uniform(0, 2, n).tolist(),
            "agree": rng.choice([0.0, 1.0], n).tolist(),
            "scoring": {"method": "label log-likelihood", "label_rows": n, "first_token_rows": 0},
            "label_correct": {
                "anchor": rng.choice([0.0, 1.0], n, p=[0.8, 0.2]).tolist(),
                "icl": rng.choice([0.0, 1.0], n, p=[0.2, 0.8]).tolist(),
                "it": rng.choice([0.0, 1.0], n).tolist(),
            },
        },
        "patching": {
            "layers": list(range(n_layers)),
            **{
                s: {
                    "correct": rng.choice([0.0, 1.0], (n_layers, n)).tolist(),
                    "kl_to_icl": rng.uniform(0, 1, (n_layers, n)).tolist(),
                }
                for s in ("icl", "it")
            },
        },
        "adapted": {"modules": ["c_attn"], "weights": ["q, k, v together (GPT-2's fused c_attn)"]},
        "tasks": ["t"] * n,
        "sets": sets if sets is not None else list(range(n)),
    }
    return Cell("convergence", f"seed={seed}", params, seed), result


def pooled(results, *path):
    out = []
    for _, r in results:
        value = r
        for key in path:
            value = value[key]
        out.append(np.asarray(value, dtype=float))
    return np.concatenate(out)  # pairs of every seed, in seed order


def test_pooled_calibrated_layers_tests_and_holm_from_layer_one():
    results = [cell(0), cell(1)]
    (entry,) = aggregate_convergence(results)
    assert entry["condition"]["tuning"] == "lora r=8 q_proj,v_proj"
    assert entry["tuning"]["adapted"]["weights"][0].startswith("q, k, v together")
    centered = pooled(results, "cos_centered", "icl_it")
    floor = pooled(results, "floor", "icl_it")
    pvalues = []
    for layer, row in enumerate(entry["layers"]):
        for measure in MEASURES:
            for pair in PAIRS:
                values = pooled(results, measure, pair)[:, layer]
                assert row[f"{measure}_{pair}"]["mean"] == pytest.approx(values.mean())
        debiased = np.mean([r["cka_debiased"]["icl_it"][layer] for _, r in results])
        assert row["cka_debiased_icl_it"] == pytest.approx(debiased, abs=1e-6)
        test = row["wilcoxon"]["icl_it>floor"]
        expected = stats.wilcoxon(centered[:, layer], floor[:, layer], alternative="greater")
        assert test["p"] == pytest.approx(expected.pvalue)
        pvalues.append(expected.pvalue)
    assert entry["layers"][0]["wilcoxon"]["icl_it>floor"]["p_holm"] is None
    assert entry["layers"][0]["wilcoxon"]["icl_it>anchor_icl"]["p_holm"] is None
    low, high = sorted(pvalues[1:])
    holm = {low: min(1, 2 * low), high: max(min(1, 2 * low), min(1, high))}
    for layer in (1, 2):
        got = entry["layers"][layer]["wilcoxon"]["icl_it>floor"]["p_holm"]
        assert got == pytest.approx(holm[pvalues[layer]])
    agreement = entry["seed_agreement"]["icl_it>floor"]
    assert set(agreement["per_seed_layers"]) == {"0", "1"}


def test_behaviour_and_patching_against_direct_means():
    results = [cell(0), cell(1)]
    (entry,) = aggregate_convergence(results)
    b = entry["behaviour"]
    assert b["kl_icl_it"]["mean"] == pytest.approx(pooled(results, "behaviour", "kl_icl_it").mean())
    assert b["agreement"]["mean"] == pytest.approx(pooled(results, "behaviour", "agree").mean())
    anchor = pooled(results, "behaviour", "label_correct", "anchor")
    icl = pooled(results, "behaviour", "label_correct", "icl")
    assert b["icl_gain"]["mean"] == pytest.approx(100 * (icl.mean() - anchor.mean()))
    assert b["label_accuracy"]["icl"]["mean"] == pytest.approx(100 * icl.mean())
    assert b["scoring"]["label_rows"] == len(anchor) and b["scoring"]["first_token_rows"] == 0
    rows = {(r["source"], r["layer"]): r for r in entry["patching"]}
    assert len(rows) == 6
    for source in ("icl", "it"):
        hits = np.concatenate([np.asarray(r["patching"][source]["correct"]) for _, r in results], 1)
        kls = np.concatenate(
            [np.asarray(r["patching"][source]["kl_to_icl"]) for _, r in results], 1
        )
        for layer in range(3):
            row = rows[(source, layer)]
            p = hits[layer]
            assert row["accuracy"]["mean"] == pytest.approx(100 * p.mean())
            share = (p.mean() - anchor.mean()) / (icl.mean() - anchor.mean())
            assert row["gain_share"]["mean"] == pytest.approx(share)
            lo, hi = row["gain_share"]["ci"]
            assert lo <= share <= hi
            assert row["kl_to_icl"]["mean"] == pytest.approx(kls[layer].mean())


def test_tests_run_on_cluster_means_when_anchors_share_a_set():
    sets = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    results = [cell(3, n=12, sets=sets)]
    (entry,) = aggregate_convergence(results)
    assert entry["n_clusters"] == 6
    centered = np.asarray(results[0][1]["cos_centered"]["icl_it"])
    floor = np.asarray(results[0][1]["floor"]["icl_it"])
    for layer in range(3):
        x = centered[:, layer].reshape(6, 2).mean(axis=1)
        y = floor[:, layer].reshape(6, 2).mean(axis=1)
        expected = stats.wilcoxon(x, y, alternative="greater")
        assert entry["layers"][layer]["wilcoxon"]["icl_it>floor"]["p"] == pytest.approx(
            expected.pvalue
        )


def test_cluster_bootstrap_of_duplicated_values_is_the_bootstrap_of_cluster_means():
    rng = np.random.default_rng(7)
    values = rng.normal(size=15)
    doubled = np.repeat(values, 2)
    clusters = np.repeat(np.arange(15), 2).tolist()
    got = cluster_mean_ci(doubled, clusters, seed=4)
    expected = mean_ci(values, seed=4)
    assert got["mean"] == pytest.approx(expected["mean"])
    np.testing.assert_allclose(got["ci"], expected["ci"])
    # The naive per-value bootstrap is narrower: it counts each value twice.
    naive = mean_ci(doubled, seed=4)
    assert naive["ci"][1] - naive["ci"][0] < got["ci"][1] - got["ci"][0]
    # Singleton clusters are exactly the per-value bootstrap.
    assert cluster_mean_ci(values, list(range(15)), seed=4) == mean_ci(values, seed=4)


def test_gain_share_undefined_without_gain():
    share = gain_share([1, 0, 1], [1, 0, 0], [1, 0, 0], clusters=[0, 1, 2])
    assert share == {"mean": None, "ci": [None, None]}
