"""Update-direction similarity: SimAOU and Rec2FTP (Dai et al. 2023), read against the
untrained-model critique of Deutch et al. (2024).

Dai et al. ("Why Can GPT Learn In-Context?", Findings of ACL 2023) compare the *updates*
that ICL and fine-tuning make to the zero-shot computation, not the states:

* **SimAOU** per layer: the cosine of ``u_ICL = ĥ_ICL - ĥ_ZS`` and ``u_IT = ĥ_IT - ĥ_ZS``,
  where ``ĥ`` is a last-token vector scaled to unit length (their ``compute_sim.py``
  normalises before subtracting), ZS the untuned model on the zero-shot prompt (the
  study's anchor), ICL the untuned model on the few-shot prompt, IT the tuned model on
  the zero-shot prompt. Measured on each block's attention output (their measure:
  the output projection's output) and on the residual stream.
* **Rec2FTP**: ``#(ZS wrong ∧ IT right ∧ ICL right) / #(ZS wrong ∧ IT right) × 100``,
  from the study's label-scored behaviour.

Their floor was uniform [0, 1) noise. Deutch et al. ("In-context Learning and Gradient
Descent Revisited", NAACL 2024) found that untrained models reach comparable scores, so
the floor was the problem. Here each measure has the study's own controls: the
mismatched-pair floor (the ICL update of pair i against the IT update of pair j ≠ i,
same task where possible, :func:`~tunelens.measures.similarity.mismatched_floor_per_layer`;
for Rec2FTP, how often ICL fixes *another* pair that zero-shot got wrong) and the
random-initialised copy (control ``random_init``, the same draws, so paired).
Deutch et al.'s test then reads: does the trained model's SimAOU exceed its floor
*and* its untrained copy's?

Layer numbering: the residual stream's layer ``l`` is ``output_hidden_states[l]``
(0 = embeddings, where both updates are zero and SimAOU is undefined); the attention
series puts block ``b``'s attention output at layer ``b + 1``, the residual layer that
block writes, so the two share an axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelens.measures.similarity import cosine_per_layer, mismatched_floor_per_layer
from tunelens.measures.stats import (
    cluster_bootstrap,
    cluster_mean_ci,
    cluster_means,
    holm,
    paired_wilcoxon_greater,
)

__all__ = [
    "MIN_REC2FTP_DENOMINATOR",
    "SERIES",
    "aggregate_updates",
    "compare_random_init",
    "rec2ftp_columns",
    "simaou",
    "unit_updates",
    "update_similarity_cell",
]

SERIES = ("attention", "residual")
# Rec2FTP is a share of the pairs IT fixed; below this many it is left undecided.
MIN_REC2FTP_DENOMINATOR = 10
ALPHA = 0.05
METHOD = (
    "SimAOU: per pair and layer, cosine of (ICL - zero-shot) and (IT - zero-shot) "
    "last-token vectors, each vector scaled to unit length first (Dai et al.'s "
    "compute_sim.py); attention: each block's attention output projection, residual: the "
    "hidden state. Rec2FTP: #(zero-shot wrong, IT right, ICL right) / #(zero-shot wrong, "
    "IT right) x 100 from the label-scored answers."
)


# ---------------------------------------------------------------- per cell


def unit_updates(zero_shot: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other/|other| - zero_shot/|zero_shot|`` per [pair, layer] (a zero vector stays zero)."""

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    return unit(other) - unit(zero_shot)


def simaou(zero_shot: np.ndarray, icl: np.ndarray, it: np.ndarray) -> np.ndarray:
    """SimAOU of every pair and layer: ``[n, layers]``; NaN where an update is zero."""
    return cosine_per_layer(unit_updates(zero_shot, icl), unit_updates(zero_shot, it))


def _series_cell(
    zero_shot: np.ndarray, icl: np.ndarray, it: np.ndarray, task_names: list[str]
) -> dict[str, list]:
    u_icl, u_it = unit_updates(zero_shot, icl), unit_updates(zero_shot, it)
    return {
        "sim": _rounded(cosine_per_layer(u_icl, u_it)),
        "floor": _rounded(mismatched_floor_per_layer(u_icl, u_it, task_names)),
    }


def update_similarity_cell(
    states: tuple[np.ndarray, np.ndarray, np.ndarray],
    attention: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None],
    task_names: list[str],
    attention_note: str | None = None,
) -> dict[str, Any]:
    """A cell's stored SimAOU per pair and layer with its mismatched-pair floor.

    ``states``: (anchor, ICL, IT) residual streams ``[n, layers, hidden]``;
    ``attention``: the same forwards' attention outputs ``[n, blocks, hidden]``
    (None where the model's were not tapped: ``attention_note`` says why). The
    attention series gets a leading null layer so its index is the residual layer
    each block writes.
    """
    out: dict[str, Any] = {"residual": _series_cell(*states, task_names), "attention": None}
    if all(a is not None for a in attention):
        series = _series_cell(*attention, task_names)  # type: ignore[arg-type]
        out["attention"] = {k: [[None, *row] for row in v] for k, v in series.items()}
    else:
        out["attention_note"] = attention_note or "attention outputs were not recorded"
    return out


def _rounded(x: np.ndarray) -> list:
    values = np.round(np.asarray(x, dtype=np.float64), 7)
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in values]


# ---------------------------------------------------------------- Rec2FTP


def rec2ftp_columns(
    zero_shot: Sequence[float], icl: Sequence[float], it: Sequence[float], tasks: Sequence[str]
) -> np.ndarray:
    """Per pair ``[both, it_fixed, floor_share, zs_wrong, icl_fixed, floor_defined]``.

    From 0/1 correctness of the zero-shot (anchor), ICL and IT answers. ``it_fixed``:
    zero-shot wrong and IT right (Rec2FTP's denominator); ``both``: that and ICL right
    (its numerator); ``floor_share``: for an ``it_fixed`` pair, the share of the
    *other* zero-shot-wrong pairs (same task where any) that ICL gets right, the
    mismatched-pair floor of ``both``; ``floor_defined``: an ``it_fixed`` pair that has
    such partners (0 elsewhere, and ``floor_share`` 0 there).
    """
    zs, ic, tu = (np.asarray(x, dtype=np.float64) > 0.5 for x in (zero_shot, icl, it))
    wrong = ~zs
    fixed = wrong & tu
    floor, defined = np.zeros(zs.size), np.zeros(zs.size)
    for i in np.flatnonzero(fixed):
        others = [int(j) for j in np.flatnonzero(wrong) if j != i]
        same = [j for j in others if tasks[j] == tasks[int(i)]]
        partners = same or others
        if partners:
            floor[i], defined[i] = float(np.mean(ic[partners])), 1.0
    columns = [fixed & ic, fixed, floor, wrong, wrong & ic, defined]
    return np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=1)


def _share(means: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """``means[:, top] / means[:, bottom] * 100`` per row; NaN where the bottom is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(means[:, bottom] > 0, means[:, top] / means[:, bottom] * 100.0, np.nan)


def _ratio_stat(columns: np.ndarray, clusters: Sequence[object], estimate: Any) -> dict[str, Any]:
    """``estimate(column means)`` with a cluster-bootstrap CI (draws where it is NaN left out)."""
    value = float(estimate(columns.mean(axis=0, keepdims=True))[0])
    draws = cluster_bootstrap(columns, clusters, estimate)
    draws = draws[np.isfinite(draws)]
    if not np.isfinite(value) or draws.size == 0:
        return {"mean": value if np.isfinite(value) else None, "ci": [None, None]}
    low, high = np.quantile(draws, [ALPHA / 2, 1 - ALPHA / 2])
    return {"mean": value, "ci": [float(low), float(high)]}


def rec2ftp(columns: np.ndarray, clusters: Sequence[object]) -> dict[str, Any]:
    """Rec2FTP with its counts, mismatched-pair floor and their difference, or undecided."""
    counts = columns.sum(axis=0)
    out: dict[str, Any] = {
        "n_pairs": int(columns.shape[0]),
        "zs_wrong": int(counts[3]),
        "it_fixed": int(counts[1]),
        "icl_fixed": int(counts[4]),
        "both_fixed": int(counts[0]),
        "min_denominator": MIN_REC2FTP_DENOMINATOR,
        "value": None,
        "floor": None,
        "above_floor": None,
        "undecided": None,
    }
    if counts[1] < MIN_REC2FTP_DENOMINATOR:
        out["undecided"] = (
            f"only {int(counts[1])} pairs were wrong zero-shot and right after tuning "
            f"(Rec2FTP's denominator; it needs at least {MIN_REC2FTP_DENOMINATOR})"
        )
        return out
    out["value"] = _ratio_stat(columns, clusters, lambda m: _share(m, 0, 1))
    out["floor"] = _ratio_stat(columns, clusters, lambda m: _share(m, 2, 5))
    out["above_floor"] = _ratio_stat(columns, clusters, lambda m: _share(m, 0, 1) - _share(m, 2, 5))
    return out


# ---------------------------------------------------------------- pooled over seeds


def _stat(values: np.ndarray, clusters: Sequence[object]) -> dict[str, Any]:
    """Cluster-bootstrap mean and CI over the finite values (none finite: null)."""
    keep = np.isfinite(values)
    if not keep.any():
        return {"mean": None, "ci": [None, None]}
    kept = [c for c, k in zip(clusters, keep, strict=True) if k]
    return cluster_mean_ci(values[keep], kept)


def _greater(x: np.ndarray, y: np.ndarray, clusters: Sequence[object]) -> dict[str, Any]:
    """One-sided paired Wilcoxon x > y on cluster means of the pairs where both are finite."""
    keep = np.isfinite(x) & np.isfinite(y)
    kept = [c for c, k in zip(clusters, keep, strict=True) if k]
    if len(set(kept)) < 2:
        return {"statistic": None, "p": None, "p_holm": None, "effect": None}
    test = paired_wilcoxon_greater(cluster_means(x[keep], kept), cluster_means(y[keep], kept))
    return {
        "statistic": float(test.statistic),
        "p": float(test.p),
        "p_holm": None,
        "effect": float(test.effect),
    }


def _holm_layers(layers: list[dict[str, Any]], test: str) -> None:
    """Holm over layers 1.. (layer 0, the embeddings, stays outside the family)."""
    family = [
        (i, row[test]["p"]) for i, row in enumerate(layers) if i > 0 and row[test]["p"] is not None
    ]
    for (i, _), p_holm in zip(family, holm([p for _, p in family]), strict=True):
        layers[i][test]["p_holm"] = float(p_holm)


def _series_stats(sim: np.ndarray, floor: np.ndarray, clusters: Sequence[object]) -> dict:
    """Per layer: SimAOU and its floor (means, CIs) and the test SimAOU > floor."""
    layers = []
    for layer in range(sim.shape[1]):
        x, y = sim[:, layer], floor[:, layer]
        layers.append(
            {
                "layer": layer,
                "simaou": _stat(x, clusters),
                "floor": _stat(y, clusters),
                "above_floor": _greater(x, y, clusters),
            }
        )
    _holm_layers(layers, "above_floor")
    return {"n_pairs": int(sim.shape[0]), "layers": layers}


def _pooled_series(
    members: Sequence[tuple[Any, dict[str, Any]]], series: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(sim, floor) ``[pairs, layers]`` over the members, or None when a cell lacks them."""
    parts: list[dict[str, Any]] = []
    for _, r in members:
        part = (r.get("update_similarity") or {}).get(series)
        if part is None:
            return None
        parts.append(part)
    if not parts:
        return None
    sim, floor = (
        np.concatenate([np.asarray(p[k], dtype=np.float64) for p in parts])
        for k in ("sim", "floor")
    )
    return sim, floor


def _correct(members: Sequence[tuple[Any, dict[str, Any]]]) -> np.ndarray | None:
    """Rec2FTP columns of every pair, each cell's floor over its own pairs."""
    parts = []
    for _, r in members:
        hits = (r.get("behaviour") or {}).get("label_correct")
        if not hits:
            return None
        tasks = r.get("tasks") or [""] * len(hits["anchor"])
        parts.append(rec2ftp_columns(hits["anchor"], hits["icl"], hits["it"], tasks))
    return np.concatenate(parts) if parts else None


def aggregate_updates(
    members: Sequence[tuple[Any, dict[str, Any]]], clusters: Sequence[object]
) -> dict[str, Any] | None:
    """A condition's ``update_similarity``: both SimAOU series and Rec2FTP, pooled over seeds.

    CIs are cluster bootstraps over (seed, demonstration set), tests run on cluster
    means and are Holm-corrected over layers 1..; None when no cell stored the measure
    (results of convergence code version 11 and before).
    """
    if not all("update_similarity" in r for _, r in members):
        return None
    out: dict[str, Any] = {"method": METHOD}
    for series in SERIES:
        pooled = _pooled_series(members, series)
        out[series] = None if pooled is None else _series_stats(*pooled, clusters)
    notes = {
        str(note)
        for _, r in members
        if (note := (r["update_similarity"] or {}).get("attention_note")) is not None
    }
    if notes:
        out["attention_note"] = "; ".join(sorted(notes))
    columns = _correct(members)
    out["rec2ftp"] = None if columns is None else rec2ftp(columns, clusters)
    return out


# ---------------------------------------------------------------- against the untrained copy


def _by_seed(members: Sequence[tuple[Any, dict[str, Any]]], series: str) -> dict[int, Any]:
    out = {}
    for cell, r in members:
        part = (r.get("update_similarity") or {}).get(series)
        if part is not None:
            out[cell.seed] = (np.asarray(part["sim"], dtype=np.float64), r.get("sets"))
    return out


def _series_against(
    trained: dict[int, Any], control: dict[int, Any], seeds: list[int]
) -> dict[str, Any] | None:
    """Per layer: trained - random-init SimAOU, paired by seed and pair, and the test >."""
    if any(trained[s][0].shape != control[s][0].shape for s in seeds):
        return None
    x = np.concatenate([trained[s][0] for s in seeds])
    y = np.concatenate([control[s][0] for s in seeds])
    clusters: list[object] = []
    for s in seeds:
        sets = trained[s][1] or list(range(trained[s][0].shape[0]))
        clusters += [(s, int(j)) for j in sets]
    layers = [
        {
            "layer": layer,
            "random_init": _stat(y[:, layer], clusters),
            "difference": _stat(x[:, layer] - y[:, layer], clusters),
            "above_random_init": _greater(x[:, layer], y[:, layer], clusters),
        }
        for layer in range(x.shape[1])
    ]
    _holm_layers(layers, "above_random_init")
    return {"n_pairs": int(x.shape[0]), "seeds": seeds, "layers": layers}


def _significant(rows: Sequence[dict[str, Any]], test: str) -> set[int]:
    return {
        int(row["layer"])
        for row in rows
        if (p := (row.get(test) or {}).get("p_holm")) is not None and p < ALPHA
    }


def _deutch(own: dict[str, Any] | None, against: dict[str, Any] | None) -> dict[str, Any] | None:
    """Layers where SimAOU beats its floor, its untrained copy, and both (Deutch's test)."""
    if own is None or against is None:
        return None
    floor = _significant(own["layers"], "above_floor")
    control = _significant(against["layers"], "above_random_init")
    return {
        "alpha": ALPHA,
        "above_floor_layers": sorted(floor),
        "above_random_init_layers": sorted(control),
        "passes_layers": sorted(floor & control),
    }


def compare_random_init(entries: list[dict[str, Any]], groups: Sequence[Sequence[Any]]) -> None:
    """Add ``update_similarity.against_random_init`` to each real condition whose untrained
    copy (the same condition with control ``random_init``) also ran.

    The copy is measured on the same draws (sampling depends on seed and relevance
    only), so pair i of a seed is the same anchor and demonstration set in both:
    differences and one-sided Wilcoxon tests are paired, Holm over layers 1...
    """
    by_condition = {
        repr(sorted(e["condition"].items())): (e, m) for e, m in zip(entries, groups, strict=True)
    }
    for entry, members in by_condition.values():
        updates = entry.get("update_similarity")
        if updates is None or entry["condition"].get("control") != "none":
            continue
        twin = by_condition.get(
            repr(sorted({**entry["condition"], "control": "random_init"}.items()))
        )
        if twin is None or twin[0].get("update_similarity") is None:
            continue
        out: dict[str, Any] = {}
        for series in SERIES:
            mine, theirs = _by_seed(members, series), _by_seed(twin[1], series)
            seeds = sorted(set(mine) & set(theirs))
            against = _series_against(mine, theirs, seeds) if seeds else None
            out[series] = against
            out[f"{series}_test"] = _deutch(updates.get(series), against)
        out["rec2ftp"] = twin[0]["update_similarity"].get("rec2ftp")
        updates["against_random_init"] = out
