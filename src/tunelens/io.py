"""Reading user files and writing outputs, every failure one clear error.

Reading: text with a size cap, JSON and JSON Lines. Every way a user's file
can be wrong (missing, a folder, unreadable, too large, not UTF-8, empty,
invalid JSON, nested too deeply, an integer too long to convert) becomes a
:class:`tunelens.errors.TunelensInputError` naming the file (``source``) and,
where known, the place (``where``: ``"line L, column C"``), so the CLI can
print one line and exit 2 instead of a traceback. A key given
twice in one JSON object is an error naming the key (Python's ``json`` would
silently keep the last), as in YAML.

Writing (:func:`atomic_write_text`, :func:`atomic_write_bytes`,
:func:`atomic_path`, :func:`atomic_write_all`): the one way tunelens writes a
file. The content goes to a uniquely named hidden temporary file in the
target's folder, is flushed and fsynced, and is renamed over the target, so a
reader sees the old file or the new one, never a part; on any failure the
temporary file is removed and the old file is left as it was. A failure (a full
disk, a read-only folder, a folder where the file should be) is a
:class:`TunelensInputError` naming the target, never the temporary file.
:func:`refuse_overwriting_inputs` refuses an output path that is one of the
command's inputs (the same file by any name: symlinks, hard links).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
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
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKeyError as error:
        raise TunelensInputError(
            f"invalid JSON: key {error.key!r} is given twice in one object; keep one",
            source=str(source),
            where=where,
        ) from None
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


class DuplicateKeyError(ValueError):
    """A key given twice in one JSON object."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: the object as a dict, or :class:`DuplicateKeyError`."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKeyError(key)
        obj[key] = value
    return obj


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
    import yaml  # lazy: `tunelens --help` imports this module, and yaml would add ~20% to it

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
    import yaml  # lazy: `tunelens --help` imports this module, and yaml would add ~20% to it

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


# ---------------------------------------------------------------- writing outputs

TEMP_PREFIX = "."  # temporary files are hidden: ".<name>.<random>.tmp"
TEMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """The mode a plain ``open()`` would give (mkstemp's 0600 would hide reports from others)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class WriteError(TunelensInputError, OSError):
    """A write that failed (full disk, read-only folder, a folder in the way), naming the
    user's path. Also an :class:`OSError`, so code that tolerates a failed write (a timings
    file in a ``finally``) still does."""


def write_error(error: OSError, path: PathLike) -> WriteError:
    """One line for a failed write of ``path``: the user's path, not a temporary file's."""
    target = Path(path)
    if target.is_dir():
        failure = WriteError("cannot write: is a directory", source=str(target))
    else:
        reason = error.strerror or str(error) or type(error).__name__
        failure = WriteError(f"cannot write: {reason}", source=str(target))
    failure.errno = error.errno
    return failure


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_for(path: Path) -> Path:
    """A new, uniquely named, empty hidden file beside ``path`` (with ``open()``'s mode)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
        )
    except OSError as error:
        raise write_error(error, path) from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _file_mode())
    finally:
        os.close(fd)
    return Path(temp)


def _fill(temp: Path, data: bytes, path: Path) -> None:
    """Write ``data`` to ``temp`` and fsync it; an OSError names ``path``."""
    try:
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise write_error(error, path) from None


def _replace(temp: Path, path: Path) -> None:
    if path.is_dir():
        raise WriteError("cannot write: is a directory", source=str(path))
    try:
        os.replace(temp, path)
    except OSError as error:
        raise write_error(error, path) from None


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file (module docstring)."""
    atomic_write_all({Path(path): data})


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_all({Path(path): text})


def atomic_write_all(files: Mapping[Path, str | bytes]) -> None:
    """Write several files all or none (as far as a disk allows): every temporary file is
    written first, then each is renamed, in the order given.

    A full disk fails while the temporary files are written, before any rename,
    so the old files all stay (``decide.json`` never without ``decide.html``:
    give the one that must not be alone last).
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            path = Path(path)
            temp = _temp_for(path)
            temps.append((temp, path))
            data = content.encode("utf-8") if isinstance(content, str) else content
            _fill(temp, data, path)
        for temp, path in temps:
            _replace(temp, path)
    finally:
        for temp, _ in temps:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
    for directory in dict.fromkeys(path.parent for _, path in temps):
        _fsync_dir(directory)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path for a library that writes by file name (parquet, PNG); renamed over
    ``path`` when the block ends without an error, removed otherwise."""
    target = Path(path)
    temp = _temp_for(target)
    try:
        try:
            yield temp
            with temp.open("rb+") as handle:
                os.fsync(handle.fileno())
        except OSError as error:
            raise write_error(error, target) from None
        _replace(temp, target)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet), a dangling link, no permission
        return False


def refuse_overwriting_inputs(
    outputs: Iterable[PathLike], inputs: Iterable[PathLike], *, option: str = "--out"
) -> None:
    """A :class:`TunelensInputError` when an output path is one of the inputs.

    The same file by any name counts (``os.path.samefile``: symlinks, hard links,
    ``./x`` and ``x``), as does a path that resolves to the input's path (a
    symlink to it that a write would follow).
    """
    sources = [Path(p) for p in inputs]
    for output in map(Path, outputs):
        for source in sources:
            if _same_file(output, source) or _resolved(output) == _resolved(source):
                raise TunelensInputError(
                    f"writing this output would destroy the input {str(source)!r} (the same "
                    f"file); choose another {option}",
                    source=str(output),
                )


def digest_json(value: Any, length: int = 20) -> str:
    """SHA-256 (hex, truncated) of ``value`` as canonical JSON: the content address of cells,
    tasks and model fingerprints (equal content, equal digest, whatever the key order)."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]
