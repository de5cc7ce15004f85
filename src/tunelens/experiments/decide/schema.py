"""decide.json's typed models (the whole file is the decide experiment's results; the
generic pieces are :mod:`tunelens.api.results`). The aggregation that fills it is
:mod:`tunelens.experiments.decide.results`; :func:`dump_decide` is what ``run_decide``
writes through, and the page and ``tunelens export`` read it back as :class:`DecideResults`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.api.results import Number, ResultsModel, Stat, TuningInfo, dump_as
from tunelens.api.token_shift import TokenShift

__all__ = [
    "ControlShare",
    "DecideBest",
    "DecideComparison",
    "DecideComparisons",
    "DecideCompute",
    "DecideConfusion",
    "DecideCosts",
    "DecideCurves",
    "DecideFormatShare",
    "DecideMethod",
    "DecideModelInfo",
    "DecideResults",
    "DecideSimilarity",
    "DecideSplit",
    "DecideTask",
    "DecideTrain",
    "DecideVerdict",
    "PerThousandItems",
    "SimilarityLayer",
    "TooWide",
    "dump_decide",
]


class DecideTask(ResultsModel):
    name: str
    source: str | None
    definition: str | None
    labels: list[str]
    examples: int


class DecideModelInfo(ResultsModel):
    name: str
    non_embedding_parameters: int | None
    layers: int | None
    width: int | None
    total_parameters: int | None = None
    sizes_from: str | None = None


class DecideCosts(ResultsModel):
    source: str
    labels: list[str]
    predicted: list[str]
    costs: list[list[Number]]


class DecideSplit(ResultsModel):
    seed: int
    stratified_by: str
    test: int
    demo_pool: int
    tuning_pool: int
    per_label: dict[str, dict[str, int]]


class DecideConfusion(ResultsModel):
    labels: list[str]
    predicted: list[str]
    counts: list[list[Number]]  # expected (fractional) counts for the label-space guess


class PerThousandItems(ResultsModel):
    prompt_tokens_per_item: float | None
    prompt_tokens: float | None
    answer_tokens: float | None
    flops: float | None


class DecideCompute(ResultsModel):
    per_1000_items: PerThousandItems
    training: dict[str, Number | None] | None = None  # tokens, flops (tuned methods only)


class DecideTrain(ResultsModel):
    pairs: int
    steps: int
    final_loss: float | None
    tuning: TuningInfo | None = None  # adapted_modules and adapted


class DecideMethod(ResultsModel):
    id: str
    family: str
    name: str
    examples: int
    n_items: int
    accuracy: Stat
    confusion: DecideConfusion
    out_of_space: int
    cost_per_1000: Stat | None = None
    compute: DecideCompute
    train: DecideTrain | None = None
    # tuned methods answering by generation: the untuned model's ranks along their answers
    token_shift: TokenShift | None = None


class DecideCurves(ResultsModel):
    zero_shot: str
    label_guess: str
    icl: list[tuple[int, str]]
    tuning: list[tuple[int, str]]
    controls: list[tuple[int, str]]


class DecideComparison(ResultsModel):
    """a vs b on the same items: ``difference`` = a - b (points), the winner or null."""

    a: str
    b: str
    difference: Stat
    winner: str | None
    items_to_resolve: int | None
    examples: int | None = None
    tuning_pays_back_after_items: float | None = None


class DecideComparisons(ResultsModel):
    vs_zero_shot: list[DecideComparison]
    at_equal_size: list[DecideComparison]


class DecideBest(ResultsModel):
    id: str
    indistinguishable: list[str]
    cheapest_at_equal_quality: str
    versus: list[DecideComparison]


class ControlShare(ResultsModel):
    share: Stat
    vs_tuned: Stat


class DecideFormatShare(ResultsModel):
    tuned: str
    zero_shot: str
    tuning_gain: Stat
    controls: dict[str, ControlShare]


class SimilarityLayer(ResultsModel):
    layer: int
    icl_it: Stat
    anchor_icl: Stat
    anchor_it: Stat


class DecideSimilarity(ResultsModel):
    k: int
    n_items: int
    layers: list[SimilarityLayer]
    accuracy: dict[str, Stat]


class TooWide(ResultsModel):
    a: str
    b: str
    difference: Stat
    width: float | None
    items_to_resolve: int | None


class DecideVerdict(ResultsModel):
    summary: list[str]
    by_size: list[str]
    by_size_table: list[dict[str, Any]]
    format: list[str]
    similarity: str
    too_wide: list[TooWide]
    notes: list[str]


class DecideResults(ResultsModel):
    """decide.json."""

    tunelens_version: str
    environment: dict[str, Any]
    task: DecideTask
    model: DecideModelInfo
    config: dict[str, Any]
    costs: DecideCosts | None
    split: DecideSplit
    methods: list[DecideMethod]
    curves: DecideCurves
    comparisons: DecideComparisons
    best: DecideBest
    format_share: DecideFormatShare | None = None
    similarity: DecideSimilarity | None = None
    notes: list[str]
    verdict: DecideVerdict


def dump_decide(data: Mapping[str, Any]) -> dict[str, Any]:
    """decide.json, validated."""
    return dump_as(DecideResults, data)
