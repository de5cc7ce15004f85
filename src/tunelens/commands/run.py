"""`tunelens run` and `tunelens report`: a whole study in one command, and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelens.bounds import check_option
from tunelens.cli import app
from tunelens.commands.studies import (
    AllowMissingOption,
    LimitOption,
    SaveAdaptersOption,
    say_limited,
)
from tunelens.spec import Spec


def with_run_options(
    spec: Spec, limit: int | None, allow_missing_tasks: bool, save_adapters: bool = False
) -> Spec:
    """The spec with --limit / --allow-missing-tasks / --save-adapters applied (given wins)."""
    update: dict[str, object] = {}
    if save_adapters:
        update["save_adapters"] = True
    if limit is not None:
        update["limit"] = check_option(Spec, "limit", limit, "--limit")
    if allow_missing_tasks:
        update["allow_missing_tasks"] = True
    return spec.model_copy(update=update) if update else spec


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
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="If another run holds DIR (DIR/.lock), wait for it instead of refusing."
        ),
    ] = False,
    limit: LimitOption = None,
    allow_missing_tasks: AllowMissingOption = False,
    save_adapters: SaveAdaptersOption = False,
) -> None:
    """Run every unfinished cell of a study, then write results.json and report.html."""
    from tunelens.report.html import build_report
    from tunelens.runs.ranks import is_main_process
    from tunelens.runs.study import RESULTS, run_study
    from tunelens.spec import default_spec, load_spec

    if spec is not None:  # DIR/spec.yaml may be given back: it is rewritten as the spec as run
        from tunelens.io import refuse_overwriting_inputs
        from tunelens.runs.study import TIMINGS

        written = ("results.json", "report.html", "manifest.json", TIMINGS)
        refuse_overwriting_inputs([out, *(out / name for name in written)], [spec])
    loaded = default_spec() if spec is None else load_spec(spec)
    loaded = with_run_options(loaded, limit, allow_missing_tasks, save_adapters)
    run_study(
        loaded,
        out,
        executor=executor,
        address=address,
        progress=not no_progress,
        source="the default spec" if spec is None else str(spec),
        wait=wait,
    )
    if not is_main_process():
        return  # another rank of accelerate launch / torchrun: rank 0 writes and reports
    report = build_report(out)
    typer.echo(f"results: {out / RESULTS}")
    typer.echo(f"report:  {report}")
    say_limited(loaded.limit)


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
