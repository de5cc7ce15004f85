"""Typed results: pydantic models of every section of results.json and decide.json.

Each model names the keys its producer writes today (and README documents);
models allow extra keys, so an experiment can add values without touching
them and the report shows what it does not know as plain tables. A number
that a producer may write as a whole number (counts, sizes, seeds) is typed
``int | float`` so that dumping keeps its JSON spelling.

Validating and dumping is lossless: ``dump_*(data)`` returns the same keys and
values as ``data`` (``exclude_unset``: an optional key absent from the input
stays absent, a ``null`` stays ``null``). The aggregators write their sections
through these functions, so a renamed or missing key fails where it is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditCategoryScores",
    "AuditCondition",
    "AuditEntry",
    "AuditFormatShareRow",
    "AuditSections",
    "AuditSummary",
    "AuditTaskScores",
    "Baselines",
    "ConvergenceAccuracy",
    "ConvergenceCondition",
    "ConvergenceEntry",
    "ConvergenceLayer",
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
    "DecideVerdict",
    "FormatShare",
    "KComparison",
    "KComparisonLayer",
    "LayerStats",
    "MetricShares",
    "RandomBaseline",
    "ResultsModel",
    "SeedStats",
    "Stat",
    "StudyResults",
    "WilcoxonTest",
    "WorldEval",
    "dump_audit",
    "dump_convergence",
    "dump_decide",
    "dump_study",
    "dump_world_eval",
]

Number = Union[int, float]  # noqa: UP007 (a runtime alias; pydantic keeps int as int)
M = TypeVar("M", bound="ResultsModel")


class ResultsModel(BaseModel):
    """Base of every results model: extra keys allowed, lossless :meth:`dump`."""

    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict[str, Any]:
        """JSON-ready dict of exactly the keys that were set (validated or constructed)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Stat(ResultsModel):
    """A summary: ``{"mean": x, "ci": [lo, hi]}`` (95% bootstrap CI; null = non-finite)."""

    mean: float | None
    ci: list[float | None] = Field(min_length=2, max_length=2)


# ---------------------------------------------------------------- convergence


class WilcoxonTest(ResultsModel):
    """Paired one-sided signed-rank test across pairs; ``p_holm``: Holm-corrected over layers."""

    statistic: float | None
    p: float | None
    p_holm: float | None
    effect: float | None


class LayerStats(ResultsModel):
    """Per-layer cosine summaries and tests (the per-seed layers have no CKA)."""

    layer: int
    cos_icl_it: Stat
    cos_anchor_icl: Stat
    cos_anchor_it: Stat
    wilcoxon: dict[str, WilcoxonTest]


class ConvergenceLayer(LayerStats):
    """A pooled layer: cosines, tests and linear CKA of each pair."""

    cka_icl_it: float | None
    cka_anchor_icl: float | None
    cka_anchor_it: float | None


class SeedStats(ResultsModel):
    seed: int
    n_pairs: int
    layers: list[LayerStats]


class ConvergenceCondition(ResultsModel):
    """The factor values that name a condition (seed excluded)."""

    model: str
    k: int
    flip_fraction: float
    relevance: str
    definition: bool
    control: str


class ConvergenceAccuracy(ResultsModel):
    """Exact-match accuracy (0-100) of the three predictions."""

    anchor: Stat
    icl: Stat
    it: Stat


class KComparisonLayer(ResultsModel):
    """Per layer: mean ICL-IT cosine difference (this k - the larger k), two-sided Wilcoxon."""

    layer: int
    difference: float | None
    statistic: float | None
    p: float | None
    effect: float | None
    p_holm: float | None  # null at layer 0 (the embeddings, outside the Holm family)


class KComparison(ResultsModel):
    """ICL-IT cosines at this k against the largest k of the same condition, paired."""

    against_k: int
    paired_by: str
    n_pairs: int
    seeds: list[int]
    layers: list[KComparisonLayer]


class ConvergenceEntry(ResultsModel):
    """One entry of results.json ``convergence``: a condition pooled over seeds."""

    condition: ConvergenceCondition
    n_pairs: int
    seeds: list[int] | None = None
    accuracy: ConvergenceAccuracy
    layers: list[ConvergenceLayer]
    per_seed: list[SeedStats]
    k_comparison: KComparison | None = None  # when the condition also ran at a larger k


# ---------------------------------------------------------------- audit


class AuditTaskScores(ResultsModel):
    em: float | None
    rouge_l: float | None


class AuditCategoryScores(ResultsModel):
    em: Stat
    rouge_l: Stat
    tasks: int


class MetricStats(ResultsModel):
    em: Stat
    rouge_l: Stat


class AuditSummary(ResultsModel):
    """EM and ROUGE-L overall (CI over tasks), per category and per task; a baseline's shape."""

    em: Stat
    rouge_l: Stat
    per_category: dict[str, AuditCategoryScores]
    per_task: dict[str, AuditTaskScores]


class RandomBaseline(AuditSummary):
    """The exact expected score of a uniform guess; ``draw``: one seeded draw's scores."""

    draw: MetricStats | None = None


class AuditCondition(ResultsModel):
    definition: str
    examples: str
    instances_per_task: int | str
    seed: int


class AuditEntry(AuditSummary):
    """One entry of results.json ``audit``: one tuning condition and seed."""

    condition: AuditCondition


class Baselines(ResultsModel):
    """results.json ``baselines``: each shaped like an audit entry (without a condition)."""

    untuned: AuditSummary | None = None
    random: RandomBaseline | None = None
    copy_input: AuditSummary | None = None
    copy_demo: AuditSummary | None = None


class FormatShare(Stat):
    """(condition - untuned) / (original - untuned); ``tuning_gain``: original - untuned."""

    tuning_gain: float | None


class MetricShares(ResultsModel):
    em: FormatShare
    rouge_l: FormatShare


class AuditFormatShareRow(ResultsModel):
    """results.json ``audit_format_share``: per (instances_per_task, seed), each control's share."""

    instances_per_task: int | str
    seed: int
    simplified: MetricShares | None = None
    delusive: MetricShares | None = None
    no_definition: MetricShares | None = None
    random_guess: MetricShares | None = None


class AuditSections(ResultsModel):
    """The audit experiment's keys of results.json."""

    audit: list[AuditEntry]
    baselines: Baselines
    audit_format_share: list[AuditFormatShareRow]


# ---------------------------------------------------------------- results.json


class StudyResults(ResultsModel):
    """results.json: the sections present, plus the common keys (every one optional)."""

    convergence: list[ConvergenceEntry] | None = None
    audit: list[AuditEntry] | None = None
    baselines: Baselines | None = None
    audit_format_share: list[AuditFormatShareRow] | None = None
    world_eval: WorldEval | None = None
    spec: dict[str, Any] | None = None
    tunelens_version: str | None = None
    environment: dict[str, Any] | None = None


# ---------------------------------------------------------------- world eval


class WorldEval(ResultsModel):
    """``tunelens world eval --json``: accuracies (0-100) per k, overall and per rule family."""

    shots: dict[str, float]
    random_baseline: float
    tasks: int
    queries_per_task: int
    per_family: dict[str, dict[str, float]]


# ---------------------------------------------------------------- decide.json


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


# ---------------------------------------------------------------- validate and dump


def _dump(model: type[M], data: Any) -> dict[str, Any]:
    return model.model_validate(data).dump()


def dump_convergence(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """results.json ``convergence``, validated: the same entries, keys and values."""
    return [_dump(ConvergenceEntry, entry) for entry in entries]


def dump_audit(sections: Mapping[str, Any]) -> dict[str, Any]:
    """The audit's results.json keys (``audit``, ``baselines``, ``audit_format_share``)."""
    return _dump(AuditSections, sections)


def dump_study(results: Mapping[str, Any]) -> dict[str, Any]:
    """A whole results.json, validated."""
    return _dump(StudyResults, results)


def dump_world_eval(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tunelens world eval --json`` object, validated."""
    return _dump(WorldEval, data)


def dump_decide(data: Mapping[str, Any]) -> dict[str, Any]:
    """decide.json, validated."""
    return _dump(DecideResults, data)
