"""`tunelens decide`: prompt with examples or tune, for one task, and is the tuning gain real?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelens.commands.apps import app
from tunelens.commands.studies import (
    AddressOption,
    DeviceMapOption,
    ExecutorOption,
    LimitOption,
    MaxMemoryOption,
    SaveAdaptersOption,
    placement,
    say_limited,
)
from tunelens.commands.tuning_options import with_tuning_options
from tunelens.experiments.decide.config import DecideConfig
from tunelens.models.tuning.config import TuningConfig

_FIELDS = DecideConfig.model_fields
# The tuning options' names, the same in every command (older names such as --lr stay as
# hidden aliases: tunelens.commands.tuning_options.HIDDEN_ALIASES).
TUNING_NAMES: dict[str, tuple[str, ...]] = {}


def _help(name: str) -> str:
    return _FIELDS[name].description or ""


@app.command("decide")
@with_tuning_options(_FIELDS["tuning"].default)
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
    k: Annotated[str, typer.Option("--k", help=_help("k") + " Comma-separated.")] = "1,2,4,8,16",
    tune_sizes: Annotated[
        str, typer.Option("--tune-sizes", help=_help("tune_sizes") + " Comma-separated.")
    ] = "8,32,128,all",
    seed: Annotated[int, typer.Option(help=_help("seed"))] = 0,
    test_size: Annotated[float, typer.Option("--test-size", help=_help("test_size"))] = 0.3,
    demo_size: Annotated[int | None, typer.Option("--demo-size", help=_help("demo_size"))] = None,
    template: Annotated[str, typer.Option(help=_help("template"))] = "plain",
    definition: Annotated[
        bool, typer.Option("--definition/--no-definition", help=_help("definition"))
    ] = True,
    predict: Annotated[str, typer.Option(help=_help("predict"))] = "generate",
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help=_help("max_new_tokens"))
    ] = None,
    controls: Annotated[
        bool, typer.Option("--controls/--no-controls", help=_help("controls"))
    ] = True,
    similarity_k: Annotated[
        int | None, typer.Option("--similarity-k", help=_help("similarity_k"))
    ] = None,
    similarity_items: Annotated[
        int, typer.Option("--similarity-items", help=_help("similarity_items"))
    ] = 64,
    bootstrap: Annotated[int, typer.Option(help=_help("bootstrap"))] = 2000,
    dtype: Annotated[str, typer.Option(help=_help("dtype"))] = "float32",
    device: Annotated[str, typer.Option(help=_help("device"))] = "cpu",
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    limit: LimitOption = None,
    save_adapters: SaveAdaptersOption = False,
    tuning: TuningConfig | None = None,
) -> None:
    """Measure zero-shot, ICL at each k, tuning at each n, the format-only controls and the
    label-space guess on one test set of TASK; write DIR/decide.json and DIR/decide.html.

    The verdict says which method wins at which data size (with 95% intervals), what share
    of the tuning gain the format-only controls reach, where the intervals are too wide to
    decide, and the error cost and compute per 1,000 items of each method.
    """
    from tunelens.experiments.decide.config import make_config, parse_int_list
    from tunelens.experiments.decide.runner import run_decide

    config = make_config(
        k=parse_int_list(k, "--k"),
        tune_sizes=parse_int_list(tune_sizes, "--tune-sizes", allow_all=True),
        seed=seed,
        test_size=test_size,
        demo_size=demo_size,
        template=template,
        definition=definition,
        predict=predict,
        max_new_tokens=max_new_tokens,
        controls=controls,
        similarity_k=similarity_k,
        similarity_items=similarity_items,
        bootstrap=bootstrap,
        dtype=dtype,
        device=device,
        tuning=tuning,
        limit=limit,
    )
    outcome = run_decide(
        task,
        model,
        config,
        out,
        costs_path=costs,
        progress=not no_progress,
        executor=executor,
        address=address,
        save_adapters=save_adapters,
        placement=placement(device_map, max_memory),
    )
    from tunelens.runs.ranks import is_main_process

    if not is_main_process():
        return  # another rank of accelerate launch / torchrun: rank 0 writes and reports
    for line in outcome.results["verdict"]["summary"]:
        typer.echo(line)
    typer.echo(f"results: {outcome.json_path}")
    typer.echo(f"report:  {outcome.html_path}")
    say_limited(limit)
