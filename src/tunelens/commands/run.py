"""`tunelens run` and `tunelens report`: a whole study in one command, and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunelens.bounds import check_option
from tunelens.options.apps import app, examples
from tunelens.options.common import (
    STUDY,
    AddressOption,
    ExecutorOption,
    NoProgressOption,
    OutOption,
    WaitOption,
    say_limited,
)
from tunelens.options.config_options import with_config_options
from tunelens.spec import Spec

RUN_OPTIONS = STUDY.subset("limit", "allow_missing_tasks", "save_adapters")
"""The spec settings a run may change from the command line (given wins)."""


def with_run_options(
    spec: Spec,
    limit: int | None = None,
    allow_missing_tasks: bool | None = None,
    save_adapters: bool | None = None,
) -> Spec:
    """The spec with --limit / --allow-missing-tasks / --save-adapters applied where given
    (None: the spec's own value stays)."""
    update: dict[str, object] = {}
    if save_adapters is not None:
        update["save_adapters"] = save_adapters
    if limit is not None:
        update["limit"] = check_option(Spec, "limit", limit, "--limit")
    if allow_missing_tasks is not None:
        update["allow_missing_tasks"] = allow_missing_tasks
    return spec.model_copy(update=update) if update else spec


@app.command(
    "run",
    epilog=examples(
        (
            "tunelens run --out runs/default",
            "the default study; report at runs/default/report.html",
        ),
        ("tunelens run my_spec.yaml --out runs/mine --limit 5", "a quick look at a spec of yours"),
        (
            "tunelens run my_spec.yaml --out runs/mine",
            "the same again: resumes, skips finished cells",
        ),
        ("tunelens run my_spec.yaml --out runs/mine --executor ray --address auto", "on Ray"),
    ),
)
@with_config_options(RUN_OPTIONS)
def run(
    spec: Annotated[
        Path | None,
        typer.Argument(
            help="YAML spec; omitted: the embedded default (both studies, world model).",
            show_default=False,
        ),
    ] = None,
    out: OutOption = ...,  # type: ignore[assignment]  # typer: required
    # A plain string checked by the library, so a bad value is exit status 2 with one line.
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    # Checked by the library (make_executor), so 0 or --executor ray is exit status 2, one line.
    workers: Annotated[
        int | None,
        typer.Option(
            help="Cells the local executor runs at once, each in a worker process; 1: one "
            "after the other in this process. Default: usable cores / threads per cell "
            "(TUNELENS_THREADS, else OMP_NUM_THREADS, else 1 for a small model and every core "
            "for a large one); cells on a GPU always run in this process.",
            show_default="automatic",
        ),
    ] = None,
    no_progress: NoProgressOption = False,
    wait: WaitOption = False,
    *,
    study: dict[str, Any],
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
    loaded = with_run_options(loaded, **study)
    run_study(
        loaded,
        out,
        executor=executor,
        address=address,
        workers=workers,
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


@app.command(
    "report",
    epilog=examples(
        ("tunelens report runs/default", "report.html again from results.json"),
        ("tunelens report decide-my_task", "decide.html again from decide.json"),
    ),
)
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
