"""`tunelens world ...`: export the instruction world, train and evaluate its model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunelens.bounds import MAX_COUNT
from tunelens.commands.apps import world_app
from tunelens.errors import TunelensInputError


def check_range(option: str, value: int, low: int, high: int | None = None) -> None:
    """An integer option within its bounds, or one error line naming the option."""
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise TunelensInputError(f"must be {bound}, got {value}", where=option)


def parse_shots(text: str) -> tuple[int, ...]:
    """'0,1,2,4' -> (0, 1, 2, 4), with a clear error for anything else."""
    try:
        shots = tuple(int(x) for x in text.split(",") if x.strip())
        if any(k > 10_000 for k in shots):
            raise ValueError
    except ValueError:
        raise TunelensInputError(
            f"--shots must be comma-separated integers, got {text!r}"
        ) from None
    if not shots or min(shots) < 0:
        raise TunelensInputError(f"--shots must list non-negative integers, got {text!r}")
    return shots


@world_app.command("export")
def export(
    directory: Annotated[Path, typer.Argument(help="Where to write tasks/ and splits/default/.")],
    seed: Annotated[int, typer.Option(help="World seed (0 is the shipped world).")] = 0,
    n_train: Annotated[int, typer.Option(help="Number of training tasks.")] = 60,
    instances: Annotated[
        int,
        typer.Option(
            help="Instances per task (at most; one-word tasks have fewer distinct inputs)."
        ),
    ] = 60,
) -> None:
    """Write the world's tasks in the Super-NaturalInstructions layout."""
    from tunelens.runs.study import prepare_output_dir
    from tunelens.tasks.world.export import export_world
    from tunelens.tasks.world.generator import definition_blind_upper_bound, generate_world

    check_range("--seed", seed, 0, 2**32 - 1)
    check_range("--n-train", n_train, 1, 10_000)
    check_range("--instances", instances, 2, 100_000)
    world = generate_world(seed, n_train=n_train, n_instances=instances)
    prepare_output_dir(directory)
    written = export_world(world, directory)
    bound = definition_blind_upper_bound(world.heldout)
    typer.echo(
        f"wrote {len(written)} tasks ({len(world.train)} train, {len(world.heldout)} "
        f"held-out) to {directory}; definition-blind upper bound on held-out: {bound:.1f}"
    )


@world_app.command("path")
def path(
    name: Annotated[str, typer.Argument(help="'world', 'world-small' or 'world-it'.")] = "world",
) -> None:
    """Print the directory of a shipped world model."""
    from tunelens.models.paths import world_model_dir

    typer.echo(str(world_model_dir(name)))


@world_app.command("train-model")
def train_model(
    workdir: Annotated[Path, typer.Option(help="Checkpoints and log; re-run to resume.")] = Path(
        "world_train"
    ),
    size: Annotated[
        str,
        typer.Option(
            help="'base' trains `world` (6 layers, 128-token sequences); 'small' trains "
            "`world-small` (the first 3-layer recipe); 'world-base' trains `world-base` "
            "(`world` without definitions or zero-shot answers in its corpus)."
        ),
    ] = "base",
    instruction_tune: Annotated[
        bool,
        typer.Option(
            help="Then tune the trained model on the world's training tasks (definitions and "
            "positive examples, all instances) into `world-it` (size base only)."
        ),
    ] = False,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: the size's).")
    ] = None,
    until: Annotated[
        int | None,
        typer.Option(
            help="Stop after this step with a checkpoint; re-run to go on (pieces). "
            "Default: run to the end."
        ),
    ] = None,
    curriculum_steps: Annotated[
        int | None,
        typer.Option(
            help="Steps of one-word tasks only, before every rule family (default: the size's)."
        ),
    ] = None,
    category_init: Annotated[
        float | None,
        typer.Option(
            help="Shared per-category embedding direction at init (0 = off; default: the size's)."
        ),
    ] = None,
    bursty: Annotated[
        float | None,
        typer.Option(
            help="Share of sequences whose inputs recur, 3 words per category (default: the "
            "size's)."
        ),
    ] = None,
    all_tokens_loss: Annotated[
        bool | None,
        typer.Option(help="Loss on every token, not only on outputs (default: the size's)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of world, data order and init.")] = 0,
    threads: Annotated[
        int, typer.Option(help="CPU threads for torch (1 is fastest on a busy machine).")
    ] = 1,
    install: Annotated[
        bool, typer.Option(help="Copy the result into the package's assets.")
    ] = False,
) -> None:
    """Train a world model from its seed (resumable, in pieces with --until), then export it.

    The recipe of each size is ``tunelens.models.world_model.SIZES``; the options
    given override it (and a checkpoint made with another recipe is refused).
    """
    from tunelens.models.paths import world_model_dir
    from tunelens.models.world_model import (
        SIZE_MEMBERS,
        export_world_model,
        recipe_for_size,
        train_world_model,
    )

    overrides = {
        "steps": steps,
        "curriculum_steps": curriculum_steps,
        "category_init": category_init,
        "bursty": bursty,
        "all_tokens_loss": all_tokens_loss,
    }
    recipe = recipe_for_size(
        size,
        seed=seed,
        threads=threads,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    if instruction_tune and size != "base":
        raise TunelensInputError("only the base model is instruction-tuned", where="--size")
    if until is not None:
        check_range("--until", until, 1, MAX_COUNT)
    model = train_world_model(recipe, workdir, until=until)
    if until is not None and until < recipe.steps:
        typer.echo(f"stopped at step {until} of {recipe.steps}; re-run to resume")
        return
    name = SIZE_MEMBERS[size]
    target = world_model_dir(name, install=True) if install else workdir / "export"
    export_world_model(model, recipe, workdir, target)
    record_reference_eval(target, recipe.seed)
    typer.echo(f"{name} written to {target}")
    if instruction_tune:
        from tunelens.models.world_it import instruction_tune_world_model

        it_target = world_model_dir("world-it", install=True) if install else workdir / "export-it"
        instruction_tune_world_model(target, workdir / "it", it_target, seed=seed)
        record_reference_eval(it_target, recipe.seed)
        typer.echo(f"world-it written to {it_target}")


def record_reference_eval(directory: Path, seed: int) -> None:
    """Write reference_eval.json beside an exported model (a test reproduces it)."""
    from tunelens.experiments.world_eval import reference_eval
    from tunelens.models.loading import load_model
    from tunelens.tasks.world.generator import generate_world

    recorded = reference_eval(load_model(str(directory)), generate_world(seed).heldout)
    (directory / "reference_eval.json").write_text(json.dumps(recorded, indent=2) + "\n")


@world_app.command("eval")
def evaluate(
    model: Annotated[
        str,
        typer.Option(help="'world', 'world-small', 'world-it' or a local HF model directory."),
    ] = "world",
    shots: Annotated[str, typer.Option(help="Comma-separated numbers of demonstrations.")] = (
        "0,1,2,4,8,16"
    ),
    queries: Annotated[int, typer.Option(help="Queries per task and k.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the demonstration draws.")] = 0,
    labels: Annotated[
        str,
        typer.Option(
            help="'novel' swaps each task's label words for words never used as labels in "
            "training (the JSON says so)."
        ),
    ] = "original",
    definition: Annotated[
        bool,
        typer.Option(
            "--definition",
            help="Put the task definition before the demonstrations (with --shots 0: "
            "definition only).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Keep the cells in this run directory (re-run to resume); default: a "
            "temporary one."
        ),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Few-shot accuracy on the held-out world tasks, with the label-space random baseline.

    One cell per k of the ``world_eval`` experiment, on the same machinery as ``tunelens run``.
    """
    import tempfile

    from tunelens.api import get_experiments
    from tunelens.experiments.world_eval import WorldEvalResult, WorldEvalSpec
    from tunelens.runs.study import execute

    check_range("--queries", queries, 1, 100_000)
    check_range("--seed", seed, 0, 2**32 - 1)
    from tunelens.tasks.world.relabel import LABEL_MODES

    if labels not in LABEL_MODES:
        raise TunelensInputError(
            f"must be one of {', '.join(LABEL_MODES)}, got {labels!r}", where="--labels"
        )
    section = WorldEvalSpec(
        model=model,
        shots=list(dict.fromkeys(parse_shots(shots))),
        queries_per_task=queries,
        seed=seed,
        labels=labels,
        definition=definition,
    )
    experiment = get_experiments()["world_eval"]
    with tempfile.TemporaryDirectory(prefix="tunelens-world-eval-") as scratch:
        (run,) = execute(
            out or Path(scratch),
            [(experiment, section)],
            progress=not no_progress and not as_json,
            source="tunelens world eval",
        )
        data = run.aggregate()["world_eval"]
    result = WorldEvalResult.from_json(data)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    extras = [
        "novel label words" if result.labels == "novel" else "",
        "definition first" if result.definition else "",
    ]
    title = f"{model}: held-out world tasks: {result.tasks}, {queries} queries each"
    table = Table(title=", ".join([title, *(e for e in extras if e)]))
    table.add_column("demonstrations")
    table.add_column("accuracy", justify="right")
    families = sorted(result.per_family)
    for family in families:
        table.add_column(family.replace("_", " "), justify="right")
    for k, acc in result.shots.items():
        table.add_row(str(k), f"{acc:.1f}", *(f"{result.per_family[f][k]:.1f}" for f in families))
    table.add_row("random guess", f"{result.random_baseline:.1f}")
    Console().print(table)
