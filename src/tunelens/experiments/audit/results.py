"""The audit experiment's typed results: results.json ``audit`` (one entry per tuning
condition, seed and evaluation encoding), ``baselines`` (and ``baselines_by_encoding``),
``audit_format_share``, ``audit_verdict``, ``audit_label_spaces``,
``audit_definition_blind_bound``, ``audit_token_shift`` and ``audit_controls`` (the
generic pieces are :mod:`tunelens.api.results`).

:func:`dump_audit` is what the aggregator writes through; :class:`AuditResults` is how
the report and ``tunelens export`` read the keys back (each one optional there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.api.results import ResultsModel, Stat, TuningInfo, dump_as
from tunelens.api.token_shift import TokenShift

__all__ = [
    "RESULTS_KEYS",
    "AuditBound",
    "AuditCategoryScores",
    "AuditCondition",
    "AuditControlComparison",
    "AuditControlsRow",
    "AuditEntry",
    "AuditEvaluation",
    "AuditFormatShareRow",
    "AuditLabelSpace",
    "AuditResults",
    "AuditSections",
    "AuditSummary",
    "AuditTaskScores",
    "AuditTokenShift",
    "AuditTokenShiftRow",
    "AuditTraining",
    "AuditVerdict",
    "Baselines",
    "FormatShare",
    "MetricShares",
    "MetricStats",
    "RandomBaseline",
    "dump_audit",
]


class AuditTaskScores(ResultsModel):
    """A task's scores; ``in_label_space``: percent of its answers that are one of its
    labels (absent for a free-text task, or from before the share existed)."""

    em: float | None
    rouge_l: float | None
    in_label_space: float | None = None


class AuditCategoryScores(ResultsModel):
    """A category's scores; ``headline``: Tk-Instruct's metric for it (EM or ROUGE-L);
    ``in_label_space`` over its tasks with a label space (absent where none has one)."""

    em: Stat
    rouge_l: Stat
    tasks: int
    headline_metric: str | None = None
    headline: Stat | None = None
    in_label_space: Stat | None = None


class MetricStats(ResultsModel):
    em: Stat
    rouge_l: Stat


class AuditSummary(ResultsModel):
    """EM and ROUGE-L overall (CI over tasks), per category and per task; a baseline's shape.

    ``in_label_space``: the percent (0-100) of answers whose EM-normalised text is one of
    their task's labels (whether the model answers in the task's format at all), a mean
    over tasks with the same interval as ``em``. Free-text tasks have no label space and
    are left out (``n`` counts the tasks that have one); null where no task has one.
    Optional: results written before it existed still load.
    """

    em: Stat
    rouge_l: Stat
    per_category: dict[str, AuditCategoryScores]
    per_task: dict[str, AuditTaskScores]
    in_label_space: Stat | None = None


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
    # "fixed" or "mixed" (train_encoding); absent from cells run before it existed (fixed)
    encoding: str | None = None


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
    tuning: TuningInfo | None = None  # method, adapted_modules, adapted


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


class AuditControlComparison(ResultsModel):
    """One control tuned at a row's setting against the original definitions and examples.

    ``difference``: mean(control - original) over held-out tasks per metric, with its
    interval, n and method; ``verdict`` (on exact match): "lower" / "higher" where the
    interval excludes zero, "equivalent" where it lies within +/- the row's margin,
    else "undecided" (then ``tasks_to_decide``: roughly how many tasks would make it
    exclude zero at this mean and spread).
    """

    control: str  # simplified | delusive | no_definition
    definition: str
    examples: str
    difference: dict[str, Stat]
    verdict: str
    decided: bool
    tasks_to_decide: int | None = None
    text: str


class AuditControlsRow(ResultsModel):
    """results.json ``audit_controls``: per (encoding, instances_per_task, seed), each
    control against tuning on the original definitions and examples."""

    encoding: str
    instances_per_task: int | str
    seed: int
    margin: float  # EM points: an interval within +/- margin rules out a practical gap
    controls: list[AuditControlComparison]


class AuditLabelSpace(ResultsModel):
    """A held-out task's label space: labels, source (header/definition/instances), unseen."""

    labels: list[str] | None
    source: str | None
    unseen: list[str]


class AuditBound(ResultsModel):
    """The best EM of any definition-blind method on the evaluated held-out instances."""

    em: float
    applies_to: str


class AuditTokenShiftRow(TokenShift):
    """One tuned condition's token distribution shift (its evaluation encoding included)."""

    condition: AuditCondition


class AuditTokenShift(ResultsModel):
    """results.json ``audit_token_shift``: along each tuned condition's greedy output on the
    held-out prompts, how the untuned model ranks each token (Lin et al. 2023).

    ``definition``: the buckets, positions and statistic in words; ``verdict``: the
    sentence for the tuning with the original definition and examples; ``conditions``:
    one row per tuned condition, seed and encoding. Absent from results written before
    the measure existed, or where no cell carries ranks.
    """

    definition: dict[str, str]
    verdict: str
    conditions: list[AuditTokenShiftRow]


class AuditSections(ResultsModel):
    """The audit experiment's keys of results.json."""

    audit: list[AuditEntry]
    baselines: Baselines
    audit_format_share: list[AuditFormatShareRow]
    baselines_by_encoding: dict[str, Baselines] | None = None
    audit_verdict: list[AuditVerdict] | None = None
    audit_label_spaces: dict[str, AuditLabelSpace] | None = None
    audit_definition_blind_bound: AuditBound | None = None
    audit_token_shift: AuditTokenShift | None = None
    audit_controls: list[AuditControlsRow] | None = None


class AuditResults(ResultsModel):
    """results.json as the audit reads it back: its keys, each optional; the rest as is."""

    audit: list[AuditEntry] | None = None
    baselines: Baselines | None = None
    audit_format_share: list[AuditFormatShareRow] | None = None
    baselines_by_encoding: dict[str, Baselines] | None = None
    audit_verdict: list[AuditVerdict] | None = None
    audit_label_spaces: dict[str, AuditLabelSpace] | None = None
    audit_definition_blind_bound: AuditBound | None = None
    audit_token_shift: AuditTokenShift | None = None
    audit_controls: list[AuditControlsRow] | None = None


RESULTS_KEYS: tuple[str, ...] = tuple(AuditSections.model_fields)
"""The audit's top-level keys of results.json, in the order the report has always used."""


def dump_audit(sections: Mapping[str, Any]) -> dict[str, Any]:
    """The audit's results.json keys (``audit``, ``baselines``, ``audit_format_share``, ...)."""
    return dump_as(AuditSections, sections)
