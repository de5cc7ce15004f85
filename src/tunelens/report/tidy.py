"""Tidy tables of a run's results: one long table per experiment, for pandas and plotting.

``tunelens export DIR --format csv|parquet`` reads ``DIR/results.json`` (and
``DIR/decide.json``) through the typed models of :mod:`tunelens.api.results`
and writes one table per experiment present, one row per measurement:

=================  ==============================================================
``convergence``    condition x seed x layer x measure. Condition columns ``model``,
                   ``k``, ``flip_fraction``, ``relevance``, ``definition``,
                   ``control``, ``tuning``; ``seed`` is ``pooled`` or a seed;
                   ``layer`` is empty for condition-level measures (accuracies);
                   ``measure`` e.g. ``cos_icl_it``, ``cka_icl_it``,
                   ``wilcoxon icl_it>anchor_icl p_holm``, ``accuracy_icl``
``audit``          condition x task x metric. ``kind`` is ``tuned`` or ``baseline``
                   (then ``baseline`` names it); condition columns ``definition``,
                   ``examples``, ``instances_per_task``, ``seed``, ``encoding``;
                   ``level`` is ``task``, ``category`` or ``overall`` and ``name``
                   the task or category; ``metric`` is ``em`` or ``rouge_l``
``world_eval``     family x k: ``family`` (``all`` or a rule family), ``k``, ``accuracy``
``decide``         method x metric: ``method`` (id), ``family``, ``name``, ``examples``,
                   ``metric`` (``accuracy``, ``cost_per_1000``)
=================  ==============================================================

Every table has the value columns ``value``, ``ci_low`` and ``ci_high`` (95%
bootstrap interval where the results have one, else empty), so
``pandas.read_csv(path)`` gives numbers without post-processing. Columns hold
one type each (``instances_per_task`` is text: ``5`` or ``full``).

CSV cells are safe to open in a spreadsheet (OWASP's rule against formula
injection): a *text* cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return gets a leading ``'``, so a task named ``=HYPERLINK(...)`` is
shown, not evaluated. Numbers stay numbers: only values that are strings in the
results are neutralised (a float ``-0.5`` is written as ``-0.5``), and a string
that is a plain decimal number (``-1``, ``+2.5e3``) is left as it is (a
spreadsheet reads it as that number, no formula). Parquet keeps raw values.
Files are written atomically (:mod:`tunelens.io`), so a failed export leaves
no partial table and no temporary file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunelens.api.results import DecideResults, Stat, StudyResults
from tunelens.errors import TunelensInputError

__all__ = ["FORMATS", "export_tables", "tidy_tables"]

FORMATS = ("csv", "parquet")
Row = dict[str, Any]
VALUE_COLUMNS = ("value", "ci_low", "ci_high")
#: What a spreadsheet may read as the start of a formula (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would run as a formula gets a
    leading ``'``; numbers (and text that is just a decimal number) are kept."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def _stat(value: Any) -> tuple[float | None, float | None, float | None]:
    if isinstance(value, Stat):
        low, high = (list(value.ci) + [None, None])[:2]
        return value.mean, low, high
    if isinstance(value, dict) and "mean" in value:
        ci = list(value.get("ci") or []) + [None, None]
        return value["mean"], ci[0], ci[1]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), None, None
    return None, None, None


def _row(base: Row, measure_key: str, measure: str, value: Any) -> Row:
    v, low, high = _stat(value)
    return {**base, measure_key: measure, "value": v, "ci_low": low, "ci_high": high}


def _is_measure(value: Any) -> bool:
    return (isinstance(value, dict) and "mean" in value) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def _layer_rows(base: Row, layer: Any) -> Iterator[Row]:
    data = layer.model_dump(mode="python")
    at = {**base, "layer": data.pop("layer")}
    tests = data.pop("wilcoxon", None) or {}
    for name in sorted(data):
        if _is_measure(data[name]):
            yield _row(at, "measure", name, data[name])
    for comparison in sorted(tests):
        for stat_name, stat_value in sorted((tests[comparison] or {}).items()):
            if stat_value is None or _is_measure(stat_value):
                yield _row(at, "measure", f"wilcoxon {comparison} {stat_name}", stat_value)


def convergence_rows(results: StudyResults) -> list[Row]:
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
                _row(
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
    return rows


def _summary_rows(base: Row, summary: Any) -> Iterator[Row]:
    for metric in ("em", "rouge_l"):
        yield _row(
            {**base, "level": "overall", "name": ""}, "metric", metric, getattr(summary, metric)
        )
    for category, scores in sorted(summary.per_category.items()):
        for metric in ("em", "rouge_l"):
            yield _row(
                {**base, "level": "category", "name": category},
                "metric",
                metric,
                getattr(scores, metric),
            )
    for task, scores in sorted(summary.per_task.items()):
        for metric in ("em", "rouge_l"):
            yield _row(
                {**base, "level": "task", "name": task}, "metric", metric, getattr(scores, metric)
            )


def audit_rows(results: StudyResults) -> list[Row]:
    rows: list[Row] = []
    empty = {"definition": "", "examples": "", "instances_per_task": "", "seed": None}
    for entry in results.audit or []:
        c = entry.condition
        base: Row = {
            "kind": "tuned",
            "baseline": "",
            "definition": c.definition,
            "examples": c.examples,
            "instances_per_task": str(c.instances_per_task),
            "seed": c.seed,
            "encoding": c.encoding or "",
        }
        rows.extend(_summary_rows(base, entry))
    by_encoding = results.baselines_by_encoding or (
        {"": results.baselines} if results.baselines is not None else {}
    )
    for encoding, baselines in by_encoding.items():
        for name in ("untuned", "random", "copy_input", "copy_demo"):
            summary = getattr(baselines, name, None)
            if summary is not None:
                base = {"kind": "baseline", "baseline": name, **empty, "encoding": encoding}
                rows.extend(_summary_rows(base, summary))
    return rows


def world_eval_rows(results: StudyResults) -> list[Row]:
    w = results.world_eval
    if w is None:
        return []
    rows = [
        _row({"family": "all", "k": int(k)}, "metric", "accuracy", v) for k, v in w.shots.items()
    ]
    for family, shots in sorted(w.per_family.items()):
        rows.extend(
            _row({"family": family, "k": int(k)}, "metric", "accuracy", v) for k, v in shots.items()
        )
    return rows


def decide_rows(results: DecideResults) -> list[Row]:
    rows: list[Row] = []
    for m in results.methods:
        base = {
            "method": m.id,
            "family": m.family,
            "name": m.name,
            "examples": m.examples,
            "n_items": m.n_items,
        }
        rows.append(_row(base, "metric", "accuracy", m.accuracy))
        if m.cost_per_1000 is not None:
            rows.append(_row(base, "metric", "cost_per_1000", m.cost_per_1000))
    return rows


def _read(path: Path) -> Any:
    from tunelens.io import read_json

    return read_json(path, what="results file")


def tidy_tables(run_dir: str | Path) -> dict[str, list[Row]]:
    """experiment -> rows, for every experiment with results in ``run_dir``."""
    run_dir = Path(run_dir)
    tables: dict[str, list[Row]] = {}
    study, decide = run_dir / "results.json", run_dir / "decide.json"
    if not study.is_file() and not decide.is_file():
        raise TunelensInputError(
            "no results.json or decide.json here (is it a run directory?)", source=str(run_dir)
        )
    if study.is_file():
        results = StudyResults.model_validate(_read(study))
        for name, make in (
            ("convergence", convergence_rows),
            ("audit", audit_rows),
            ("world_eval", world_eval_rows),
        ):
            rows = make(results)
            if rows:
                tables[name] = rows
    if decide.is_file():
        rows = decide_rows(DecideResults.model_validate(_read(decide)))
        if rows:
            tables["decide"] = rows
    return tables


def _columns(rows: Iterable[Row]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns and key not in VALUE_COLUMNS:
                columns.append(key)
    return [*columns, *VALUE_COLUMNS]


def export_tables(
    run_dir: str | Path, out_dir: str | Path | None = None, *, format: str = "csv"
) -> list[Path]:
    """Write one ``<experiment>.<format>`` per experiment into ``out_dir`` (default
    ``run_dir/export``); return the paths."""
    if format not in FORMATS:
        raise TunelensInputError(
            f"unknown format {format!r}; use {' or '.join(FORMATS)}", where="--format"
        )
    from tunelens.io import atomic_write_text, refuse_overwriting_inputs

    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "export"
    inputs = [Path(run_dir) / "results.json", Path(run_dir) / "decide.json"]
    names = ("convergence", "audit", "world_eval", "decide")
    refuse_overwriting_inputs([out, *(out / f"{n}.{format}" for n in names)], inputs)
    tables = tidy_tables(run_dir)
    paths = {name: out / f"{name}.{format}" for name in tables}
    _make_folder(out)
    for name, rows in tables.items():
        if format == "csv":
            atomic_write_text(paths[name], csv_text(rows, _columns(rows)))
        else:
            _write_parquet(paths[name], rows, _columns(rows))
    return list(paths.values())


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TunelensInputError("--out is a file, not a folder", source=str(out)) from None
    except OSError as error:
        raise TunelensInputError(
            f"cannot make the folder: {error.strerror or error}", source=str(out)
        ) from None


def csv_text(rows: Iterable[Row], columns: list[str]) -> str:
    """The CSV of ``rows`` (header first), every cell :func:`spreadsheet_safe`."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else spreadsheet_safe(v) for k, v in row.items()})
    return buffer.getvalue()


def _write_parquet(path: Path, rows: list[Row], columns: list[str]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TunelensInputError(
            "--format parquet needs the optional package 'pyarrow': pip install 'tunelens[hf]'",
            where="--format",
        ) from None
    data = {c: [row.get(c) for row in rows] for c in columns}
    for column, values in data.items():  # one type per column: mixed ones become text
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            data[column] = [None if v is None else str(v) for v in values]
    from tunelens.io import atomic_path

    table = pa.table(data)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
