"""decide's table for ``tunelens export`` (from decide.json): method x metric.

``method`` (id), ``family``, ``name``, ``examples``, ``n_items``, ``metric``
(``accuracy``, ``cost_per_1000``; for tuned methods that generate, ``tokens_unshifted``,
``tokens_marginal``, ``tokens_shifted`` and ``tokens_shifted_format_like``: token
distribution shift, percents with intervals over test items), then the value columns of
:func:`tunelens.report.tidy.measure_row`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.api.results import parse_file
from tunelens.experiments.decide.schema import DecideResults
from tunelens.measures.token_shift import BUCKETS
from tunelens.report.tidy import Row, measure_row

__all__ = ["decide_rows", "tidy_rows"]


def tidy_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows from decide.json data, read typed."""
    return decide_rows(parse_file(DecideResults, results, what="decide"))


def decide_rows(results: DecideResults) -> list[Row]:
    """Each method's accuracy, and its error cost where the run had costs."""
    rows: list[Row] = []
    for m in results.methods:
        base = {
            "method": m.id,
            "family": m.family,
            "name": m.name,
            "examples": m.examples,
            "n_items": m.n_items,
        }
        rows.append(measure_row(base, "metric", "accuracy", m.accuracy))
        if m.cost_per_1000 is not None:
            rows.append(measure_row(base, "metric", "cost_per_1000", m.cost_per_1000))
        shift = m.token_shift
        if shift is not None:
            for bucket in BUCKETS:
                rows.append(measure_row(base, "metric", f"tokens_{bucket}", getattr(shift, bucket)))
            rows.append(
                measure_row(base, "metric", "tokens_shifted_format_like", shift.format_like)
            )
    return rows
