"""Tidy tables of a run's results: one long table per experiment, for pandas and plotting.

``tunelens export DIR --format csv|parquet`` asks each registered experiment for its
rows (its ``tidy_rows`` hook, given the data of its results file: ``results.json``, or
a file of its own) and writes one table per experiment that has rows,
``<experiment>.<format>``, one row per measurement. Each experiment documents its
table's columns beside its rows (``tunelens.experiments.<name>.tidy``).

Every table has the value columns ``value``, ``ci_low`` and ``ci_high`` (95%
bootstrap interval where the results have one, else empty), so
``pandas.read_csv(path)`` gives numbers without post-processing
(:func:`measure_row` builds them). Columns hold one type each.

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
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelens.api.results import Stat
from tunelens.errors import TunelensInputError

if TYPE_CHECKING:
    from tunelens.api.experiment import Experiment

__all__ = [
    "FORMATS",
    "Row",
    "export_tables",
    "is_measure",
    "measure_row",
    "spreadsheet_safe",
    "tidy_tables",
]

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
    """(value, ci_low, ci_high) of a Stat, a {"mean", "ci"} dict or a number; else Nones."""
    if isinstance(value, Stat):
        low, high = (list(value.ci) + [None, None])[:2]
        return value.mean, low, high
    if isinstance(value, dict) and "mean" in value:
        ci = list(value.get("ci") or []) + [None, None]
        return value["mean"], ci[0], ci[1]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), None, None
    return None, None, None


def measure_row(base: Row, measure_key: str, measure: str, value: Any) -> Row:
    """``base`` with the measure's name under ``measure_key`` and its value columns."""
    v, low, high = _stat(value)
    return {**base, measure_key: measure, "value": v, "ci_low": low, "ci_high": high}


def is_measure(value: Any) -> bool:
    """A summary ({"mean": ...}) or a plain number: something with a value column."""
    return (isinstance(value, dict) and "mean" in value) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def _read(path: Path) -> Any:
    from tunelens.io import read_json

    return read_json(path, what="results file")


def results_files(experiments: Iterable[Experiment]) -> list[str]:
    """The results files the experiments read, each once, in registry order."""
    return list(dict.fromkeys(e.results_file for e in experiments))


def tidy_tables(run_dir: str | Path) -> dict[str, list[Row]]:
    """experiment -> rows, for every registered experiment with rows in ``run_dir``."""
    from tunelens.api import get_experiments
    from tunelens.report.html import reading

    run_dir = Path(run_dir)
    experiments = list(get_experiments().values())
    files = results_files(experiments)
    if not any((run_dir / name).is_file() for name in files):
        raise TunelensInputError(
            f"no {' or '.join(files)} here (is it a run directory?)", source=str(run_dir)
        )
    data = {name: _read(run_dir / name) for name in files if (run_dir / name).is_file()}
    tables: dict[str, list[Row]] = {}
    for experiment in experiments:
        if experiment.results_file not in data:
            continue
        with reading(run_dir / experiment.results_file):
            rows = experiment.tidy_rows(data[experiment.results_file])
        if rows:
            tables[experiment.name] = rows
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
    from tunelens.api import get_experiments
    from tunelens.io import atomic_write_text, refuse_overwriting_inputs

    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "export"
    experiments = get_experiments()
    inputs = [Path(run_dir) / name for name in results_files(experiments.values())]
    refuse_overwriting_inputs([out, *(out / f"{n}.{format}" for n in experiments)], inputs)
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
