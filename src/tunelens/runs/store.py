"""The cell store: one JSON file per finished cell, so a killed run loses only cells in flight.

Layout: ``DIR/cells/<experiment>/<cell.key>.json`` holding
``{"cell": {experiment, name, params, seed, inputs, code_version, key}, "result": ...}``.

A file is written to a hidden temporary file in the same folder, flushed,
fsynced and renamed over its final name (``os.replace`` is atomic on POSIX and
Windows), so a reader sees either nothing or the whole file. The reader is
still defensive: temporary files are never listed, and a file that does not
parse, lacks a field, or whose recorded experiment, code version, parameters,
seed and input digests do not hash to its name counts as missing (a disk that
lied about fsync, a copy cut short, a record edited to another cell's), so the
cell is simply computed again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelens.api import Cell
from tunelens.io import atomic_write_text

CELLS_DIR = "cells"
TEMP_PREFIX = "."  # temporary files are hidden: ".<key>.json.<random>.tmp"
TEMP_SUFFIX = ".tmp"


def to_jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for NumPy scalars and arrays, tuples' cousins and paths."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def dumps(data: Any, *, indent: int | None = None) -> str:
    """Canonical JSON: sorted keys, so equal data gives equal bytes."""
    return json.dumps(data, sort_keys=True, indent=indent, default=to_jsonable, ensure_ascii=False)


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so any JSON parser reads it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def cell_record(cell: Cell) -> dict[str, Any]:
    """The ``cell`` part of a stored file: enough to know what was computed."""
    return {
        "experiment": cell.experiment,
        "name": cell.name,
        "params": cell.params,
        "seed": cell.seed,
        "inputs": cell.inputs,
        "code_version": cell.code_version,
        "key": cell.key,
    }


class CellStore:
    """Finished cells of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CELLS_DIR

    def path(self, cell: Cell) -> Path:
        """Where ``cell``'s result lives (whether or not it is finished)."""
        return self.root / cell.experiment / f"{cell.key}.json"

    def write(self, cell: Cell, result: dict[str, Any]) -> Path:
        """Store a finished cell atomically; returns its path."""
        path = self.path(cell)
        atomic_write_text(path, dumps({"cell": cell_record(cell), "result": result}) + "\n")
        return path

    def read(self, cell: Cell) -> dict[str, Any] | None:
        """The stored result of ``cell``, or None when it is missing or unreadable."""
        record = _read_record(self.path(cell))
        return None if record is None else record["result"]

    def has(self, cell: Cell) -> bool:
        """Whether ``cell`` is finished (its file exists and reads back whole)."""
        return _read_record(self.path(cell)) is not None

    def finished_keys(self, experiment: str | None = None) -> set[str]:
        """Keys of every readable finished cell (of one experiment, or of all)."""
        return {record["cell"]["key"] for record in self.records(experiment)}

    def records(self, experiment: str | None = None) -> Iterator[dict[str, Any]]:
        """Every readable stored record, in path order; temporary and broken files are skipped."""
        if not self.root.is_dir():
            return
        folders = [self.root / experiment] if experiment else sorted(self.root.iterdir())
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.json")):
                if path.name.startswith(TEMP_PREFIX):
                    continue
                record = _read_record(path)
                if record is not None:
                    yield record


def _read_record(path: Path) -> dict[str, Any] | None:
    """A whole, well-formed record whose content hashes to its file name; otherwise None.

    The key is recomputed from the recorded experiment, code version, parameters,
    seed and input digests: a file whose record was edited (or copied from
    another cell) while its ``key`` field still matches its name is not this
    cell's result, so it counts as missing and the cell is computed again.
    """
    try:
        text = path.read_text(encoding="utf-8")
        record = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or "result" not in record:
        return None
    cell = record.get("cell")
    if not isinstance(cell, dict) or cell.get("key") != path.stem:
        return None
    if record_key(cell) != path.stem:
        return None
    return record


def record_key(cell: dict[str, Any]) -> str | None:
    """The key a stored ``cell`` record's content gives (None when a field is missing)."""
    try:
        return Cell(
            experiment=cell["experiment"],
            name=str(cell.get("name", "")),
            params=cell["params"],
            seed=cell["seed"],
            inputs=cell["inputs"],
            code_version=cell["code_version"],
        ).key
    except (KeyError, TypeError, ValueError):
        return None
