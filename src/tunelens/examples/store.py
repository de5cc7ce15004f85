"""The example loop's store: examples accepted in operation, kept in a local SQLite file.

One table, ``examples``: ``id``, ``input``, ``output`` (the answer a tuned
model should give), ``label`` (an optional class tag), ``source`` (where the
row came from: a service, a reviewer, a file), ``created_at`` (ISO 8601, UTC by
default), ``accepted`` (1 accepted, 0 rejected), ``pii`` (comma-separated
flags from :mod:`tunelens.examples.pii`) and ``digest`` (SHA-256 of input,
output and label, unique: an exact duplicate is refused).

Every write is one SQLite transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``,
rollback journal, ``synchronous=FULL``): a process killed in the middle of an
``add`` leaves the rows of the transactions that committed and nothing of the
one in flight, which SQLite rolls back the next time the file is opened. A
bulk add from a file is one transaction, so it lands whole or not at all.

A store locked by another process (a long write, a ``sqlite3`` shell holding a
transaction) is waited for ``LOCK_TIMEOUT_S`` seconds, then named as locked; a
full disk names the store and leaves it as it was (SQLite rolls the
transaction back itself).

Export writes a tuning set in the tunelens JSONL task format
(:mod:`tunelens.tasks.jsonl`): accepted rows only, rows flagged for personal
data only when asked, the ``label`` kept as an extra key of each line (the
loader ignores unknown keys), atomically (:mod:`tunelens.io`); an output path
that is the store itself (by any name) is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensInputError
from tunelens.examples.pii import pii_flags
from tunelens.io import atomic_write_text, iter_json_lines, read_text, refuse_overwriting_inputs
from tunelens.tasks.jsonl import FORMAT_KEY, FORMAT_VERSION, is_header

DEFAULT_DB = "tunelens_examples.sqlite"
SCHEMA_VERSION = 1
_APPLICATION_ID = 0x544C4558  # "TLEX": marks the file as a tunelens examples store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    label TEXT,
    source TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)),
    pii TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL UNIQUE
)
"""
_COLUMNS = "id, input, output, label, source, created_at, accepted, pii, digest"
ROW_FIELDS = ("input", "output", "label", "source", "accepted", "time")
#: How long an open or a write waits for another process's lock before saying so.
LOCK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class NewExample:
    """An example to add. ``time`` None means now (UTC)."""

    input: str
    output: str
    label: str | None = None
    source: str = ""
    accepted: bool = True
    time: str | None = None
    where: str = ""  # e.g. "line 7", for error messages


@dataclass(frozen=True)
class StoredExample:
    """One row of the store."""

    id: int
    input: str
    output: str
    label: str | None
    source: str
    time: str
    accepted: bool
    pii: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input": self.input,
            "output": self.output,
            "label": self.label,
            "source": self.source,
            "time": self.time,
            "accepted": self.accepted,
            "pii": list(self.pii),
        }


@dataclass
class AddResult:
    """What an add did: the new rows, and duplicates skipped (``skip_duplicates``)."""

    added: list[StoredExample] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)  # (where, existing id)


@dataclass(frozen=True)
class ExampleFile:
    """The rows of a ``--from`` file: the examples, how many rows, which were task headers."""

    examples: list[NewExample]
    rows: int
    headers: list[str]  # where: "line 3"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and what it left out, and why."""

    path: Path
    written: int
    left_out_flagged: int
    left_out_rejected: int


def digest(input_text: str, output: str, label: str | None) -> str:
    """The identity of an example: equal input, output and label give equal digests."""
    payload = json.dumps([input_text, output, label], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def now_utc() -> str:
    """The current time as ISO 8601 in UTC, seconds precision: 2024-05-01T12:00:00Z."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check_time(value: str, source: str, where: str) -> str:
    """``value`` if it is an ISO 8601 date or time, else a TunelensInputError."""
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TunelensInputError(
            f"time {value!r} is not an ISO 8601 date or time (e.g. 2024-05-01T12:00:00Z)",
            source=source,
            where=where,
        ) from None
    return value


# ---------------------------------------------------------------- reading rows from files


def _optional_string(value: Any, name: str, source: str, where: str) -> str | None:
    return None if value is None else _string(value, name, source, where)


def _string(value: Any, name: str, source: str, where: str) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # a tunelens JSONL instance may give its output as a one-item list
    if not isinstance(value, str):
        raise TunelensInputError(
            f"field '{name}': expected a string, got {type(value).__name__}",
            source=source,
            where=where,
        )
    return value


def _accepted(value: Any, source: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.strip().lower() in ("1", "true", "yes")
    raise TunelensInputError(
        f"field 'accepted': expected true or false, got {value!r}", source=source, where=where
    )


def row_to_example(
    row: dict[str, Any], source: str, where: str, default_source: str = ""
) -> NewExample:
    """A NewExample from one JSON object or CSV row; errors name the file, line and field."""
    for name in ("input", "output"):
        if name not in row or row[name] is None:
            raise TunelensInputError(f"field '{name}': missing", source=source, where=where)
    input_text = _string(row["input"], "input", source, where)
    output = _string(row["output"], "output", source, where)
    if not input_text.strip():
        raise TunelensInputError("field 'input': empty", source=source, where=where)
    if not output.strip():
        raise TunelensInputError("field 'output': empty", source=source, where=where)
    label = _optional_string(row.get("label"), "label", source, where)
    label = label if label else None
    row_source = _string(row.get("source", default_source) or "", "source", source, where)
    raw_accepted = row.get("accepted")
    accepted = True if raw_accepted in (None, "") else _accepted(raw_accepted, source, where)
    time = row.get("time")
    if time in (None, ""):
        time = None
    else:
        time = check_time(_string(time, "time", source, where), source, where)
    return NewExample(input_text, output, label, row_source, accepted, time, where)


def _jsonl_rows(text: str, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, obj in iter_json_lines(text, source=source):
        yield f"line {lineno}", obj


def _csv_rows(text: str, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "input" not in header or "output" not in header:
        raise TunelensInputError(
            f"CSV header must name the columns 'input' and 'output' (optional: label, source, "
            f"accepted, time); found {header}",
            source=source,
            where="line 1",
        )
    unknown = [h for h in header if h not in ROW_FIELDS]
    if unknown:
        raise TunelensInputError(
            f"unknown CSV column(s) {unknown}; expected {list(ROW_FIELDS)}",
            source=source,
            where="line 1",
        )
    reader.fieldnames = header
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise TunelensInputError("more fields than the header has", source=source, where=where)
        if all(v in (None, "") for v in row.values()):
            continue
        yield where, {k: v for k, v in row.items() if v is not None}


def read_example_rows(path: str | Path, default_source: str = "") -> ExampleFile:
    """Examples from a JSONL file (one object per line) or a CSV file with a header.

    JSONL lines: ``{"input", "output", "label"?, "source"?, "accepted"?, "time"?}``;
    a line that is a tunelens task header is skipped and counted (so a task file
    can be imported, and the summary says how many rows were not examples). CSV:
    the same names as columns. Rows without a ``source`` get ``default_source``
    (the file's name when not given).
    """
    path = Path(path)
    source = str(path)
    text = read_text(path, allow_empty=True)
    default_source = default_source or path.name
    is_csv = path.suffix.lower() == ".csv"
    rows = list(_csv_rows(text, source) if is_csv else _jsonl_rows(text, source))
    headers = [where for where, row in rows if not is_csv and is_header(row)]
    examples = [
        row_to_example(row, source, where, default_source)
        for where, row in rows
        if is_csv or not is_header(row)
    ]
    if not examples:
        why = f" ({len(headers)} task header row(s) only)" if headers else ""
        raise TunelensInputError(f"file holds no examples{why}", source=source)
    return ExampleFile(examples, len(rows), headers)


def read_example_file(path: str | Path, default_source: str = "") -> list[NewExample]:
    """The examples of :func:`read_example_rows` (task header lines skipped)."""
    return read_example_rows(path, default_source).examples


# ---------------------------------------------------------------- the store


def _row(record: Sequence[Any]) -> StoredExample:
    id_, input_text, output, label, source, created_at, accepted, pii, _ = record
    return StoredExample(
        int(id_),
        input_text,
        output,
        label,
        source,
        created_at,
        bool(accepted),
        tuple(f for f in pii.split(",") if f),
    )


class ExampleStore:
    """A SQLite file of examples; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        self.source = str(self.path)
        if not self.path.exists() and not create:
            raise TunelensInputError(
                "no examples database here; add examples first", source=self.source
            )
        if self.path.exists() and not self.path.is_file():
            raise TunelensInputError("not a file", source=self.source)
        if not self.path.parent.is_dir():
            raise TunelensInputError("folder does not exist", source=str(self.path.parent))
        try:
            # isolation_level None: no implicit transactions; every write opens its own.
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=LOCK_TIMEOUT_S)
        except sqlite3.Error as error:
            raise TunelensInputError(
                f"cannot open the database: {error}", source=self.source
            ) from None
        try:
            self._prepare()
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise self._error(error, "not a tunelens examples database") from None
        except BaseException:
            self._conn.close()
            raise

    def _prepare(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id == 0 and not tables:
            with self.transaction():
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if app_id != _APPLICATION_ID:
            raise TunelensInputError(
                "not a tunelens examples database (an SQLite file of something else)",
                source=self.source,
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise TunelensInputError(
                f"examples database version {version}; this tunelens "
                f"reads version {SCHEMA_VERSION}",
                source=self.source,
            )

    def _error(self, error: sqlite3.Error, what: str) -> TunelensInputError:
        """One line for an SQLite error: locked and full disk said as such, else ``what``."""
        name = getattr(error, "sqlite_errorname", "")
        text = str(error)
        if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "database is locked" in text:
            return TunelensInputError(
                f"the examples database is locked by another process (waited "
                f"{LOCK_TIMEOUT_S:g} s); try again when it has finished",
                source=self.source,
            )
        if name == "SQLITE_FULL" or "disk is full" in text:
            return TunelensInputError(
                "cannot write: no space left on device (the database is unchanged)",
                source=self.source,
            )
        return TunelensInputError(f"{what} ({text})", source=self.source)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ExampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            # SQLite may have rolled back already (a full disk, an I/O error): a second
            # ROLLBACK would fail and hide the error that matters.
            if self._conn.in_transaction:
                with suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -------------------------------------------------------------- writes

    def _existing(self, key: str) -> int | None:
        row = self._conn.execute("SELECT id FROM examples WHERE digest = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def add(
        self,
        examples: Iterable[NewExample],
        *,
        skip_duplicates: bool = False,
        origin: str | None = None,
    ) -> AddResult:
        """Add examples in one transaction: all of them, or (on an error) none.

        An exact duplicate (same input, output and label as a stored row or an
        earlier row of the same call) raises TunelensInputError naming it, unless
        ``skip_duplicates``: then it is skipped and listed in the result.
        ``origin`` names the input (a file) in error messages; default: the database.
        """
        result = AddResult()
        origin = origin or self.source
        try:
            with self.transaction() as conn:
                for example in examples:
                    key = digest(example.input, example.output, example.label)
                    existing = self._existing(key)
                    if existing is not None:
                        if skip_duplicates:
                            result.skipped.append((example.where, existing))
                            continue
                        raise TunelensInputError(
                            f"duplicate of example #{existing} (same input, output and label); "
                            "nothing was added"
                            + ("" if not example.where else " (--skip-duplicates adds the others)"),
                            source=origin,
                            where=example.where or None,
                        )
                    flags = pii_flags(example.input, example.output, example.label)
                    time = example.time or now_utc()
                    cursor = conn.execute(
                        "INSERT INTO examples (input, output, label, source, created_at, "
                        "accepted, pii, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            example.input,
                            example.output,
                            example.label,
                            example.source,
                            time,
                            int(example.accepted),
                            ",".join(flags),
                            key,
                        ),
                    )
                    result.added.append(
                        StoredExample(
                            int(cursor.lastrowid or 0),
                            example.input,
                            example.output,
                            example.label,
                            example.source,
                            time,
                            example.accepted,
                            flags,
                        )
                    )
        except sqlite3.DatabaseError as error:
            raise self._error(error, "cannot write to the database") from None
        return result

    # -------------------------------------------------------------- reads

    def contradictions(self, rows: Iterable[StoredExample]) -> list[tuple[StoredExample, int]]:
        """(row, id of an accepted row with the same input and another output) per conflict.

        Two accepted answers to one input teach a tuned model both: worth a warning.
        """
        found = []
        for row in rows:
            if not row.accepted:
                continue
            other = self._conn.execute(
                "SELECT id FROM examples WHERE input = ? AND output != ? AND accepted = 1 "
                "AND id != ? ORDER BY id LIMIT 1",
                (row.input, row.output, row.id),
            ).fetchone()
            if other is not None:
                found.append((row, int(other[0])))
        return found

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM examples").fetchone()[0])

    def examples(
        self, *, accepted: bool | None = None, flagged: bool | None = None, limit: int | None = None
    ) -> list[StoredExample]:
        """Rows in id order, optionally only accepted / rejected, flagged / unflagged."""
        query = f"SELECT {_COLUMNS} FROM examples"
        conditions, params = [], []
        if accepted is not None:
            conditions.append("accepted = ?")
            params.append(int(accepted))
        if flagged is not None:
            conditions.append("pii != ''" if flagged else "pii = ''")
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += " ORDER BY id"
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        try:
            return [_row(r) for r in self._conn.execute(query, params)]
        except sqlite3.DatabaseError as error:
            raise self._error(error, "cannot read the database") from None

    # -------------------------------------------------------------- export

    def export_task(
        self, path: str | Path, *, task: str, definition: str = "", include_flagged: bool = False
    ) -> ExportResult:
        """Write accepted rows as a tunelens JSONL task (header + one instance per line).

        Rows flagged for personal data are left out unless ``include_flagged``;
        rejected rows are always left out. Instance ids are ``ex<id>``. The file
        is written atomically; nothing to write is an input error.
        """
        path = Path(path)
        refuse_overwriting_inputs([path], [self.path])
        rows = self.examples()
        rejected = [r for r in rows if not r.accepted]
        accepted = [r for r in rows if r.accepted]
        flagged = [r for r in accepted if r.pii]
        chosen = accepted if include_flagged else [r for r in accepted if not r.pii]
        if not chosen:
            why = (
                f"; {len(flagged)} accepted example(s) are flagged for personal data "
                "(--include-flagged exports them)"
                if flagged
                else ""
            )
            raise TunelensInputError(f"no accepted examples to export{why}", source=self.source)
        header = {FORMAT_KEY: FORMAT_VERSION, "task": task, "definition": definition}
        lines = [json.dumps(header, ensure_ascii=False)]
        for row in chosen:
            line: dict[str, Any] = {"id": f"ex{row.id}", "input": row.input, "output": row.output}
            if row.label is not None:
                line["label"] = row.label
            lines.append(json.dumps(line, ensure_ascii=False))
        atomic_write_text(path, "\n".join(lines) + "\n")
        return ExportResult(
            path, len(chosen), 0 if include_flagged else len(flagged), len(rejected)
        )
