"""The convergence experiment's table for ``tunelens export``: condition x seed x layer x
measure.

Condition columns ``model``, ``k``, ``flip_fraction``, ``relevance``, ``definition``,
``control``, ``tuning``; ``seed`` is ``pooled`` or a seed; ``layer`` is empty for
condition-level measures (accuracies); ``measure`` e.g. ``cos_icl_it``, ``cka_icl_it``,
``wilcoxon icl_it>anchor_icl p_holm``, ``accuracy_icl``; then the value columns of
:func:`tunelens.report.tidy.measure_row`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tunelens.api.results import parse_file
from tunelens.experiments.convergence.results import ConvergenceResults
from tunelens.experiments.convergence.updates import SERIES
from tunelens.report.tidy import Row, is_measure, measure_row

__all__ = ["convergence_rows", "tidy_rows", "update_rows"]


def tidy_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows from results.json data (its ``convergence`` key, read typed)."""
    return convergence_rows(parse_file(ConvergenceResults, results, what="results"))


def _layer_rows(base: Row, layer: Any) -> Iterator[Row]:
    """One layer's measures (sorted by name), then its tests' statistics."""
    data = layer.model_dump(mode="python")
    at = {**base, "layer": data.pop("layer")}
    tests = data.pop("wilcoxon", None) or {}
    for name in sorted(data):
        if is_measure(data[name]):
            yield measure_row(at, "measure", name, data[name])
    for comparison in sorted(tests):
        for stat_name, stat_value in sorted((tests[comparison] or {}).items()):
            if stat_value is None or is_measure(stat_value):
                yield measure_row(at, "measure", f"wilcoxon {comparison} {stat_name}", stat_value)


def convergence_rows(results: ConvergenceResults) -> list[Row]:
    """Every measure of every condition: accuracies, then pooled layers, then per seed."""
    rows: list[Row] = []
    for entry in results.convergence or []:
        c = entry.condition
        base: Row = {
            "model": c.model,
            "k": c.k,
            "flip_fraction": c.flip_fraction,
            "relevance": c.relevance,
            "definition": c.definition,
            "control": c.control,
            "tuning": c.tuning or "",
            "n_pairs": entry.n_pairs,
        }
        pooled = {**base, "seed": "pooled"}
        for name in ("anchor", "icl", "it"):
            rows.append(
                measure_row(
                    {**pooled, "layer": None},
                    "measure",
                    f"accuracy_{name}",
                    getattr(entry.accuracy, name),
                )
            )
        for pooled_layer in entry.layers:
            rows.extend(_layer_rows(pooled, pooled_layer))
        for seed in entry.per_seed:
            for seed_layer in seed.layers:
                rows.extend(_layer_rows({**base, "seed": str(seed.seed)}, seed_layer))
        if entry.update_similarity is not None:
            rows.extend(update_rows(pooled, entry.update_similarity.model_dump(mode="python")))
    return rows


def _rec2ftp_rows(base: Row, name: str, rec: dict[str, Any] | None) -> Iterator[Row]:
    """Rec2FTP (``name``), its floor and difference, and its counts, condition-level."""
    if not rec:
        return
    at = {**base, "layer": None}
    for key, suffix in (("value", ""), ("floor", "_floor"), ("above_floor", "_minus_floor")):
        if rec.get(key) is not None:
            yield measure_row(at, "measure", f"{name}{suffix}", rec[key])
    for count in ("n_pairs", "zs_wrong", "it_fixed", "icl_fixed", "both_fixed"):
        yield measure_row(at, "measure", f"{name} {count}", rec[count])


def update_rows(base: Row, updates: dict[str, Any]) -> Iterator[Row]:
    """SimAOU per series and layer (``simaou_attention``, ``simaou_floor_residual``,
    ``simaou_random_init_attention``, ``simaou_minus_random_init_residual``, their Holm
    p-values) and Rec2FTP with counts (``rec2ftp``, ``rec2ftp_floor``, ``rec2ftp
    it_fixed``; the random-init copy's as ``rec2ftp_random_init``)."""
    against = updates.get("against_random_init") or {}
    for series in SERIES:
        for row in (updates.get(series) or {}).get("layers") or []:
            at = {**base, "layer": row["layer"]}
            yield measure_row(at, "measure", f"simaou_{series}", row["simaou"])
            yield measure_row(at, "measure", f"simaou_floor_{series}", row["floor"])
            p = row["above_floor"].get("p_holm")
            yield measure_row(at, "measure", f"wilcoxon simaou_{series}>floor p_holm", p)
        for row in (against.get(series) or {}).get("layers") or []:
            at = {**base, "layer": row["layer"]}
            yield measure_row(at, "measure", f"simaou_random_init_{series}", row["random_init"])
            yield measure_row(
                at, "measure", f"simaou_minus_random_init_{series}", row["difference"]
            )
            p = row["above_random_init"].get("p_holm")
            yield measure_row(at, "measure", f"wilcoxon simaou_{series}>random_init p_holm", p)
    yield from _rec2ftp_rows(base, "rec2ftp", updates.get("rec2ftp"))
    yield from _rec2ftp_rows(base, "rec2ftp_random_init", against.get("rec2ftp"))
