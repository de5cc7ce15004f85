"""Load tasks from Super-NaturalInstructions JSON, JSONL files, folders and split files.

Every problem with a file becomes a ``TunelensInputError`` that names the file,
the place (line or field) and what is wrong, because a bad task file found
half-way through a long run wastes hours, and a bare ``KeyError`` says nothing.

SuperNI task JSON (one task per file, the task's name is the file's stem)::

    {"Definition": ["..."], "Categories": ["..."],
     "Positive Examples": [{"input": "...", "output": "...", "explanation": "..."}],
     "Negative Examples": [...],
     "Instances": [{"id": "...", "input": "...", "output": ["...", ...]}], ...}

Other fields (Contributors, Source, licences, ...) are ignored, except that a
``"World Rule"`` object (written by ``tunelens world export``) becomes the
task's metadata so that world tasks survive a round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensInputError
from tunelens.io import read_json, read_text  # read_text: re-exported for older imports
from tunelens.tasks.labels import check_label_space, label_space
from tunelens.tasks.types import Example, Instance, Task

TASK_SUFFIXES = (".json", ".jsonl")

PathLike = str | Path


class FieldReader:
    """Typed access to fields of a parsed JSON object, raising errors that name the place.

    ``where`` is the place prefix (e.g. ``"line 4"``), ``path`` the file.
    """

    def __init__(self, path: Path, where: str = "") -> None:
        self.path = path
        self.where = where

    def error(self, field: str, message: str) -> TunelensInputError:
        """An error located at ``field`` (joined to this reader's place)."""
        place = ", ".join(p for p in (self.where, f"field {field!r}" if field else "") if p)
        return TunelensInputError(message, source=str(self.path), where=place or None)

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field, f"expected a JSON object, got {_kind(value)}")
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {_kind(value)}")
        return value

    def string_list(self, value: Any, field: str, *, allow_string: bool = True) -> list[str]:
        """A list of strings; a single string counts as a one-element list if allowed."""
        if allow_string and isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{field}[{i}]", f"expected a string, got {_kind(item)}")
        return list(value)

    def outputs(self, data: dict[str, Any], field: str = "output") -> tuple[str, ...]:
        """An instance's reference outputs (key ``output``): non-empty list of strings or one.

        ``field`` names the place in errors.
        """
        if "output" not in data:
            raise self.error(field, "instance has no output")
        outputs = self.string_list(data["output"], field)
        if not outputs:
            raise self.error(field, "instance has no output (empty list)")
        return tuple(outputs)

    def example(self, value: Any, field: str) -> Example:
        """A demonstration object ``{"input", "output", "explanation"?}``."""
        data = self.obj(value, field)
        for key in ("input", "output"):
            if key not in data:
                raise self.error(f"{field}.{key}", "example has no " + key)
        output = data["output"]
        if isinstance(output, list):  # a few SuperNI tasks list several outputs
            outputs = self.string_list(output, f"{field}.output")
            if not outputs:
                raise self.error(f"{field}.output", "example has no output (empty list)")
            output = outputs[0]
        explanation = data.get("explanation", "")
        return Example(
            self.string(data["input"], f"{field}.input"),
            self.string(output, f"{field}.output"),
            "" if explanation is None else self.string(explanation, f"{field}.explanation"),
        )


def _kind(value: Any) -> str:
    """A JSON type name for error messages."""
    if value is None:
        return "null"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def check_unique_ids(instances: Iterable[Instance], path: Path) -> None:
    """Instance ids key predictions and caches, so two instances may not share one."""
    seen: set[str] = set()
    for inst in instances:
        if inst.id in seen:
            raise TunelensInputError(f"duplicate instance id {inst.id!r}", source=str(path))
        seen.add(inst.id)


def parse_superni(data: Any, path: Path, name: str | None = None) -> Task:
    """A Task from a parsed SuperNI task object; ``name`` defaults to the file's stem."""
    name = name or path.stem
    r = FieldReader(path)
    data = r.obj(data, "")
    if "Definition" not in data:
        raise r.error("Definition", "task has no Definition")
    definition_parts = r.string_list(data["Definition"], "Definition")
    if not definition_parts:
        raise r.error("Definition", "Definition is an empty list")
    definition = " ".join(part.strip() for part in definition_parts)

    if "Instances" not in data:
        raise r.error("Instances", "task has no Instances")
    raw_instances = data["Instances"]
    if not isinstance(raw_instances, list):
        raise r.error("Instances", f"expected a list, got {_kind(raw_instances)}")
    if not raw_instances:
        raise r.error("Instances", "task has no instances (empty list)")
    instances = []
    for i, raw in enumerate(raw_instances):
        field = f"Instances[{i}]"
        inst = r.obj(raw, field)
        if "input" not in inst:
            raise r.error(f"{field}.input", "instance has no input")
        inst_id = inst.get("id", f"{name}-{i}")
        instances.append(
            Instance(
                id=str(inst_id),
                input=r.string(inst["input"], f"{field}.input"),
                outputs=r.outputs(inst, f"{field}.output"),
            )
        )
    check_unique_ids(instances, path)

    def examples(key: str) -> tuple[Example, ...]:
        raw = data.get(key) or []
        if not isinstance(raw, list):
            raise r.error(key, f"expected a list of examples, got {_kind(raw)}")
        return tuple(r.example(e, f"{key}[{i}]") for i, e in enumerate(raw))

    categories = r.string_list(data.get("Categories") or [], "Categories")
    world_rule = data.get("World Rule")
    metadata: dict[str, Any] = dict(world_rule) if isinstance(world_rule, dict) else {}
    positive = examples("Positive Examples")
    space = label_space(
        (i.outputs for i in instances),
        definition=definition,
        example_outputs=[e.output for e in positive],
    )
    check_label_space(space.labels, source=str(path), task=name, where="outputs")
    return Task(
        name=name,
        definition=definition,
        instances=tuple(instances),
        positive_examples=positive,
        negative_examples=examples("Negative Examples"),
        categories=tuple(categories),
        source=str(path),
        labels=space.labels,
        metadata=metadata,
    )


def load_superni_task(path: PathLike) -> Task:
    """One SuperNI task JSON file."""
    path = Path(path)
    return parse_superni(read_json(path, what="task file"), path)


def find_task_files(directory: PathLike) -> list[Path]:
    """Every *.json / *.jsonl file under ``directory`` (recursively, sorted, no hidden files)."""
    directory = Path(directory)
    found = [
        p
        for p in directory.rglob("*")
        if p.suffix in TASK_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]
    return sorted(found)


def load_task_file(path: PathLike) -> Task:
    """One task file, by suffix: ``.json`` (SuperNI) or ``.jsonl`` (tunelens JSONL); a parquet
    or JSONL shard (:mod:`tunelens.tasks.hf`) that holds exactly one task."""
    path = Path(path)
    if path.suffix == ".json":
        return load_superni_task(path)
    from tunelens.tasks import hf  # lazy: hf imports this module (FieldReader, parse_superni)

    if path.suffix == ".parquet" or hf.is_shard_jsonl(path):
        tasks = hf.load_shards([path])
        if len(tasks) != 1:
            raise TunelensInputError(
                f"the table holds {len(tasks)} tasks where one task file is expected",
                source=str(path),
            )
        return tasks[0]
    if path.suffix == ".jsonl":
        from tunelens.tasks.jsonl import load_jsonl  # lazy: jsonl imports this module

        return load_jsonl(path)
    raise TunelensInputError(
        f"unknown task file type {path.suffix or '(no suffix)'!r}; expected .json, .jsonl, "
        "a folder or a split file <root>/splits/<name>/<part>_tasks.txt",
        source=str(path),
    )


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, str | Path):
        return [Path(paths)]
    return [Path(p) for p in paths]


def load_tasks(paths: PathLike | Iterable[PathLike], *, allow_missing: bool = False) -> list[Task]:
    """Tasks from files, folders and split files, in the order given (folders sorted by path).

    Each path is a ``.json`` SuperNI task, a ``.jsonl`` tunelens task, a folder
    (every such file under it) or a SuperNI split file ``splits/<name>/<part>_tasks.txt``
    (``allow_missing``: skip the tasks it names that have no file). Hugging Face
    copies load too (:mod:`tunelens.tasks.hf`): a ``save_to_disk`` directory,
    ``*.parquet`` shards and JSONL shards with ``task_name`` / ``inputs`` columns
    (a folder's shards are read as one table).

    Two tasks with the same name are an error: results are keyed by task name.
    """
    from tunelens.tasks import hf  # lazy: hf imports this module (FieldReader, parse_superni)

    tasks: list[Task] = []
    origin: dict[str, str] = {}

    def add(task: Task, file: Path) -> None:
        if task.name in origin:
            raise TunelensInputError(
                f"task {task.name!r} is loaded twice (also from {origin[task.name]})",
                source=str(file),
            )
        origin[task.name] = str(file)
        tasks.append(task)

    for path in _as_paths(paths):
        if hf.is_dataset_dir(path):
            for task in hf.load_dataset_dir(path):
                add(task, path)
            continue
        if path.is_dir():
            files = find_task_files(path)
            files += sorted(
                p
                for p in path.rglob("*.parquet")
                if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)
            )
            if not files:
                raise TunelensInputError(
                    "folder holds no task files (*.json, *.jsonl or *.parquet)", source=str(path)
                )
        elif not path.exists():
            raise TunelensInputError("no such file or directory", source=str(path))
        elif is_split_file(path):
            files = split_task_files(path, allow_missing=allow_missing)
        else:
            files = [path]
        shards = [f for f in files if f.suffix == ".parquet" or hf.is_shard_jsonl(f)]
        for file in files:
            if file not in shards:
                add(load_task_file(file), file)
        if shards:
            for task in hf.load_shards(shards):
                add(task, Path(task.source))
    if not tasks:
        raise TunelensInputError("no task files given")
    return tasks


def split_file(root: PathLike, split_name: str = "default", part: str = "test") -> Path:
    """Where SuperNI keeps a split's task list: ``<root>/splits/<name>/<part>_tasks.txt``."""
    return Path(root) / "splits" / split_name / f"{part}_tasks.txt"


def read_split(path: PathLike) -> list[tuple[int, str]]:
    """(line number, task name) for each non-blank, non-comment line of a split file."""
    path = Path(path)
    text = read_text(path)
    names = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if name and not name.startswith("#"):
            names.append((lineno, name))
    return names


def split_task_files(listing: PathLike, *, allow_missing: bool = False) -> list[Path]:
    """The task files a split file names, in its order.

    The split file must sit at ``<root>/splits/<name>/<part>_tasks.txt``; task
    files are looked up anywhere under ``<root>/tasks`` as ``<name>.json`` or
    ``<name>.jsonl``. A named task without a file is an error unless
    ``allow_missing`` (for partial copies of the benchmark); then it is skipped.
    """
    listing = Path(listing)
    if not listing.is_file():
        raise TunelensInputError("no such split file", source=str(listing))
    if not listing.name.endswith("_tasks.txt") or listing.parent.parent.name != "splits":
        raise TunelensInputError(
            "a split file must be <root>/splits/<name>/<part>_tasks.txt", source=str(listing)
        )
    tasks_dir = listing.parents[2] / "tasks"
    by_name: dict[str, Path] = {}
    if tasks_dir.is_dir():
        for found in find_task_files(tasks_dir):
            by_name.setdefault(found.stem, found)
    files: list[Path] = []
    for lineno, name in read_split(listing):
        file = by_name.get(name)
        if file is None:
            if allow_missing:
                continue
            raise TunelensInputError(
                f"task {name!r} has no file {name}.json under {tasks_dir}",
                source=str(listing),
                where=f"line {lineno}",
            )
        files.append(file)
    if not files:
        raise TunelensInputError("split names no task that has a file", source=str(listing))
    return files


def is_split_file(path: Path) -> bool:
    """Whether ``path`` looks like a SuperNI split listing (``*_tasks.txt``)."""
    return path.name.endswith("_tasks.txt")


def load_split(
    root: PathLike,
    split_name: str = "default",
    part: str = "test",
    *,
    allow_missing: bool = False,
) -> list[Task]:
    """The tasks of ``<root>/splits/<split_name>/<part>_tasks.txt``, in its order.

    See ``split_task_files`` for the lookup and ``allow_missing``.
    """
    listing = split_file(root, split_name, part)
    if not listing.exists():
        raise TunelensInputError(
            f"no split file for split {split_name!r}, part {part!r}", source=str(listing)
        )
    return [load_task_file(f) for f in split_task_files(listing, allow_missing=allow_missing)]
