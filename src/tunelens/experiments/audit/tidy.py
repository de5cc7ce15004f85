"""The audit's table for ``tunelens export``: condition x task x metric.

``kind`` is ``tuned`` or ``baseline`` (then ``baseline`` names it); condition columns
``definition``, ``examples``, ``instances_per_task``, ``seed``, ``encoding``; ``level``
is ``task``, ``category`` or ``overall`` and ``name`` the task or category; ``metric``
is ``em``, ``rouge_l`` or ``in_label_space`` (percent of answers inside the task's label
space; only where there is one, so free-text tasks have no such row); then the value
columns of
:func:`tunelens.report.tidy.measure_row`. ``instances_per_task`` is text (``5`` or
``full``), so the column holds one type.

Token distribution shift (results.json ``audit_token_shift``) adds, per tuned condition,
the metrics ``tokens_unshifted``, ``tokens_marginal`` and ``tokens_shifted`` (percent of
the tuned output's tokens the untuned model ranks 1, 2-3, lower; ``overall`` with its
interval over tasks, ``task`` without) and ``tokens_shifted_format_like`` (overall).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tunelens.api.results import parse_file
from tunelens.experiments.audit.experiment import BASELINES
from tunelens.experiments.audit.results import AuditResults
from tunelens.measures.token_shift import BUCKETS
from tunelens.report.tidy import Row, measure_row

__all__ = ["audit_rows", "tidy_rows", "token_shift_rows"]


def tidy_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows from results.json data (the audit's keys, read typed)."""
    return audit_rows(parse_file(AuditResults, results, what="results"))


METRICS = ("em", "rouge_l", "in_label_space")


def _metric_rows(base: Row, scores: Any) -> Iterator[Row]:
    """One row per metric the scores hold (``in_label_space`` is absent or null without
    a label space, and then has no row)."""
    for metric in METRICS:
        value = getattr(scores, metric, None)
        if metric != "in_label_space" or value is not None:
            yield measure_row(base, "metric", metric, value)


def _summary_rows(base: Row, summary: Any) -> Iterator[Row]:
    """A summary's scores overall, per category and per task (every metric each)."""
    yield from _metric_rows({**base, "level": "overall", "name": ""}, summary)
    for category, scores in sorted(summary.per_category.items()):
        yield from _metric_rows({**base, "level": "category", "name": category}, scores)
    for task, scores in sorted(summary.per_task.items()):
        yield from _metric_rows({**base, "level": "task", "name": task}, scores)


def _tuned(c: Any) -> Row:
    """The columns of a tuned condition."""
    return {
        "kind": "tuned",
        "baseline": "",
        "definition": c.definition,
        "examples": c.examples,
        "instances_per_task": str(c.instances_per_task),
        "seed": c.seed,
        "encoding": c.encoding or "",
    }


def token_shift_rows(results: AuditResults) -> Iterator[Row]:
    """Per tuned condition: its token-shift shares overall (with intervals) and per task."""
    if results.audit_token_shift is None:
        return
    for row in results.audit_token_shift.conditions:
        base = _tuned(row.condition)
        for bucket in BUCKETS:
            overall = {**base, "level": "overall", "name": ""}
            yield measure_row(overall, "metric", f"tokens_{bucket}", getattr(row, bucket))
            for task, unit in sorted((row.per_unit or {}).items()):
                at_task = {**base, "level": "task", "name": task}
                yield measure_row(at_task, "metric", f"tokens_{bucket}", getattr(unit, bucket))
        overall = {**base, "level": "overall", "name": ""}
        yield measure_row(overall, "metric", "tokens_shifted_format_like", row.format_like)


def audit_rows(results: AuditResults) -> list[Row]:
    """Every tuned condition's scores, then every baseline's (per evaluation encoding), then
    the token shift of every tuned condition."""
    rows: list[Row] = []
    empty = {"definition": "", "examples": "", "instances_per_task": "", "seed": None}
    for entry in results.audit or []:
        rows.extend(_summary_rows(_tuned(entry.condition), entry))
    by_encoding = results.baselines_by_encoding or (
        {"": results.baselines} if results.baselines is not None else {}
    )
    for encoding, baselines in by_encoding.items():
        for name in BASELINES:
            summary = getattr(baselines, name, None)
            if summary is not None:
                base = {"kind": "baseline", "baseline": name, **empty, "encoding": encoding}
                rows.extend(_summary_rows(base, summary))
    rows.extend(token_shift_rows(results))
    return rows
