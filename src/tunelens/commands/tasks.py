"""`tunelens tasks ...`: check task files before a long run, and see what a model will see."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tunelens.errors import TunelensInputError
from tunelens.options.apps import examples, tasks_app
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.tasks.loaders import (
    find_task_files,
    is_split_file,
    load_task_file,
    load_tasks,
    split_task_files,
)
from tunelens.tasks.types import Task
from tunelens.terminal import escape_control, one_line


def describe_labels(labels: tuple[str, ...] | None) -> str:
    """'2 labels: No., Yes.' or 'free text', for one-line summaries."""
    if labels is None:
        return "free text"
    return f"{len(labels)} label{'s' if len(labels) != 1 else ''}: {', '.join(labels)}"


def example_prompt(task: Task) -> str:
    """The Tk-Instruct prompt (definition + 2 positive examples) for the task's first instance."""
    return render_prompt(task, task.instances[0].input, None, PromptStyle(template="tk"))


def task_summary(task: Task) -> dict[str, Any]:
    """The JSON object `tasks show --json` prints for one task."""
    return {
        "name": task.name,
        "source": task.source,
        "instances": len(task.instances),
        "labels": list(task.labels) if task.labels is not None else None,
        "categories": list(task.categories),
        "definition": task.definition,
        "positive_examples": len(task.positive_examples),
        "negative_examples": len(task.negative_examples),
        "prompt": example_prompt(task),
    }


def _task_files(path: Path) -> list[Path]:
    if not path.exists():
        raise TunelensInputError("no such file or directory", source=str(path))
    if path.is_dir():
        files = find_task_files(path)
        if not files:
            raise TunelensInputError(
                "folder holds no task files (*.json or *.jsonl)", source=str(path)
            )
        return files
    if is_split_file(path):
        return split_task_files(path)
    return [path]


def _is_table(path: Path) -> bool:
    """A Hugging Face copy: a save_to_disk directory, a shard, or a folder holding shards."""
    from tunelens.tasks import hf

    if hf.is_dataset_dir(path):
        return True
    if path.is_dir():
        return any(p.suffix == ".parquet" or hf.is_shard_jsonl(p) for p in path.rglob("*.*"))
    return path.suffix == ".parquet" or hf.is_shard_jsonl(path)


@tasks_app.command(
    "validate",
    epilog=examples(
        ("tunelens tasks validate data/my_task.jsonl", "one task file"),
        ("tunelens tasks validate superni/tasks/*.json", "Super-NaturalInstructions files"),
    ),
)
def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Task files (.json SuperNI, .jsonl), folders of them, or split files "
            "(<root>/splits/<name>/<part>_tasks.txt)."
        ),
    ],
) -> None:
    """Check task files; print one summary line per valid file, one error line per bad one.

    Exit status 0 when every file is valid, 2 otherwise.
    """
    errors: list[TunelensInputError] = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            if _is_table(path):
                # A Hugging Face copy is one table of many tasks: it loads (or fails) whole.
                tables = load_tasks([path])
                files = [Path(task.source) for task in tables]
            else:
                tables = None
                files = _task_files(path)
        except TunelensInputError as error:
            errors.append(error)
            continue
        for index, file in enumerate(files):
            try:
                task = tables[index] if tables is not None else load_task_file(file)
                if task.name in seen:
                    raise TunelensInputError(
                        f"task {task.name!r} is defined twice (also in {seen[task.name]})",
                        source=str(file),
                    )
            except TunelensInputError as error:
                errors.append(error)
                continue
            seen[task.name] = file
            typer.echo(
                one_line(
                    f"ok {file}: {task.name}, {len(task.instances)} instances, "
                    f"{describe_labels(task.labels)}"
                )
            )
            if task.labels is not None and len(task.labels) == 1:
                typer.echo(
                    one_line(
                        f"warning: {file}: the label space has one label ({task.labels[0]!r}): "
                        "every answer is that label, so a guess baseline scores 100"
                    ),
                    err=True,
                )
    for problem in errors:
        typer.echo(f"error: {one_line(str(problem))}", err=True)
    if errors:
        sys.exit(2)


@tasks_app.command(
    "show",
    epilog=examples(
        ("tunelens tasks show data/my_task.jsonl", "label space and one rendered prompt"),
        ("tunelens tasks show data/*.jsonl --json", "one JSON object per task"),
    ),
)
def show(
    paths: Annotated[list[Path], typer.Argument(help="Task files, folders or split files.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, one object per task.")
    ] = False,
) -> None:
    """Per task: name, instances, categories, label space and one rendered Tk-Instruct prompt."""
    tasks = load_tasks(paths)
    if as_json:
        typer.echo(json.dumps([task_summary(t) for t in tasks], ensure_ascii=False, indent=1))
        return
    console = Console()
    for task in tasks:
        # Text objects, never markup strings: task text is untrusted and may contain "[...]".
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        # Control characters (ANSI/OSC escape sequences) are shown escaped, never obeyed.
        table.add_row("source", Text(one_line(task.source), overflow="fold"))
        table.add_row("instances", str(len(task.instances)))
        table.add_row("categories", Text(one_line(", ".join(task.categories) or "-")))
        table.add_row("label space", Text(one_line(describe_labels(task.labels))))
        table.add_row(
            "examples",
            f"{len(task.positive_examples)} positive, {len(task.negative_examples)} negative",
        )
        console.print(Panel(table, title=Text(one_line(task.name)), title_align="left"))
        console.print(
            Panel(
                Text(escape_control(example_prompt(task), keep_newlines=True)),
                title="Tk-Instruct prompt, first instance",
                title_align="left",
                border_style="dim",
            )
        )
