"""Error costs: what each (true label, predicted label) pair costs, and the expected cost.

A costs file gives the cost of answering ``predicted`` when the truth is
``true``, in any unit (euros, minutes of review); ``decide`` reports the
expected cost per 1,000 items of every method. Two formats:

* **CSV** (``.csv``) with a header naming the columns ``true``, ``predicted``
  and ``cost`` (in any order)::

      true,predicted,cost
      spam,ham,1
      ham,spam,20

* **YAML** (``.yaml``, ``.yml``; JSON is YAML too): a mapping true -> predicted -> cost::

      spam: {ham: 1}
      ham: {spam: 20}

Rules: labels must be labels of the task (exact strings; YAML keys are read as
written, so ``yes``, ``no`` and ``0`` stay strings); costs are finite
numbers >= 0; a pair given twice is an error. A missing **correct** pair
(true == predicted) costs 0. A missing **wrong** pair is an error: every
mistake needs a price, and a silent 0 would flatter the method that makes it.
A generated answer outside the label space is predicted ``(other)``; its cost
is the pair ``true -> (other)`` when the file gives one, else the largest cost
in that true label's row (an answer nobody can use is at least as bad as the
worst wrong label).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelens.errors import TunelensInputError
from tunelens.io import parse_json, parse_yaml, read_text

OTHER = "(other)"


@dataclass(frozen=True)
class CostMatrix:
    """Costs of every (true, predicted) pair over ``labels`` + ``(other)``."""

    labels: tuple[str, ...]
    costs: dict[tuple[str, str], float]
    source: str = ""

    def cost(self, true: str, predicted: str) -> float:
        return self.costs[(true, predicted)]

    def row(self, true: str) -> list[float]:
        """Costs of predicting each label (not ``(other)``) when the truth is ``true``."""
        return [self.costs[(true, p)] for p in self.labels]

    def to_json(self) -> dict[str, Any]:
        columns = [*self.labels, OTHER]
        return {
            "source": self.source,
            "labels": list(self.labels),
            "predicted": columns,
            "costs": [[self.costs[(t, p)] for p in columns] for t in self.labels],
        }


def _number(value: Any, source: str, where: str) -> float:
    if isinstance(value, bool) or value is None:
        raise TunelensInputError(
            f"cost must be a number, got {value!r}", source=source, where=where
        )
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise TunelensInputError(
            f"cost must be a number, got {value!r}", source=source, where=where
        ) from None
    if not math.isfinite(number) or number < 0:
        raise TunelensInputError(
            f"cost must be a finite number >= 0, got {value!r}", source=source, where=where
        )
    return number


def build_cost_matrix(
    entries: Sequence[tuple[str, str, Any, str]], labels: Sequence[str], source: str = ""
) -> CostMatrix:
    """A complete CostMatrix from (true, predicted, cost, where) entries; see the module rules."""
    labels = tuple(labels)
    known = set(labels)
    shown = ", ".join(repr(label) for label in labels)
    given: dict[tuple[str, str], float] = {}
    for true, predicted, value, where in entries:
        if true not in known:
            raise TunelensInputError(
                f"true label {true!r} is not a label of the task ({shown})",
                source=source,
                where=where,
            )
        if predicted not in known and predicted != OTHER:
            raise TunelensInputError(
                f"predicted label {predicted!r} is not a label of the task ({shown}) nor {OTHER!r}",
                source=source,
                where=where,
            )
        if (true, predicted) in given:
            raise TunelensInputError(
                f"the pair {true!r} -> {predicted!r} is given twice", source=source, where=where
            )
        given[(true, predicted)] = _number(value, source, where)
    costs: dict[tuple[str, str], float] = {}
    for true in labels:
        for predicted in labels:
            if (true, predicted) in given:
                costs[(true, predicted)] = given[(true, predicted)]
            elif true == predicted:
                costs[(true, predicted)] = 0.0
            else:
                raise TunelensInputError(
                    f"no cost for true {true!r} predicted {predicted!r}; every wrong pair "
                    "needs a cost",
                    source=source,
                )
        worst = max(costs[(true, p)] for p in labels)
        costs[(true, OTHER)] = given.get((true, OTHER), worst)
    return CostMatrix(labels, costs, source)


def _csv_entries(text: str, source: str) -> list[tuple[str, str, Any, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if sorted(header) != ["cost", "predicted", "true"]:
        raise TunelensInputError(
            f"CSV header must be the columns true, predicted, cost; found {header}",
            source=source,
            where="line 1",
        )
    reader.fieldnames = header
    entries = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row or any(v is None for v in row.values()):
            raise TunelensInputError(
                "expected 3 fields: true, predicted, cost", source=source, where=where
            )
        if all(not v.strip() for v in row.values()):
            continue
        entries.append((row["true"].strip(), row["predicted"].strip(), row["cost"], where))
    return entries


def _yaml_entries(text: str, source: str) -> list[tuple[str, str, Any, str]]:
    # Every scalar a string, so labels like yes / no / 0 / 1.0 stay as written; a pair
    # given twice is an error naming both lines (as in the CSV form).
    return _mapping_entries(parse_yaml(text, source=source, strings_only=True), source)


def _mapping_entries(data: Any, source: str) -> list[tuple[str, str, Any, str]]:
    if not isinstance(data, Mapping):
        raise TunelensInputError(
            "expected a mapping: true label -> predicted label -> cost", source=source
        )
    entries = []
    for true, row in data.items():
        if not isinstance(row, Mapping):
            raise TunelensInputError(
                "expected a mapping predicted label -> cost", source=source, where=f"{true!s}"
            )
        for predicted, value in row.items():
            entries.append((str(true), str(predicted), value, f"{true!s} -> {predicted!s}"))
    return entries


def load_costs(path: str | Path, labels: Sequence[str]) -> CostMatrix:
    """The cost matrix in ``path`` (CSV or YAML, by suffix) for a task with ``labels``."""
    path = Path(path)
    source = str(path)
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        entries = _csv_entries(text, source)
    elif suffix == ".json":
        entries = _mapping_entries(parse_json(text, source=source), source)
    elif suffix in (".yaml", ".yml"):
        entries = _yaml_entries(text, source)
    else:
        raise TunelensInputError("costs file must be .csv or .yaml/.yml (or .json)", source=source)
    return build_cost_matrix(entries, labels, source)


def item_costs(trues: Sequence[str], predicted: Sequence[str], matrix: CostMatrix) -> np.ndarray:
    """The cost of each (true, predicted) item; ``predicted`` holds labels or ``(other)``."""
    return np.array(
        [matrix.cost(t, p) for t, p in zip(trues, predicted, strict=True)], dtype=np.float64
    )


def guess_item_costs(trues: Sequence[str], matrix: CostMatrix) -> np.ndarray:
    """Expected cost of each item under a uniform guess over the label space."""
    return np.array([float(np.mean(matrix.row(t))) for t in trues], dtype=np.float64)


def cost_per_1000(costs: Sequence[float] | np.ndarray) -> float:
    """Expected cost per 1,000 items: 1000 x the mean cost per item."""
    values = np.asarray(costs, dtype=np.float64)
    return float(1000.0 * values.mean()) if values.size else float("nan")


def confusion_cost_per_1000(counts: Sequence[Sequence[float]], matrix: CostMatrix) -> float:
    """1000 x sum(C[t, p] x M[t, p]) / sum(M) for a confusion matrix M over labels x (labels +
    (other)), as :class:`tunelens.experiments.decide.metrics.Confusion` holds it."""
    m = np.asarray(counts, dtype=np.float64)
    columns = [*matrix.labels, OTHER]
    c = np.array([[matrix.cost(t, p) for p in columns] for t in matrix.labels])
    total = m.sum()
    return float(1000.0 * (c * m).sum() / total) if total else float("nan")
