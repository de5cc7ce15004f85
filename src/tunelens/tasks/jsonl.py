"""The tunelens JSONL task format: one user task per file, easy to write by hand or script.

A SuperNI task JSON must be written in one piece; a JSONL file can be appended
to and streamed, and one instance per line makes error messages point at a line.

Layout (UTF-8, one JSON object per line, blank lines ignored):

* an optional **header** on the first non-blank line, recognised by the key
  ``"tunelens_task": 1`` or by a ``"definition"`` key without an ``"input"`` key::

      {"tunelens_task": 1, "task": "sentiment", "definition": "Is the review positive?",
       "labels": ["negative", "positive"], "categories": ["Sentiment Analysis"],
       "examples": [{"input": "Great film.", "output": "positive", "explanation": "..."}],
       "negative_examples": []}

  Every header field is optional. ``task`` defaults to the file's stem,
  ``definition`` to ``""`` (it may also be a list of strings, joined by spaces),
  ``examples`` are the positive demonstrations. ``labels``, when given, must be a
  non-empty list and every instance output must be one of them; when absent the
  label space is derived from the instances (``tunelens.tasks.labels``).
* then **one instance per line**: ``{"input": str, "output": str | [str, ...], "id"?: str}``;
  ``id`` defaults to ``<task>-<n>`` (n counts instances from 0).

Unknown keys are ignored, so other tools can annotate lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensInputError
from tunelens.io import atomic_write_text, read_json_lines
from tunelens.tasks.labels import check_label_space, label_space
from tunelens.tasks.loaders import FieldReader, check_unique_ids
from tunelens.tasks.types import Example, Instance, Task

FORMAT_KEY = "tunelens_task"
FORMAT_VERSION = 1


def is_header(obj: dict[str, Any]) -> bool:
    """Whether a JSONL line is the task header rather than an instance."""
    return FORMAT_KEY in obj or ("definition" in obj and "input" not in obj)


def _parse_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line, with errors naming the line."""
    return read_json_lines(path, what="task file")


def load_jsonl(path: str | Path) -> Task:
    """One task from a tunelens JSONL file (see the module docstring for the format)."""
    path = Path(path)
    rows = _parse_lines(path)
    header: dict[str, Any] = {}
    r = FieldReader(path, f"line {rows[0][0]}")
    if is_header(rows[0][1]):
        header = rows[0][1]
        rows = rows[1:]
        version = header.get(FORMAT_KEY, FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise r.error(FORMAT_KEY, f"unsupported format version {version!r}; expected 1")
    name = r.string(header.get("task", path.stem), "task")
    if not name.strip():
        raise r.error("task", "task name is empty")
    definition_parts = r.string_list(header.get("definition", ""), "definition")
    definition = " ".join(part.strip() for part in definition_parts)
    categories = tuple(r.string_list(header.get("categories", []), "categories"))

    def examples(key: str) -> tuple[Example, ...]:
        raw = header.get(key, [])
        if not isinstance(raw, list):
            raise r.error(key, "expected a list of examples")
        return tuple(r.example(e, f"{key}[{i}]") for i, e in enumerate(raw))

    positive, negative = examples("examples"), examples("negative_examples")
    labels: tuple[str, ...] | None = None
    if "labels" in header and header["labels"] is not None:
        given = r.string_list(header["labels"], "labels", allow_string=False)
        if not given:
            raise r.error("labels", "label space is empty; omit 'labels' to derive it")
        for i, label in enumerate(given):
            if not label.strip():
                raise r.error(f"labels[{i}]", "a label must not be empty or only spaces")
        check_label_space(given, source=str(path), task=name, where=f"{r.where}, field 'labels'")
        labels = tuple(sorted(set(given)))

    instances: list[Instance] = []
    for lineno, obj in rows:
        line = FieldReader(path, f"line {lineno}")
        if is_header(obj):
            raise line.error("", "a header line is allowed only as the first line")
        if "input" not in obj:
            raise line.error("input", "instance has no input")
        outputs = line.outputs(obj)
        if not any(output.strip() for output in outputs):
            raise line.error("output", "instance output is empty or only spaces")
        if labels is not None:
            for output in outputs:
                if output not in labels:
                    raise line.error("output", f"output {output!r} is not one of the labels")
        inst_id = obj.get("id", f"{name}-{len(instances)}")
        if not isinstance(inst_id, str | int):
            raise line.error("id", "expected a string")
        instances.append(Instance(str(inst_id), line.string(obj["input"], "input"), outputs))
    if not instances:
        raise TunelensInputError("file has no instances (only a header)", source=str(path))
    check_unique_ids(instances, path)
    if labels is None:
        labels = label_space(
            (i.outputs for i in instances),
            definition=definition,
            example_outputs=[e.output for e in positive],
        ).labels
        check_label_space(labels, source=str(path), task=name, where="outputs")
    return Task(
        name=name,
        definition=definition,
        instances=tuple(instances),
        positive_examples=positive,
        negative_examples=negative,
        categories=categories,
        source=str(path),
        labels=labels,
    )


def _example(e: Example) -> dict[str, str]:
    out = {"input": e.input, "output": e.output}
    if e.explanation:
        out["explanation"] = e.explanation
    return out


def task_to_jsonl_lines(task: Task) -> list[str]:
    """The lines (without newlines) of ``task`` in the tunelens JSONL format."""
    header: dict[str, Any] = {
        FORMAT_KEY: FORMAT_VERSION,
        "task": task.name,
        "definition": task.definition,
    }
    if task.labels is not None:
        header["labels"] = list(task.labels)
    header["categories"] = list(task.categories)
    header["examples"] = [_example(e) for e in task.positive_examples]
    if task.negative_examples:
        header["negative_examples"] = [_example(e) for e in task.negative_examples]
    lines = [json.dumps(header, ensure_ascii=False)]
    for inst in task.instances:
        output: str | list[str] = inst.outputs[0] if len(inst.outputs) == 1 else list(inst.outputs)
        lines.append(
            json.dumps({"id": inst.id, "input": inst.input, "output": output}, ensure_ascii=False)
        )
    return lines


def write_jsonl(task: Task, path: str | Path) -> Path:
    """Write ``task`` as tunelens JSONL (header + one instance per line); returns the path."""
    path = Path(path)
    atomic_write_text(path, "\n".join(task_to_jsonl_lines(task)) + "\n")
    return path
