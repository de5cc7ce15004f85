"""`tunelens run` and `tunelens report`: a whole study in one command, and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelens.cli import app


@app.command("run")
def run(
    spec: Annotated[
        Path | None,
        typer.Argument(
            help="YAML spec; omitted: the embedded default (both studies, world model).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory; re-run to resume.")] = ...,  # type: ignore[assignment]  # typer: required
    # A plain string checked by the library, so a bad value is exit status 2 with one line.
    executor: Annotated[
        str, typer.Option(help="Where cells run: 'local' (this process) or 'ray' (Ray tasks).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster address (e.g. 'auto', 'ray://head:10001'); "
            "default: a local Ray instance."
        ),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Run every unfinished cell of a study, then write results.json and report.html."""
    from tunelens.report.html import build_report
    from tunelens.runs.study import RESULTS, run_study
    from tunelens.spec import default_spec, load_spec

    loaded = default_spec() if spec is None else load_spec(spec)
    run_study(loaded, out, executor=executor, address=address, progress=not no_progress)
    report = build_report(out)
    typer.echo(f"results: {out / RESULTS}")
    typer.echo(f"report:  {report}")


@app.command("report")
def report(
    directory: Annotated[
        Path, typer.Argument(help="A run directory holding results.json or decide.json.")
    ],
) -> None:
    """Rebuild a run's report from its results: DIR/report.html from DIR/results.json,
    DIR/decide.html from DIR/decide.json (and their figures)."""
    from tunelens.report import build_any_report

    for path in build_any_report(directory):
        typer.echo(f"report: {path}")
