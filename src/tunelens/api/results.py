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
from typing import Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditCategoryScores",
    "AuditCondition",
    "AuditEntry",
    "AuditFormatShareRow",
    "AuditSections",
    "AuditSummary",
    "AuditTaskScores",
    "AuditTraining",
    "AuditEvaluation",
    "AuditVerdict",
    "AuditLabelSpace",
    "AuditBound",
    "Baselines",
    "ConvergenceAccuracy",
    "ConvergenceCondition",
    "ConvergenceEntry",
    "ConvergenceLayer",
    "ConvergenceTuning",
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
    "LabelAccuracy",
    "LayerStats",
    "MetricShares",
    "NextTokenAccuracy",
    "PatchingRow",
    "ScoringNote",
    "RandomBaseline",
    "ResultsModel",
    "SeedAgreementRow",
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
    """Per-layer cosine summaries and tests (the per-seed layers have no CKA).

    Raw cosine; centered and standardized cosine (centered on the mean state of
    the layer over every state of the condition; standardized also z-scores each
    dimension); ``floor_*``: the centered cosine of mismatched pairs (state i of
    one side against state j != i of the other, same task where possible), with
    ``floor_raw_*`` / ``floor_standardized_*`` the floors of the other two
    measures. ``wilcoxon["icl_it>floor"]`` tests matched centered ICL-IT
    cosines against their floor. Layer 0 (the embeddings) is outside every
    Holm family: its ``p_holm`` is null.
    """

    layer: int
    cos_icl_it: Stat
    cos_anchor_icl: Stat
    cos_anchor_it: Stat
    cos_centered_icl_it: Stat | None = None
    cos_centered_anchor_icl: Stat | None = None
    cos_centered_anchor_it: Stat | None = None
    cos_standardized_icl_it: Stat | None = None
    cos_standardized_anchor_icl: Stat | None = None
    cos_standardized_anchor_it: Stat | None = None
    floor_icl_it: Stat | None = None
    floor_anchor_icl: Stat | None = None
    floor_anchor_it: Stat | None = None
    floor_raw_icl_it: Stat | None = None
    floor_raw_anchor_icl: Stat | None = None
    floor_raw_anchor_it: Stat | None = None
    floor_standardized_icl_it: Stat | None = None
    floor_standardized_anchor_icl: Stat | None = None
    floor_standardized_anchor_it: Stat | None = None
    wilcoxon: dict[str, WilcoxonTest]


class ConvergenceLayer(LayerStats):
    """A pooled layer: cosines, tests and linear CKA of each pair (biased and debiased).

    ``cka_*`` is the biased HSIC estimator (Kornblith et al. 2019), which reads
    about 0.2 on independent data at 30 items; ``cka_debiased_*`` uses the
    unbiased HSIC (Song et al. 2012), centred on 0 there. Means over seeds.
    """

    cka_icl_it: float | None
    cka_anchor_icl: float | None
    cka_anchor_it: float | None
    cka_debiased_icl_it: float | None = None
    cka_debiased_anchor_icl: float | None = None
    cka_debiased_anchor_it: float | None = None


class SeedStats(ResultsModel):
    seed: int
    n_pairs: int
    layers: list[LayerStats]


class ConvergenceCondition(ResultsModel):
    """The factor values that name a condition (seed excluded).

    ``tuning``: the tuning factor, e.g. 'lora r=8 q_proj,v_proj' or 'full'.
    """

    model: str
    k: int
    flip_fraction: float
    relevance: str
    definition: bool
    control: str
    tuning: str | None = None


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


class PatchingRow(ResultsModel):
    """The anchor forward with the ``source`` state ("icl" or "it") patched in after ``layer``.

    ``accuracy``: label accuracy (0-100) of the patched forward (the label whose
    whole continuation scores highest is a reference; the continuation reads the
    patched state through the cache); ``gain_share``: (patched - anchor) / (icl -
    anchor) of that accuracy, null when ICL gains nothing; ``kl_to_icl``:
    KL(ICL || patched) of the label distributions, in nats. Results written
    before convergence code version 11 read the first label token instead.
    """

    layer: int
    source: str
    accuracy: Stat
    gain_share: Stat
    kl_to_icl: Stat


class LabelAccuracy(ResultsModel):
    """Per forward (anchor, ICL, IT): share of pairs (0-100) whose best label is a reference."""

    anchor: Stat
    icl: Stat
    it: Stat


class NextTokenAccuracy(ResultsModel):
    """The first-token reading of results.json written before convergence code version 11
    (kept readable; it collapsed labels that share a first token, e.g. SentencePiece's
    ``" 0"`` / ``" 1"``)."""

    anchor: Stat
    icl: Stat
    it: Stat


class ScoringNote(ResultsModel):
    """How the behaviour was read: ``method`` in words, and how many pairs were scored by
    label log-likelihood (``label_rows``) or, for free-text tasks, by the first-token
    distribution over the vocabulary (``first_token_rows``)."""

    method: str
    label_rows: int
    first_token_rows: int


class Behaviour(ResultsModel):
    """The label distribution of each forward: softmax over the task's labels of each
    label's summed continuation log-likelihood (free-text tasks: first-token distribution).

    ``kl_icl_it`` = KL(ICL || IT) and ``kl_icl_anchor`` = KL(ICL || anchor) in nats;
    ``agreement``: share of pairs where the ICL and IT generated predictions are
    equal (normalised); ``label_accuracy``: argmax label is a reference, 0-100;
    ``kl_anchor_minus_it``: the paired difference KL(ICL || anchor) - KL(ICL ||
    IT) (> 0: IT is closer to ICL than the anchor); ``icl_gain`` / ``it_gain``:
    label accuracy minus the anchor's, in points. Older results.json hold
    ``next_token_accuracy`` (first-token reading) instead of ``label_accuracy``.
    """

    kl_icl_it: Stat
    kl_icl_anchor: Stat
    agreement: Stat
    scoring: ScoringNote | None = None
    label_accuracy: LabelAccuracy | None = None
    next_token_accuracy: NextTokenAccuracy | None = None  # before code version 11
    kl_anchor_minus_it: Stat | None = None
    icl_gain: Stat | None = None
    it_gain: Stat | None = None


class SeedAgreementRow(ResultsModel):
    """Layers where a comparison is significant (p_holm < alpha), pooled and per seed."""

    alpha: float
    pooled_layers: list[int]
    per_seed_layers: dict[str, list[int]]
    holds_in_every_seed: list[int]


class ConvergenceTuning(ResultsModel):
    """The tuning configuration of the condition and what it adapted.

    ``adapted``: ``requested`` target modules, the resolved ``modules``, the
    ``weights`` they hold in words (GPT-2's fused ``c_attn``: "q, k, v
    together") and ``n_modules`` adapted; full fine-tuning: every weight.
    ``adapted_modules``: the resolved module suffixes (``["all"]`` for full
    fine-tuning), e.g. ``["qkv_proj"]`` on Phi-3 under the default q/v request.
    """

    method: str | None = None
    adapted_modules: list[str] | None = None
    adapted: dict[str, Any] | None = None


class ConvergenceEntry(ResultsModel):
    """One entry of results.json ``convergence``: a condition pooled over seeds.

    Pooled CIs are cluster bootstraps over (seed, demonstration set); pooled
    tests run on cluster means; ``per_seed`` has each seed's own tests and
    ``seed_agreement`` says whether a pooled finding holds in every seed.
    """

    condition: ConvergenceCondition
    n_pairs: int
    n_clusters: int | None = None
    seeds: list[int] | None = None
    accuracy: ConvergenceAccuracy
    layers: list[ConvergenceLayer]
    per_seed: list[SeedStats]
    seed_agreement: dict[str, SeedAgreementRow] | None = None
    behaviour: Behaviour | None = None
    patching: list[PatchingRow] | None = None
    tuning: ConvergenceTuning | None = None
    k_comparison: KComparison | None = None  # when the condition also ran at a larger k


# ---------------------------------------------------------------- audit


class AuditTaskScores(ResultsModel):
    em: float | None
    rouge_l: float | None


class AuditCategoryScores(ResultsModel):
    """A category's scores; ``headline``: Tk-Instruct's metric for it (EM or ROUGE-L)."""

    em: Stat
    rouge_l: Stat
    tasks: int
    headline_metric: str | None = None
    headline: Stat | None = None


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
    encoding: str | None = None  # evaluation encoding: definition_only | definition_examples


class AuditTraining(ResultsModel):
    """How a condition was tuned, as run (the manifest Tk-Instruct reproductions lack)."""

    effective_batch_size: int
    epochs: int
    steps: int
    learning_rate: float
    seed: int
    template: str


class AuditEvaluation(ResultsModel):
    """How held-out prompts were encoded and scored."""

    encoding: str
    template: str
    n_positive: int
    eval_instances_per_task: int


class AuditEntry(AuditSummary):
    """One entry of results.json ``audit``: one tuning condition, seed and evaluation encoding."""

    condition: AuditCondition
    training: AuditTraining | None = None
    evaluation: AuditEvaluation | None = None
    tuning: ConvergenceTuning | None = None  # method, adapted_modules, adapted (as convergence)


class Baselines(ResultsModel):
    """results.json ``baselines``: each shaped like an audit entry (without a condition)."""

    untuned: AuditSummary | None = None
    random: RandomBaseline | None = None
    copy_input: AuditSummary | None = None
    copy_demo: AuditSummary | None = None


class FormatShare(Stat):
    """(condition - untuned) / (original - untuned); ``tuning_gain``: original - untuned.

    ``mean`` / ``ci`` are null and ``verdict`` is "tuning gain not significant" where
    the paired interval of the gain (``gain``) includes zero.
    """

    tuning_gain: float | None
    gain: Stat | None = None
    verdict: str | None = None


class MetricShares(ResultsModel):
    em: FormatShare
    rouge_l: FormatShare


class AuditFormatShareRow(ResultsModel):
    """results.json ``audit_format_share``: per (instances_per_task, seed), each control's share."""

    instances_per_task: int | str
    seed: int
    encoding: str | None = None
    tuning_gain: dict[str, Stat] | None = None  # paired, per metric, with n and method
    simplified: MetricShares | None = None
    delusive: MetricShares | None = None
    no_definition: MetricShares | None = None
    random_guess: MetricShares | None = None


class AuditVerdict(ResultsModel):
    """One sentence per format-share row: shares, or "tuning gain not significant"."""

    instances_per_task: int | str
    seed: int
    encoding: str
    significant: bool
    decided: bool | None = None  # significant, or an interval within +/- 5 EM (no real gain)
    text: str


class AuditLabelSpace(ResultsModel):
    """A held-out task's label space: labels, source (header/definition/instances), unseen."""

    labels: list[str] | None
    source: str | None
    unseen: list[str]


class AuditBound(ResultsModel):
    """The best EM of any definition-blind method on the evaluated held-out instances."""

    em: float
    applies_to: str


class AuditSections(ResultsModel):
    """The audit experiment's keys of results.json."""

    audit: list[AuditEntry]
    baselines: Baselines
    audit_format_share: list[AuditFormatShareRow]
    baselines_by_encoding: dict[str, Baselines] | None = None
    audit_verdict: list[AuditVerdict] | None = None
    audit_label_spaces: dict[str, AuditLabelSpace] | None = None
    audit_definition_blind_bound: AuditBound | None = None


# ---------------------------------------------------------------- results.json


class StudyResults(ResultsModel):
    """results.json: the sections present, plus the common keys (every one optional)."""

    convergence: list[ConvergenceEntry] | None = None
    audit: list[AuditEntry] | None = None
    baselines: Baselines | None = None
    audit_format_share: list[AuditFormatShareRow] | None = None
    baselines_by_encoding: dict[str, Baselines] | None = None
    audit_verdict: list[AuditVerdict] | None = None
    audit_label_spaces: dict[str, AuditLabelSpace] | None = None
    audit_definition_blind_bound: AuditBound | None = None
    world_eval: WorldEval | None = None
    spec: dict[str, Any] | None = None
    tunelens_version: str | None = None
    environment: dict[str, Any] | None = None
    limit: int | None = None  # a limited run (--limit N): at most N items per task


# ---------------------------------------------------------------- world eval


class WorldEval(ResultsModel):
    """``tunelens world eval --json``: accuracies (0-100) per k, overall and per rule family."""

    shots: dict[str, float]
    random_baseline: float
    tasks: int
    queries_per_task: int
    per_family: dict[str, dict[str, float]]
    labels: Literal["original", "novel"] = "original"  # novel: label words never used as labels
    definition: bool = False  # the task definition came before the demonstrations


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
    tuning: ConvergenceTuning | None = None  # adapted_modules and adapted


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


def parse_file(model: type[M], data: Any, *, source: str, what: str) -> M:
    """``data`` read back as ``model`` (a results file), or a TunelensInputError naming the key.

    ``what`` names the file kind in the message ("results", "decide").
    """
    from pydantic import ValidationError

    from tunelens.errors import TunelensInputError

    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TunelensInputError(
            f"not a tunelens {what} file: {first['msg']}", source=source, where=where
        ) from None


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
