"""`tunelens decide`: prompt with examples or tune, for one task, and is the tuning gain real?

Registered by the command line through the experiment's ``cli_module``.

The options are generated from :class:`DecideConfig` (help, defaults and bounds
written once, in the model) and from the spec's placement settings; the task,
the model, the costs file and where it runs are the command's own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from tunelens.experiments.decide.config import DecideConfig
from tunelens.options.apps import app, examples
from tunelens.options.common import (
    STUDY,
    AddressOption,
    ExecutorOption,
    NoProgressOption,
    say_limited,
)
from tunelens.options.config_options import ConfigOptions, with_config_options
from tunelens.options.tuning_options import TUNING
from tunelens.spec import Spec

NAME = "decide"

# The tuning options' names, the same in every command (older names such as --lr stay as
# hidden aliases: tunelens.options.tuning_options.HIDDEN_ALIASES).
TUNING_NAMES: dict[str, tuple[str, ...]] = {}

DECIDE = ConfigOptions(
    DecideConfig,
    key="config",
    panel="Decide",
    nested={"tuning": dataclasses.replace(TUNING, names={**TUNING.names, **TUNING_NAMES})},
)
PLACEMENT = STUDY.subset("device_map", "max_memory", "save_adapters", given_only=False)
"""Where the model loads and whether adapters are kept: the spec's fields, read as a Spec."""


@app.command(
    NAME,
    epilog=examples(
        ("tunelens decide --task data/my_task.jsonl --model world", "on the embedded model"),
        (
            "tunelens decide --task data/t.jsonl --model ./llama --device cuda --dtype bfloat16",
            "your own Hugging Face model on a GPU",
        ),
        (
            "tunelens decide --task data/my_task.jsonl --model world --costs costs.csv",
            "with error costs",
        ),
    ),
)
@with_config_options(DECIDE, PLACEMENT)
def decide(
    task: Annotated[
        Path,
        typer.Option(
            "--task", help="The task: a tunelens JSONL file (or SuperNI JSON) with a label space."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", help="'world' (the embedded model) or a local Hugging Face model directory."
        ),
    ],
    costs: Annotated[
        Path | None,
        typer.Option(
            "--costs",
            help="Cost of each (true, predicted) pair: CSV with columns "
            "true,predicted,cost or YAML true -> predicted -> cost.",
            show_default="no costs",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder; default ./decide-<task>. Re-run to resume."),
    ] = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    no_progress: NoProgressOption = False,
    *,
    config: DecideConfig,
    study: Spec,
) -> None:
    """Measure zero-shot, ICL at each k, tuning at each n, the format-only controls and the
    label-space guess on one test set of TASK; write DIR/decide.json and DIR/decide.html.

    The verdict says which method wins at which data size (with 95% intervals), what share
    of the tuning gain the format-only controls reach, where the intervals are too wide to
    decide, and the error cost and compute per 1,000 items of each method.
    """
    from tunelens.experiments.decide.runner import run_decide
    from tunelens.runs.ranks import is_main_process

    outcome = run_decide(
        task,
        model,
        config,
        out,
        costs_path=costs,
        progress=not no_progress,
        executor=executor,
        address=address,
        save_adapters=study.save_adapters,
        placement=study.placement(),
    )
    if not is_main_process():
        return  # another rank of accelerate launch / torchrun: rank 0 writes and reports
    for line in outcome.results["verdict"]["summary"]:
        typer.echo(line)
    typer.echo(f"results: {outcome.json_path}")
    typer.echo(f"report:  {outcome.html_path}")
    say_limited(config.limit)
