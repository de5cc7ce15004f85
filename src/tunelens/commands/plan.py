"""`tunelens plan`: estimate a study's cells, tokens, FLOPs, memory and time before running it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunelens.commands.run import with_run_options
from tunelens.options.apps import app, examples
from tunelens.options.common import STUDY, JsonOption
from tunelens.options.config_options import with_config_options

if TYPE_CHECKING:
    from rich.console import Console

    from tunelens.runs.plan import Plan

PLAN_OPTIONS = STUDY.subset("limit", "allow_missing_tasks")
"""The spec settings that change what a plan counts (as `tunelens run` takes them)."""


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M', 9.89e14 FLOP/s -> '989 TFLOP/s' (SI prefixes)."""
    sep = " " if unit else ""
    for factor, prefix in (
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{sep}{prefix}{unit}"
    return f"{value:.3g}{sep}{unit}"


def size_text(value: float) -> str:
    """Bytes in binary units: '13.5 GiB', '2.1 MiB'."""
    for factor, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value:.0f} B"


def duration(seconds: float) -> str:
    if seconds < 0.1:
        return "< 0.1 s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@app.command(
    "plan",
    epilog=examples(
        ("tunelens plan", "the default study on this CPU"),
        (
            "tunelens plan examples/specs/duan2023_llama2_7b_convergence.yaml --gpu h100",
            "a 7B study on one H100: memory and hours before you book it",
        ),
        ("tunelens plan my_spec.yaml --limit 5 --json", "a quick look's plan, as JSON"),
    ),
)
@with_config_options(PLAN_OPTIONS)
def plan(
    spec: Annotated[
        Path | None,
        typer.Argument(help="YAML spec; omitted: the embedded default.", show_default=False),
    ] = None,
    gpu: Annotated[
        str,
        typer.Option(
            help="Accelerator whose peak FLOP/s sets the time: h100, a100 or cpu (measured here)."
        ),
    ] = "h100",
    mfu: Annotated[
        float | None,
        typer.Option(
            help="Model FLOPs utilisation assumed, in (0, 1]; default 0.4 on a GPU and, on "
            "cpu, the efficiency calibrated for the model's width.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
    *,
    study: dict[str, Any],
) -> None:
    """Check a spec's tasks, then estimate cells, forward/training tokens, FLOPs, peak memory
    and wall time.

    The tasks on this machine load and are checked first (pool sizes against k, relevance
    'other' against the number of tasks, the longest prompt against a local model's
    context): a failure is exit status 2 and one line naming the spec key."""
    from rich.console import Console

    from tunelens.runs.plan import plan_study
    from tunelens.spec import default_spec, load_spec

    loaded = default_spec() if spec is None else load_spec(spec)
    loaded = with_run_options(loaded, **study)
    source = "the default spec" if spec is None else str(spec)
    result = plan_study(loaded, gpu=gpu, mfu=mfu, source=source)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return
    console = Console(highlight=False)
    efficiency = "calibrated per model width" if result.mfu is None else f"{result.mfu:g}"
    console.print(
        f"plan for {spec or 'the embedded default'} on {gpu} "
        f"(peak {human(result.peak_flops, 'FLOP/s')}, MFU {efficiency})",
        markup=False,
    )
    for name, size in result.model_sizes.items():
        console.print(
            f"model {name}: {human(size['non_embedding'])} non-embedding parameters "
            f"({human(size['total'])} in all; {size['source']})",
            markup=False,
        )
    print_table(console, result)
    print_time(console, result, gpu)


def print_table(console: Console, result: Plan) -> None:
    """One row per experiment, the fixed costs, then the total."""
    from rich.table import Table

    table = Table()
    table.add_column("experiment", no_wrap=True)
    for header in ("cells", "forward tokens", "training tokens", "FLOPs", "peak memory", "time"):
        table.add_column(header, justify="right")
    for e in result.experiments:
        table.add_row(
            e.experiment,
            str(e.cells),
            human(e.forward_tokens),
            human(e.backward_tokens),
            human(e.flops),
            size_text(e.peak_memory_bytes),
            duration(e.seconds),
        )
    table.add_row(
        "start-up, loads, report",
        "",
        "",
        "",
        "",
        "",
        duration(result.fixed.total),
        end_section=True,
    )
    table.add_row(
        "total",
        str(result.cells),
        human(result.forward_tokens),
        human(result.backward_tokens),
        human(result.flops),
        size_text(result.peak_memory_bytes),
        duration(result.seconds),
    )
    console.print(table)


def print_time(console: Console, result: Plan, gpu: str) -> None:
    """Where the time goes, a warning when the peak memory exceeds one device, and what the
    numbers are (estimates, and from what)."""
    time = result.time
    parts = sorted(time.parts.items(), key=lambda item: -item[1])
    console.print(
        f"time {duration(time.total)}: FLOPs {duration(time.compute)}, fixed and per-call "
        f"costs {duration(time.overhead + time.fixed)}, weight streaming "
        f"{duration(time.weights)}; largest parts: "
        + ", ".join(f"{name} {duration(seconds)}" for name, seconds in parts[:4] if seconds),
        markup=False,
    )
    if result.workers > 1:
        console.print(
            f"with {result.workers} worker processes (tunelens run's automatic count on this "
            f"machine): about {duration(result.seconds_with_workers)} if the cells balance",
            markup=False,
        )
    if result.device_memory_bytes and result.peak_memory_bytes > result.device_memory_bytes:
        console.print(
            f"peak memory exceeds one {gpu} ({size_text(result.device_memory_bytes)}): "
            "shard the model (docs/how_to/accelerate.md)",
            markup=False,
        )
    console.print(
        "Estimates, not measurements: each cell's calls and tokens counted from its own "
        "prompts where the tasks are here (from spec fields otherwise), FLOPs 2N per forward, "
        "4N per LoRA and 6N per fully trained token, plus fixed and per-call costs "
        "calibrated on a 2-core CPU (see `tunelens.runs.costs`).",
        markup=False,
    )
