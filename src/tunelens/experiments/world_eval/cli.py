"""`tunelens world eval`: few-shot accuracy on world tasks, one ``world_eval`` cell per k.

Its options are generated from the section
(:class:`~tunelens.experiments.world_eval.spec.WorldEvalSpec`), so they show
its help and defaults. Registered by the command line through the experiment's
``cli_module``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunelens.bounds import check_range
from tunelens.experiments.world_eval.spec import WorldEvalSpec
from tunelens.options.apps import examples, world_app
from tunelens.options.common import JsonOption, NoProgressOption
from tunelens.options.config_options import ConfigOptions, with_config_options

if TYPE_CHECKING:
    from tunelens.experiments.world_eval.experiment import WorldEvalResult

MAX_SHOTS = 10_000
MAX_QUERIES = 100_000
"""Bounds of ``world eval`` beyond the section's: prompts and draws it can build in memory."""

WORLD_EVAL = ConfigOptions(
    WorldEvalSpec,
    key="section",
    panel="Evaluation",
    names={"queries_per_task": ("--queries",)},
    # The command has always dropped a repeated k (a spec section refuses one).
    normalise={"shots": lambda shots: list(dict.fromkeys(shots))},
)


@world_app.command(
    "eval",
    epilog=examples(
        ("tunelens world eval", "the shipped model at k = 0, 1, 2, 4, 8, 16"),
        ("tunelens world eval --model world-it --labels novel --json", "novel label words"),
    ),
)
@with_config_options(WORLD_EVAL)
def evaluate(
    as_json: JsonOption = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Keep the cells in this run directory (re-run to resume); default: a "
            "temporary one."
        ),
    ] = None,
    no_progress: NoProgressOption = False,
    *,
    section: WorldEvalSpec,
) -> None:
    """Few-shot accuracy on the held-out world tasks, with the label-space random baseline.

    One cell per k of the ``world_eval`` experiment, on the same machinery as ``tunelens run``.
    """
    import tempfile

    from tunelens.api import get_experiments
    from tunelens.experiments.world_eval import WorldEvalResult
    from tunelens.runs.study import execute

    check_range("--queries", section.queries_per_task, 1, MAX_QUERIES)
    check_range("--shots", max(section.shots), 0, MAX_SHOTS)
    (experiment,) = (e for e in get_experiments().values() if e.section_model is WorldEvalSpec)
    with tempfile.TemporaryDirectory(prefix="tunelens-world-eval-") as scratch:
        (run,) = execute(
            out or Path(scratch),
            [(experiment, section)],
            progress=not no_progress and not as_json,
            source="tunelens world eval",
        )
        data = run.aggregate()[experiment.name]
    result = WorldEvalResult.from_json(data)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    Console().print(result_table(section, result))


def result_table(section: WorldEvalSpec, result: WorldEvalResult) -> Table:
    """Accuracy per k, overall and per rule family, and the random guess."""
    extras = [
        "novel label words" if result.labels == "novel" else "",
        "definition first" if result.definition else "",
    ]
    where = "held-out world tasks" if section.tasks == "world:heldout" else section.tasks
    title = f"{section.model}: {where}: {result.tasks}, {section.queries_per_task} queries each"
    table = Table(title=", ".join([title, *(e for e in extras if e)]))
    table.add_column("demonstrations")
    table.add_column("accuracy", justify="right")
    families = sorted(result.per_family)
    for family in families:
        table.add_column(family.replace("_", " "), justify="right")
    for k, acc in result.shots.items():
        table.add_row(str(k), f"{acc:.1f}", *(f"{result.per_family[f][k]:.1f}" for f in families))
    table.add_row("random guess", f"{result.random_baseline:.1f}")
    return table
