"""`tunelens examples add|list|export`: keep examples accepted in operation, export tuning sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunelens.bounds import MAX_COUNT
from tunelens.errors import TunelensInputError
from tunelens.examples.store import (
    DEFAULT_DB,
    AddResult,
    ExampleStore,
    NewExample,
    StoredExample,
    check_time,
    read_example_rows,
)
from tunelens.options.apps import app, examples
from tunelens.terminal import escape_control

examples_app = typer.Typer(
    help="The example loop: a local SQLite store of examples accepted in operation.",
    epilog=examples(
        ("tunelens examples add --input 'ok?' --output 'yes'", "store one accepted example"),
        ("tunelens examples export --out data/accepted.jsonl", "a task file to tune on"),
    ),
    no_args_is_help=True,
)
app.add_typer(examples_app, name="examples")

DbOption = Annotated[
    Path, typer.Option("--db", help="The SQLite store (created on the first add).")
]


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return escape_control(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _safe(text: str) -> Text:
    """A table cell: never markup, control characters (ANSI/OSC sequences) made visible."""
    return Text(escape_control(text))


def _row_summary(
    total: int, added: int, headers: list[str], duplicates: list[tuple[str, int]]
) -> str:
    """`` (3 rows: 1 added, 2 skipped as task headers (lines 1, 3))`` when rows were skipped."""
    if not headers and not duplicates:
        return ""
    parts = [f"{added} added"]
    if headers:
        lines = ", ".join(h.removeprefix("line ") for h in headers)
        parts.append(
            f"{len(headers)} skipped as task headers (line{'s' * (len(headers) > 1)} {lines})"
        )
    if duplicates:
        parts.append(f"{len(duplicates)} skipped as duplicates")
    return f" ({total} rows: {', '.join(parts)})"


@examples_app.command(
    "add",
    epilog=examples(
        ("tunelens examples add --input 'Is it late?' --output 'no' --label no", "one example"),
        ("tunelens examples add --from accepted.jsonl --skip-duplicates", "a JSONL file of them"),
    ),
)
def add(
    db: DbOption = Path(DEFAULT_DB),
    input_text: Annotated[
        str | None, typer.Option("--input", help="The example's input text.")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="The accepted output (the tuning target).")
    ] = None,
    label: Annotated[str | None, typer.Option(help="An optional class tag.")] = None,
    source: Annotated[str, typer.Option(help="Where the example comes from.")] = "",
    rejected: Annotated[
        bool, typer.Option("--rejected", help="Record it as rejected (never exported).")
    ] = False,
    time: Annotated[str | None, typer.Option(help="ISO 8601 time; default: now (UTC).")] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Add every row of a JSONL file ({input, output, label?, "
            "source?, accepted?, time?} per line) or a CSV file with those columns, "
            "in one transaction.",
        ),
    ] = None,
    skip_duplicates: Annotated[
        bool,
        typer.Option(
            "--skip-duplicates", help="Skip exact duplicates instead of refusing the whole add."
        ),
    ] = False,
) -> None:
    """Add one example (--input/--output) or a file of them (--from); duplicates are refused.

    Rows with likely personal data (e-mail, phone or card numbers) are stored and flagged;
    `export` leaves them out unless --include-flagged. Exit 2 on a malformed row or a
    duplicate, and then nothing is added.
    """
    if from_file is not None:
        if input_text is not None or output is not None:
            raise TunelensInputError(
                "give either --from FILE or --input/--output, not both", where="examples add"
            )
        read = read_example_rows(from_file, default_source=source)
        rows, total, headers = read.examples, read.rows, read.headers
        origin = str(from_file)
    else:
        if input_text is None or output is None:
            raise TunelensInputError(
                "give --input and --output (or --from FILE)", where="examples add"
            )
        if not input_text.strip() or not output.strip():
            raise TunelensInputError("--input and --output must not be empty", where="examples add")
        if time is not None:
            check_time(time, "--time", "")
        rows = [NewExample(input_text, output, label or None, source, not rejected, time)]
        origin, total, headers = None, 1, []
    with ExampleStore(db) as store:
        result = store.add(rows, skip_duplicates=skip_duplicates, origin=origin)
        conflicts = store.contradictions(result.added)
    _report_added(db, result, conflicts, total, headers)


def _report_added(
    db: Path,
    result: AddResult,
    conflicts: list[tuple[StoredExample, int]],
    total: int,
    headers: list[str],
) -> None:
    """The summary line of `examples add`, then one line per contradiction, skip and flag."""
    ids = [row.id for row in result.added]
    span = f"#{ids[0]}" if len(ids) == 1 else (f"#{ids[0]}-#{ids[-1]}" if ids else "none")
    typer.echo(
        f"added {len(ids)} example{'s' if len(ids) != 1 else ''} ({span}) to "
        f"{escape_control(str(db))}{_row_summary(total, len(ids), headers, result.skipped)}"
    )
    for row, other in conflicts:
        typer.echo(
            f"warning: #{row.id} has the same input as accepted example #{other} but another "
            "output: a tuned model learns both",
            err=True,
        )
    for where, existing in result.skipped:
        typer.echo(
            f"skipped {escape_control(where or 'row')}: duplicate of example #{existing}",
            err=True,
        )
    flagged = [row for row in result.added if row.pii]
    for row in flagged:
        typer.echo(
            f"flagged #{row.id}: likely personal data ({', '.join(row.pii)}); kept out "
            "of exports unless --include-flagged",
            err=True,
        )


@examples_app.command(
    "list",
    epilog=examples(
        ("tunelens examples list --limit 20", "the latest rows"),
        ("tunelens examples list --flagged --json", "rows flagged for personal data, as JSON"),
    ),
)
def list_examples(
    db: DbOption = Path(DEFAULT_DB),
    flagged: Annotated[
        bool, typer.Option("--flagged", help="Only rows flagged for personal data.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_COUNT, help="At most this many rows.", show_default="all"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List stored examples: id, time, accepted, flags, source, label, input and output."""
    with ExampleStore(db, create=False) as store:
        rows = store.examples(flagged=True if flagged else None, limit=limit)
        total = store.count()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.to_json(), ensure_ascii=False))
        return
    table = Table(title=_safe(f"{db}: {len(rows)} of {total} examples"))
    for column in ("id", "time", "accepted", "pii", "source", "label", "input", "output"):
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text cells: example text is untrusted and may contain rich markup like "[bold]".
        table.add_row(
            str(row.id),
            _safe(row.time),
            "yes" if row.accepted else "no",
            _safe(", ".join(row.pii) or "-"),
            _safe(row.source or "-"),
            _safe(row.label or "-"),
            Text(_short(row.input)),
            Text(_short(row.output)),
        )
    Console().print(table)


@examples_app.command(
    "export",
    epilog=examples(
        ("tunelens examples export --out data/support.jsonl --task support", "a task file"),
        ("tunelens decide --task data/support.jsonl --model world", "then: prompt, or tune?"),
    ),
)
def export(
    out: Annotated[Path, typer.Option("--out", help="The JSONL task file to write.")],
    db: DbOption = Path(DEFAULT_DB),
    task: Annotated[
        str | None, typer.Option(help="Task name in the header; default: the output's stem.")
    ] = None,
    definition: Annotated[str, typer.Option(help="Task definition for the header.")] = "",
    include_flagged: Annotated[
        bool, typer.Option("--include-flagged", help="Also export rows flagged for personal data.")
    ] = False,
) -> None:
    """Export accepted examples as a tuning set in the tunelens JSONL task format."""
    with ExampleStore(db, create=False) as store:
        result = store.export_task(
            out, task=task or out.stem, definition=definition, include_flagged=include_flagged
        )
    typer.echo(f"exported {result.written} examples to {escape_control(str(result.path))}")
    if result.left_out_flagged:
        typer.echo(
            f"left out {result.left_out_flagged} example(s) flagged for personal data "
            "(--include-flagged exports them)",
            err=True,
        )
    if result.left_out_rejected:
        typer.echo(f"left out {result.left_out_rejected} rejected example(s)", err=True)
