"""Reading user files: text with a size cap, JSON and JSON Lines, every failure one clear error.

Every way a user's file can be wrong (missing, a folder, unreadable, too
large, not UTF-8, empty, invalid JSON, nested too deeply, an integer too long
to convert) becomes a :class:`tunelens.errors.TunelensInputError` naming the
file (``source``) and, where known, the place (``where``: ``"line L, column C"``),
so the CLI can print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensInputError

PathLike = str | Path

#: Files larger than this are refused before being read, so that a wrong path
#: (a weights file, a dump) cannot fill the memory; task files are far smaller.
MAX_BYTES = 512 * 2**20


def read_text(
    path: PathLike,
    *,
    allow_empty: bool = False,
    max_bytes: int = MAX_BYTES,
    what: str = "file",
) -> str:
    """The file's UTF-8 text (a byte-order mark tolerated), with clear errors.

    Missing, unreadable, larger than ``max_bytes``, not UTF-8 or (unless
    ``allow_empty``, which leaves a blank file to the caller) blank: a
    :class:`TunelensInputError`. ``what`` names the file in messages
    ("spec", "results file", ...).
    """
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                # /dev/zero, a FIFO, a terminal: no size to cap, and reading may never end
                raise TunelensInputError(f"not a regular file, not a {what}", source=source)
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise TunelensInputError("no such file or directory", source=source) from None
    except IsADirectoryError:
        raise TunelensInputError(f"is a directory, not a {what}", source=source) from None
    except OSError as error:
        raise TunelensInputError(f"cannot read: {error.strerror}", source=source) from None
    if len(data) > max_bytes:
        raise TunelensInputError(
            f"{what} is larger than the {max_bytes / 2**20:g} MiB this reader accepts",
            source=source,
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TunelensInputError(
            f"not UTF-8 text (byte {error.start})",
            source=source,
            where=_line_column(data, error.start),
        ) from None
    if not allow_empty and not text.strip():
        raise TunelensInputError(f"{what} is empty", source=source)
    return text


def _line_column(data: bytes, offset: int) -> str:
    """``"line L, column C"`` of a byte offset (column in bytes, 1-based)."""
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def json_error(
    error: json.JSONDecodeError, source: PathLike, *, line: int | None = None
) -> TunelensInputError:
    """A :class:`TunelensInputError` for ``error``; ``line`` is the file line of a JSONL row."""
    lineno = error.lineno if line is None else line + error.lineno - 1
    return TunelensInputError(
        f"invalid JSON: {error.msg}",
        source=str(source),
        where=f"line {lineno}, column {error.colno}",
    )


def parse_json(text: str, *, source: PathLike, line: int | None = None) -> Any:
    """``json.loads(text)`` with every failure a :class:`TunelensInputError`.

    ``line``: the line of the file that ``text`` is (JSON Lines), so that the
    place names the file's line rather than line 1 of the row.
    """
    where = f"line {line}" if line is not None else None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise json_error(error, source, line=line) from None
    except RecursionError:
        raise TunelensInputError(
            "invalid JSON: nested too deeply", source=str(source), where=where
        ) from None
    except ValueError as error:  # e.g. an integer over sys.get_int_max_str_digits() digits
        raise TunelensInputError(
            f"invalid JSON: {error}", source=str(source), where=where
        ) from None


def read_json(
    path: PathLike,
    *,
    what: str = "JSON file",
    max_bytes: int = MAX_BYTES,
) -> Any:
    """The parsed content of a JSON file; any failure a :class:`TunelensInputError`."""
    text = read_text(path, max_bytes=max_bytes, what=what)
    return parse_json(text, source=path)


def iter_json_lines(text: str, *, source: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of JSON Lines ``text``.

    Lines are split on ``"\\n"`` only (``str.splitlines()`` would also break at
    U+2028 inside a string); a line that is not a JSON object is an error
    naming the line.
    """
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        obj = parse_json(line, source=source, line=lineno)
        if not isinstance(obj, dict):
            raise TunelensInputError(
                "expected a JSON object on each line", source=str(source), where=f"line {lineno}"
            )
        yield lineno, obj


def read_json_lines(
    path: PathLike, *, what: str = "JSON Lines file", max_bytes: int = MAX_BYTES
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    return list(iter_json_lines(read_text(path, max_bytes=max_bytes, what=what), source=path))


def _no_duplicate_keys(base: type) -> type:
    """A yaml loader class like ``base`` on which a key given twice in one mapping is an error."""
    import yaml

    class Loader(base):  # type: ignore[misc,valid-type,unused-ignore]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # an unhashable key fails in the base constructor, with its mark
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one",
                        key_node.start_mark,
                    )
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return Loader


def parse_yaml(text: str, *, source: PathLike, strings_only: bool = False) -> Any:
    """YAML ``text`` (safe: builds no objects); any failure a :class:`TunelensInputError`.

    A key given twice in one mapping is an error naming both lines (PyYAML
    would silently keep the last). ``strings_only``: every scalar stays a
    string (labels like ``yes`` or ``0`` as written).
    """
    import yaml

    base = yaml.BaseLoader if strings_only else yaml.SafeLoader
    loader = _no_duplicate_keys(base)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe/base loader builds no objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(error, "problem", None) or str(error).split("\n")[0]
        raise TunelensInputError(
            f"invalid YAML: {problem}", source=str(source), where=where
        ) from None
    except RecursionError:
        raise TunelensInputError("invalid YAML: nested too deeply", source=str(source)) from None
    except ValueError as error:  # an integer too long to convert
        raise TunelensInputError(f"invalid YAML: {error}", source=str(source)) from None
