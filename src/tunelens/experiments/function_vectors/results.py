"""The function-vectors experiment's typed results: results.json ``function_vectors``, one
entry per model (the generic pieces are :mod:`tunelens.api.results`).

:func:`dump_function_vectors` is what the aggregator writes through (a renamed or missing
key fails where it is made); :class:`FunctionVectorsResults` is how the report and
``tunelens export`` read the key back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunelens.api.results import Number, ResultsModel, Stat, dump_as

__all__ = [
    "BestLayer",
    "CurvePoint",
    "Estimate",
    "FunctionVectorsEntry",
    "FunctionVectorsResults",
    "TopHead",
    "dump_function_vectors",
]


class Estimate(Stat):
    """A mean with its 95% CI over (seed, task) clusters: ``n`` rows in ``clusters``
    clusters (a cluster bootstrap from 10 clusters, a t-interval over cluster means below)."""

    n: int | None = None
    clusters: int | None = None


class TopHead(ResultsModel):
    """A head of the function vector: ``layer`` L (1-based: the block that writes residual
    layer L), ``head`` (0-based) and its average indirect effect (difference of the correct
    label's probability, patched minus shuffled)."""

    layer: int
    head: int
    aie: Estimate


class CurvePoint(ResultsModel):
    """Accuracy (0-1) with the function vector added after ``layer`` (0 = embeddings): over
    every query, over the dev queries (which choose the layer), over the test queries."""

    layer: int
    accuracy: Estimate
    accuracy_dev: float | None = None
    accuracy_test: Estimate


class ShareOfGain(ResultsModel):
    """(vector - zero-shot) / (ICL - zero-shot) on the test queries; null with ``undecided``
    where the ICL gain is not significant."""

    mean: float | None
    ci: list[float | None]
    undecided: str | None = None


class BestLayer(ResultsModel):
    """The layer of highest dev accuracy, and its readings on the test queries."""

    layer: int
    accuracy_dev: float | None
    accuracy_test: Estimate
    zero_shot_test: Estimate
    icl_test: Estimate
    vector_gain_test: Estimate
    icl_gain_test: Estimate
    share_of_icl_gain: ShareOfGain


class FunctionVectorsEntry(ResultsModel):
    """One model: the heads' average indirect effects (``aie``: ``[layer - 1][head]``), the
    top heads, and (once the vector cells ran) the by-layer curve and the best layer."""

    model: str
    k: int
    n_prompts: int
    n_queries: int
    top_h: int
    seeds: list[int]
    tasks: int
    n_layers: int
    n_heads: int
    scoring: str
    aie: list[list[float]]
    top_heads: list[TopHead]
    accuracy_icl_prompts: Estimate
    accuracy_shuffled_prompts: Estimate
    n_prompts_total: int
    curve: list[CurvePoint] | None = None
    zero_shot: Estimate | None = None
    icl: Estimate | None = None
    best: BestLayer | None = None
    n_queries_total: int | None = None
    forwards: dict[str, Number]
    verdict: list[str]


class FunctionVectorsResults(ResultsModel):
    """results.json as this experiment reads it: its key, the rest kept as is."""

    function_vectors: list[FunctionVectorsEntry] | None = None


def dump_function_vectors(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """results.json ``function_vectors``, validated: the same entries, keys and values."""
    return [dump_as(FunctionVectorsEntry, entry) for entry in entries]
