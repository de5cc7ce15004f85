"""Finished function-vectors cells to results.json ``function_vectors``: one entry per model.

Units: a query (or a shuffled prompt) is a row; rows of one (seed, task) share
that task's mean head outputs and function vector, so intervals resample
(seed, task) clusters (:func:`tunelens.measures.stats.cluster_mean_ci`; under
:data:`~tunelens.measures.stats.MIN_BOOTSTRAP_UNITS` clusters, a t-interval over
the cluster means). Accuracies are fractions (0-1); indirect effects are
differences of label probabilities.

The layer of the function vector is chosen on the dev queries of every task (the
first half of each task's queries) and reported on the test queries (the rest),
so the best layer's accuracy is not read on the data that chose it. The share of
the ICL gain that the vector recovers is given only where that gain (ICL minus
zero-shot on the test queries) is significant; otherwise it is undecided and
says why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelens.api import Cell
from tunelens.experiments.function_vectors.words import verdict_sentences
from tunelens.measures.stats import (
    MIN_BOOTSTRAP_UNITS,
    cluster_mean_ci,
    cluster_means,
    gain_share,
    t_interval,
)

__all__ = ["HEADS", "VECTOR", "aggregate_function_vectors", "mean_aie", "top_heads"]

HEADS, VECTOR = "heads", "vector"  # the two kinds of cell (params["stage"])


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def stat(values: Sequence[float] | np.ndarray, clusters: Sequence[object]) -> dict[str, Any]:
    """``{"mean", "ci", "n", "clusters"}``: a cluster bootstrap from
    :data:`MIN_BOOTSTRAP_UNITS` clusters on, a t-interval over cluster means below."""
    data = np.asarray(values, dtype=np.float64).ravel()
    n_clusters = len(set(clusters))
    if data.size == 0:
        return {"mean": None, "ci": [None, None], "n": 0, "clusters": 0}
    if n_clusters >= MIN_BOOTSTRAP_UNITS:
        summary = cluster_mean_ci(data, clusters)
        low, high = summary["ci"]  # type: ignore[misc]
    else:
        low, high = t_interval(cluster_means(data, clusters))
    return {
        "mean": _finite(float(data.mean())),
        "ci": [_finite(float(low)), _finite(float(high))],
        "n": int(data.size),
        "clusters": n_clusters,
    }


def mean_aie(heads_results: Sequence[dict[str, Any]]) -> np.ndarray:
    """``[layers, heads]`` mean indirect effect over every shuffled prompt of the cells."""
    rows = np.concatenate([np.asarray(r["aie"], dtype=np.float64) for r in heads_results])
    return rows.mean(axis=0)


def top_heads(aie: np.ndarray, h: int) -> list[list[int]]:
    """The ``h`` heads of highest mean indirect effect as ``[layer, head]``, layer 1-based
    (the block that writes residual layer L); ties: lower layer, then lower head, first."""
    order = sorted(np.ndindex(*aie.shape), key=lambda lh: (-aie[lh], lh[0], lh[1]))
    return [[int(layer) + 1, int(head)] for layer, head in order[: min(h, aie.size)]]


def _by_model(
    results: Sequence[tuple[Cell, dict[str, Any]]],
) -> dict[str, dict[str, list[tuple[Cell, dict[str, Any]]]]]:
    grouped: dict[str, dict[str, list[tuple[Cell, dict[str, Any]]]]] = defaultdict(
        lambda: {HEADS: [], VECTOR: []}
    )
    for cell, result in results:
        grouped[cell.params["model"]][cell.params["stage"]].append((cell, result))
    return grouped


def _heads_block(members: list[tuple[Cell, dict[str, Any]]], h: int) -> dict[str, Any]:
    """The heat map (mean AIE per layer and head), the top heads with their intervals, and
    the readings of the averaged and the shuffled prompts."""
    aie_rows, clusters = [], []
    clean_hits, shuffled_hits, clean_c, shuffled_c = [], [], [], []
    for cell, result in members:
        unit = (cell.seed, result["task"])
        aie = np.asarray(result["aie"], dtype=np.float64)
        aie_rows.append(aie)
        clusters += [unit] * aie.shape[0]
        clean_hits += result["clean"]["correct"]
        clean_c += [unit] * len(result["clean"]["correct"])
        shuffled_hits += result["shuffled"]["correct"]
        shuffled_c += [unit] * len(result["shuffled"]["correct"])
    rows = np.concatenate(aie_rows)
    matrix = rows.mean(axis=0)
    best = top_heads(matrix, h)
    return {
        "aie": np.round(matrix, 7).tolist(),
        "top_heads": [
            {"layer": layer, "head": head, "aie": stat(rows[:, layer - 1, head], clusters)}
            for layer, head in best
        ],
        "accuracy_icl_prompts": stat(clean_hits, clean_c),
        "accuracy_shuffled_prompts": stat(shuffled_hits, shuffled_c),
        "n_prompts_total": int(rows.shape[0]),
    }


def _queries(members: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
    """Every vector cell's queries side by side: readings, clusters, the dev/test mask."""
    layers = members[0][1]["layers"]
    zs, icl, vec, clusters, dev = [], [], [], [], []
    for cell, result in members:
        n = len(result["zero_shot"]["correct"])
        zs += result["zero_shot"]["correct"]
        icl += result["icl"]["correct"]
        vec.append(np.asarray(result["vector"]["correct"], dtype=np.float64).reshape(-1, n))
        clusters += [(cell.seed, result["task"])] * n
        dev += [q < result["n_dev"] for q in range(n)]
    return {
        "layers": layers,
        "zs": np.asarray(zs),
        "icl": np.asarray(icl),
        "vec": np.concatenate(vec, axis=1),
        "clusters": clusters,
        "dev": np.asarray(dev, dtype=bool),
    }


def _curve_block(members: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
    """Accuracy per layer with the vector added (all, dev, test queries), zero-shot and ICL
    beside it, and the best layer chosen on dev and read on test."""
    q = _queries(members)
    dev, test = q["dev"], ~q["dev"]
    clusters = np.asarray([str(c) for c in q["clusters"]], dtype=object)
    curve = []
    for i, layer in enumerate(q["layers"]):
        row = q["vec"][i]
        curve.append(
            {
                "layer": layer,
                "accuracy": stat(row, list(clusters)),
                "accuracy_dev": _finite(float(row[dev].mean())) if dev.any() else None,
                "accuracy_test": stat(row[test], list(clusters[test])),
            }
        )
    best_i = int(np.argmax([q["vec"][i][dev].mean() for i in range(len(q["layers"]))]))
    best_row = q["vec"][best_i]
    test_clusters = list(clusters[test])
    zs_t, icl_t, vec_t = q["zs"][test], q["icl"][test], best_row[test]
    icl_gain = stat(icl_t - zs_t, test_clusters)
    share: dict[str, Any]
    if icl_gain["ci"][0] is not None and icl_gain["ci"][0] > 0:
        share = gain_share(vec_t, zs_t, icl_t, test_clusters)
    else:
        share = {"mean": None, "ci": [None, None], "undecided": "the ICL gain is not significant"}
    return {
        "curve": curve,
        "zero_shot": stat(q["zs"], list(clusters)),
        "icl": stat(q["icl"], list(clusters)),
        "best": {
            "layer": q["layers"][best_i],
            "accuracy_dev": _finite(float(best_row[dev].mean())) if dev.any() else None,
            "accuracy_test": stat(vec_t, test_clusters),
            "zero_shot_test": stat(zs_t, test_clusters),
            "icl_test": stat(icl_t, test_clusters),
            "vector_gain_test": stat(vec_t - zs_t, test_clusters),
            "icl_gain_test": icl_gain,
            "share_of_icl_gain": share,
        },
        "n_queries_total": int(q["zs"].size),
    }


def _entry(
    model: str, groups: dict[str, list[tuple[Cell, dict[str, Any]]]], h: int
) -> dict[str, Any]:
    heads = groups[HEADS]
    p = heads[0][0].params
    entry: dict[str, Any] = {
        "model": model,
        "k": p["k"],
        "n_prompts": p["n_prompts"],
        "n_queries": p["n_queries"],
        "top_h": h,
        "seeds": sorted({c.seed for c, _ in heads}),
        "tasks": len({r["task"] for _, r in heads}),
        "n_layers": heads[0][1]["n_layers"],
        "n_heads": heads[0][1]["n_heads"],
        "scoring": "probability of the whole label continuation; prediction: the label of "
        "highest summed log-probability",
        **_heads_block(heads, h),
    }
    vectors = groups[VECTOR]
    if vectors:
        entry.update(_curve_block(vectors))
    entry["forwards"] = {
        "heads": sum(r["forwards"] for _, r in heads),
        "vector": sum(r["forwards"] for _, r in vectors),
        "rows": sum(r["rows"] for _, r in heads + vectors),
    }
    entry["verdict"] = verdict_sentences(entry)
    return entry


def aggregate_function_vectors(
    results: Sequence[tuple[Cell, dict[str, Any]]], h: int
) -> list[dict[str, Any]]:
    """One entry per model (in the cells' model order); ``h``: heads in the function vector."""
    return [
        _entry(model, groups, h) for model, groups in _by_model(results).items() if groups[HEADS]
    ]
