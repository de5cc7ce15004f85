"""The convergence experiment's typed results: results.json ``convergence``, one entry per
condition pooled over seeds (the generic pieces are :mod:`tunelens.api.results`).

:func:`dump_convergence` is what the aggregator writes through (a renamed or missing key
fails where it is made); :class:`ConvergenceResults` is how the report and ``tunelens
export`` read the key back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunelens.api.results import ResultsModel, Stat, TuningInfo, WilcoxonTest, dump_as

__all__ = [
    "AgainstRandomInit",
    "Behaviour",
    "ConvergenceAccuracy",
    "ConvergenceCondition",
    "ConvergenceEntry",
    "ConvergenceLayer",
    "ConvergenceResults",
    "ConvergenceTuning",
    "DeutchTest",
    "KComparison",
    "KComparisonLayer",
    "LabelAccuracy",
    "LayerStats",
    "NextTokenAccuracy",
    "PatchingRow",
    "RandomInitLayer",
    "RandomInitSeries",
    "Rec2FTP",
    "ScoringNote",
    "SeedAgreementRow",
    "SeedStats",
    "UpdateLayer",
    "UpdateSeries",
    "UpdateSimilarity",
    "dump_convergence",
]

ConvergenceTuning = TuningInfo  # the tuning factor of a condition: the shared model


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


class UpdateLayer(ResultsModel):
    """One layer of a SimAOU series: the mean over pairs of the cosine of the ICL and IT
    updates (unit-scaled vectors minus the zero-shot one), its mismatched-pair floor
    (pair i's ICL update against pair j's IT update, j != i, same task where possible),
    and the one-sided test SimAOU > floor on cluster means (Holm over layers 1..).
    Null means where the updates are zero (layer 0, and attention's layer 0, which no
    block writes)."""

    layer: int
    simaou: Stat
    floor: Stat
    above_floor: WilcoxonTest


class UpdateSeries(ResultsModel):
    """SimAOU per layer over ``n_pairs`` pairs pooled over seeds."""

    n_pairs: int
    layers: list[UpdateLayer]


class Rec2FTP(ResultsModel):
    """Rec2FTP = ``both_fixed / it_fixed x 100`` (Dai et al. 2023) with its counts.

    ``zs_wrong``: pairs the zero-shot (anchor) answer got wrong; ``it_fixed``: of
    those, IT right (the denominator); ``icl_fixed``: zero-shot wrong, ICL right;
    ``both_fixed``: zero-shot wrong, IT and ICL right. ``floor``: the same share with
    each IT-fixed pair's ICL answer replaced by those of the other zero-shot-wrong pairs
    (same task where any), what ICL's fixes give without any overlap; ``above_floor``:
    Rec2FTP minus the floor, in points. All 0-100 with cluster-bootstrap CIs; null
    with ``undecided`` (the reason) when ``it_fixed < min_denominator``.
    """

    n_pairs: int
    zs_wrong: int
    it_fixed: int
    icl_fixed: int
    both_fixed: int
    min_denominator: int
    value: Stat | None = None
    floor: Stat | None = None
    above_floor: Stat | None = None
    undecided: str | None = None


class RandomInitLayer(ResultsModel):
    """One layer: the random-initialised copy's SimAOU, trained minus copy (paired by seed
    and pair: the same draws), and the one-sided test trained > copy (Holm over 1..)."""

    layer: int
    random_init: Stat
    difference: Stat
    above_random_init: WilcoxonTest


class RandomInitSeries(ResultsModel):
    n_pairs: int
    seeds: list[int]
    layers: list[RandomInitLayer]


class DeutchTest(ResultsModel):
    """Deutch et al. (2024)'s test of a SimAOU series: layers where the trained model's
    SimAOU exceeds its mismatched-pair floor, its random-initialised copy, and both
    (``passes_layers``), each at Holm-corrected p < ``alpha``."""

    alpha: float
    above_floor_layers: list[int]
    above_random_init_layers: list[int]
    passes_layers: list[int]


class AgainstRandomInit(ResultsModel):
    """A real condition against its untrained copy (control ``random_init``)."""

    attention: RandomInitSeries | None = None
    residual: RandomInitSeries | None = None
    attention_test: DeutchTest | None = None
    residual_test: DeutchTest | None = None
    rec2ftp: Rec2FTP | None = None  # the copy's Rec2FTP, beside this condition's


class UpdateSimilarity(ResultsModel):
    """Update-direction similarity (Dai et al. 2023), convergence code version 12 on.

    ``attention``: SimAOU of each block's attention output (block b at layer b + 1);
    ``residual``: of the residual stream (layer 0 = embeddings); ``attention_note``:
    why the attention series is missing, where it is; ``rec2ftp``; and on real
    conditions whose random-init copy ran, ``against_random_init``.
    """

    method: str
    attention: UpdateSeries | None = None
    residual: UpdateSeries | None = None
    attention_note: str | None = None
    rec2ftp: Rec2FTP | None = None
    against_random_init: AgainstRandomInit | None = None


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
    tuning: TuningInfo | None = None
    k_comparison: KComparison | None = None  # when the condition also ran at a larger k
    update_similarity: UpdateSimilarity | None = None  # code version 12 on


class ConvergenceResults(ResultsModel):
    """results.json as the convergence experiment reads it: its key, the rest kept as is."""

    convergence: list[ConvergenceEntry] | None = None


def dump_convergence(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """results.json ``convergence``, validated: the same entries, keys and values."""
    return [dump_as(ConvergenceEntry, entry) for entry in entries]
