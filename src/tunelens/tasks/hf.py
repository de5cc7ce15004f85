"""Super-NaturalInstructions as Hugging Face copies hold it: one row per instance.

The public ``datasets`` copies of SuperNI (e.g. ``Muennighoff/natural-instructions``)
are tables with one row per instance and the task repeated on every row:

=============  ==========================================================
column         meaning
=============  ==========================================================
``task_name``  the task (rows are grouped into tasks by it, in order of first appearance)
``definition`` the task's definition (a string, or a list of strings joined by spaces);
               every row of a task must give the same one
``inputs``     the instance's input
``targets``    its reference output: a string, or a non-empty list of strings
``id``         optional; default ``<task>-<n>`` (n counts the task's rows from 0)
``positives``  optional positive examples: a list of ``{"input", "output", "explanation"?}``
               (or that list as a JSON string); taken from the task's first row that has them
``negatives``  optional negative examples, the same shape
``categories`` optional category names (a string or a list)
=============  ==========================================================

Three containers hold such tables, and :func:`load_table_tasks` reads each:

* a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a
  ``DatasetDict``: every split, in the order of ``dataset_dict.json``); needs
  the optional ``datasets`` package (``pip install 'tunelens[hf]'``);
* parquet shards (``*.parquet``); need ``pyarrow`` (a dependency of ``datasets``);
* JSONL shards (``*.jsonl`` whose first line has ``task_name`` and ``inputs``), no
  extra package.

A folder of shards is one table: a task may span shards. Each task then goes
through the SuperNI JSON loader's own parser (:func:`tunelens.tasks.loaders.parse_superni`),
so label spaces, ids and checks are the same as for the task JSON files; a bad
row is exit status 2 with one line naming the file, the row (or line) and the
column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensInputError
from tunelens.io import DuplicateKeyError, read_json_lines, unique_keys
from tunelens.tasks.loaders import FieldReader, parse_superni
from tunelens.tasks.types import Task

__all__ = [
    "is_dataset_dir",
    "is_shard_jsonl",
    "load_dataset_dir",
    "load_shards",
    "load_table_tasks",
    "rows_to_tasks",
]

REQUIRED = ("task_name", "definition", "inputs", "targets")
Row = tuple[Path, str, dict[str, Any]]  # (file, place such as "row 3", row)


def is_dataset_dir(path: Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` directory (a Dataset or a DatasetDict)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    )


def is_shard_jsonl(path: Path) -> bool:
    """Whether a ``.jsonl`` file is a table shard (first line has task_name and inputs)."""
    if path.suffix != ".jsonl":
        return False
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    first = json.loads(line)
                    return isinstance(first, dict) and "task_name" in first and "inputs" in first
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False  # the JSONL task loader reports the problem with its line
    return False


def _missing(module: str) -> TunelensInputError:
    return TunelensInputError(
        f"reading this needs the optional package {module!r}: pip install 'tunelens[hf]'"
    )


def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq  # lazy: optional (tunelens[hf]), missing is named below
    except ImportError:
        raise _missing("pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise TunelensInputError(f"cannot read parquet: {error}", source=str(path)) from None
    _check_columns(table.column_names, path)
    for i, row in enumerate(table.to_pylist()):
        yield path, f"row {i}", row


def _jsonl_rows(path: Path) -> Iterator[Row]:
    rows = read_json_lines(path, what="task shard")
    if rows:
        _check_columns(list(rows[0][1]), path, where=f"line {rows[0][0]}")
    for lineno, row in rows:
        yield path, f"line {lineno}", row


def _check_columns(columns: Iterable[str], path: Path, where: str | None = None) -> None:
    have = set(columns)
    for column in REQUIRED:
        if column not in have:
            raise TunelensInputError(
                f"table has no column {column!r} (needs {', '.join(REQUIRED)})",
                source=str(path),
                where=where,
            )


def load_dataset_dir(path: str | Path) -> list[Task]:
    """Tasks from a ``datasets`` ``save_to_disk`` directory (every split of a DatasetDict)."""
    path = Path(path)
    try:
        import datasets  # lazy: optional (tunelens[hf]), missing is named below
    except ImportError:
        raise _missing("datasets") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - datasets raises several types for bad dirs
        raise TunelensInputError(
            f"cannot read the datasets directory: {error}", source=str(path)
        ) from None
    parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]

    def rows() -> Iterator[Row]:
        for split, table in parts:
            prefix = f"split {split!r}, " if split else ""
            _check_columns(table.column_names, path, where=prefix.rstrip(", ") or None)
            for i, row in enumerate(table):
                yield path, f"{prefix}row {i}", row

    return rows_to_tasks(rows())


def load_shards(files: Iterable[str | Path]) -> list[Task]:
    """Tasks from parquet and JSONL shards read as one table, in the order given."""

    def rows() -> Iterator[Row]:
        for file in map(Path, files):
            if file.suffix == ".parquet":
                yield from _parquet_rows(file)
            else:
                yield from _jsonl_rows(file)

    return rows_to_tasks(rows())


def load_table_tasks(path: str | Path) -> list[Task]:
    """Tasks from a datasets directory, one shard, or a folder of shards."""
    path = Path(path)
    if is_dataset_dir(path):
        return load_dataset_dir(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix == ".parquet" or is_shard_jsonl(p))
        if not files:
            raise TunelensInputError("folder holds no parquet or JSONL shards", source=str(path))
        return load_shards(files)
    return load_shards([path])


def _examples(r: FieldReader, value: Any, field: str) -> list[dict[str, Any]]:
    """A positives/negatives cell as a list of example objects (validated by the parser)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value, object_pairs_hook=unique_keys)
        except DuplicateKeyError as error:
            raise r.error(field, f"key {error.key!r} is given twice in one object") from None
        except (ValueError, RecursionError):
            raise r.error(field, "expected a list of examples or that list as JSON") from None
    if not isinstance(value, list):
        raise r.error(field, "expected a list of examples")
    for i, item in enumerate(value):
        r.example(item, f"{field}[{i}]")  # the JSON loader's checks, located at this row
    return [dict(item) for item in value]


def rows_to_tasks(rows: Iterable[Row]) -> list[Task]:
    """Group rows by ``task_name`` (first appearance first) and parse each task."""
    tasks: dict[str, dict[str, Any]] = {}
    for file, place, row in rows:
        r = FieldReader(file, place)
        name = r.string(row.get("task_name"), "task_name").strip()
        if not name:
            raise r.error("task_name", "task name is empty")
        definition = " ".join(
            part.strip() for part in r.string_list(row.get("definition"), "definition")
        )
        if "inputs" not in row or row["inputs"] is None:
            raise r.error("inputs", "instance has no input")
        inputs = r.string(row["inputs"], "inputs")
        targets = row.get("targets")
        outputs = r.outputs({} if targets is None else {"output": targets}, "targets")
        entry = tasks.get(name)
        if entry is None:
            entry = tasks[name] = {
                "file": file,
                "place": place,
                "data": {
                    "Definition": [definition],
                    "Categories": [],
                    "Positive Examples": [],
                    "Negative Examples": [],
                    "Instances": [],
                },
            }
        data = entry["data"]
        if definition != data["Definition"][0]:
            raise r.error(
                "definition",
                f"task {name!r} has another definition here than at {entry['place']} of "
                f"{entry['file']}",
            )
        instance: dict[str, Any] = {"input": inputs, "output": list(outputs)}
        if row.get("id") is not None:
            instance["id"] = str(row["id"])
        else:
            instance["id"] = f"{name}-{len(data['Instances'])}"
        data["Instances"].append(instance)
        for column, key in (("positives", "Positive Examples"), ("negatives", "Negative Examples")):
            if not data[key] and row.get(column) is not None:
                data[key] = _examples(r, row.get(column), column)
        if not data["Categories"] and row.get("categories"):
            data["Categories"] = r.string_list(row["categories"], "categories")
    if not tasks:
        raise TunelensInputError("the table has no rows")
    return [
        parse_superni(entry["data"], Path(entry["file"]), name=name)
        for name, entry in tasks.items()
    ]
