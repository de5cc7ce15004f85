"""`tunelens export`: a run's results as tidy tables (one long table per experiment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelens.options.apps import app, examples


@app.command(
    "export",
    epilog=examples(
        ("tunelens export runs/default", "CSV tables under runs/default/export/"),
        ("tunelens export runs/default --format parquet --out tables", "Parquet (needs pyarrow)"),
    ),
)
def export(
    directory: Annotated[
        Path, typer.Argument(help="A run directory holding results.json or decide.json.")
    ],
    format: Annotated[
        str, typer.Option("--format", help="Table format: csv or parquet (parquet needs pyarrow).")
    ] = "csv",
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the tables.", show_default="DIR/export"),
    ] = None,
) -> None:
    """Write one long table per experiment in the run (one row per measured value, each
    experiment's own columns), loadable with pandas.read_csv."""
    from tunelens.report.tidy import export_tables

    for path in export_tables(directory, out, format=format):
        typer.echo(f"table: {path}")
