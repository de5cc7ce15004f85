"""`tunelens world ...`: export the instruction world and train its model.

(``world eval`` is the world_eval experiment's own command,
:mod:`tunelens.experiments.world_eval.cli`.) ``world train-model``'s options
stay hand-written: the trainer's
recipe (:class:`tunelens.models.world_model.WorldModelRecipe`) is a dataclass
without descriptions, and its defaults depend on the size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunelens.bounds import MAX_COUNT, check_range
from tunelens.errors import TunelensInputError
from tunelens.options.apps import examples, world_app

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

    from tunelens.models.world_model import WorldModelRecipe


@world_app.command(
    "export",
    epilog=examples(
        ("tunelens world export data/world", "the shipped world's tasks"),
        ("tunelens world export data/world7 --seed 7 --n-train 30", "another, smaller world"),
    ),
)
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


@world_app.command(
    "path",
    epilog=examples(
        ("tunelens world path", "the directory of the 'world' model"),
        ("tunelens world path world-it", "the instruction-tuned member"),
    ),
)
def path(
    name: Annotated[str, typer.Argument(help="'world', 'world-small' or 'world-it'.")] = "world",
) -> None:
    """Print the directory of a shipped world model."""
    from tunelens.models.paths import world_model_dir

    typer.echo(str(world_model_dir(name)))


# ``world train-model``'s options: the recipe fields it overrides. The recipe
# (tunelens.models.world_model.WorldModelRecipe) is a dataclass without field
# descriptions whose values depend on the size (SIZES), so these are typed here,
# once, and the help says "the size's" where another command shows a default.
SizeOption = Annotated[
    str,
    typer.Option(
        help="'base' trains `world` (6 layers, 128-token sequences); 'small' trains "
        "`world-small` (the first 3-layer recipe); 'world-base' trains `world-base` "
        "(`world` without definitions or zero-shot answers in its corpus)."
    ),
]
InstructionTuneOption = Annotated[
    bool,
    typer.Option(
        help="Then tune the trained model on the world's training tasks (definitions and "
        "positive examples, all instances) into `world-it` (size base only)."
    ),
]
UntilOption = Annotated[
    int | None,
    typer.Option(
        help="Stop after this step with a checkpoint; re-run to go on (pieces). "
        "Default: run to the end."
    ),
]
CurriculumOption = Annotated[
    int | None,
    typer.Option(
        help="Steps of one-word tasks only, before every rule family (default: the size's)."
    ),
]
CategoryInitOption = Annotated[
    float | None,
    typer.Option(
        help="Shared per-category embedding direction at init (0 = off; default: the size's)."
    ),
]
BurstyOption = Annotated[
    float | None,
    typer.Option(
        help="Share of sequences whose inputs recur, 3 words per category (default: the size's)."
    ),
]


@world_app.command(
    "train-model",
    epilog=examples(
        ("tunelens world train-model --size small", "the small member from its seed"),
        ("tunelens world train-model --until 500", "a first piece; re-run to go on"),
    ),
)
def train_model(
    workdir: Annotated[Path, typer.Option(help="Checkpoints and log; re-run to resume.")] = Path(
        "world_train"
    ),
    size: SizeOption = "base",
    instruction_tune: InstructionTuneOption = False,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: the size's).")
    ] = None,
    until: UntilOption = None,
    curriculum_steps: CurriculumOption = None,
    category_init: CategoryInitOption = None,
    bursty: BurstyOption = None,
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
    from tunelens.models.world_model import train_world_model

    overrides = {
        "steps": steps,
        "curriculum_steps": curriculum_steps,
        "category_init": category_init,
        "bursty": bursty,
        "all_tokens_loss": all_tokens_loss,
    }
    recipe = training_recipe(size, seed, threads, overrides, instruction_tune, until)
    model = train_world_model(recipe, workdir, until=until)
    if until is not None and until < recipe.steps:
        typer.echo(f"stopped at step {until} of {recipe.steps}; re-run to resume")
        return
    target = export_trained(model, recipe, size, workdir, install)
    if instruction_tune:
        tune_instructions(target, workdir, install, recipe.seed, seed)


def training_recipe(
    size: str,
    seed: int,
    threads: int,
    overrides: Mapping[str, object],
    instruction_tune: bool,
    until: int | None,
) -> WorldModelRecipe:
    """The size's recipe with the options given, every option checked before training."""
    from tunelens.models.world_model import recipe_for_size

    given = {k: v for k, v in overrides.items() if v is not None}
    recipe = recipe_for_size(size, seed=seed, threads=threads, **given)
    if instruction_tune and size != "base":
        raise TunelensInputError("only the base model is instruction-tuned", where="--size")
    if until is not None:
        check_range("--until", until, 1, MAX_COUNT)
    return recipe


def export_trained(
    model: LlamaForCausalLM, recipe: WorldModelRecipe, size: str, workdir: Path, install: bool
) -> Path:
    """Export the trained model (into the package's assets with ``install``) with its
    reference evaluation; its directory."""
    from tunelens.models.paths import world_model_dir
    from tunelens.models.world_model import SIZE_MEMBERS, export_world_model

    name = SIZE_MEMBERS[size]
    target = world_model_dir(name, install=True) if install else workdir / "export"
    export_world_model(model, recipe, workdir, target)
    record_reference_eval(target, recipe.seed)
    typer.echo(f"{name} written to {target}")
    return target


def tune_instructions(base: Path, workdir: Path, install: bool, world_seed: int, seed: int) -> None:
    """Instruction-tune the exported base model into ``world-it``, with its reference eval."""
    from tunelens.models.paths import world_model_dir
    from tunelens.models.world_it import instruction_tune_world_model

    target = world_model_dir("world-it", install=True) if install else workdir / "export-it"
    instruction_tune_world_model(
        base, workdir / "it", target, seed=seed, heldout_accuracy=definition_only_accuracy
    )
    record_reference_eval(target, world_seed)
    typer.echo(f"world-it written to {target}")


def definition_only_accuracy(loaded: Any, tasks: list[Any]) -> float:
    """world_eval's definition-only accuracy, 10 queries a task: the last line of world-it's
    training log."""
    from tunelens.experiments.world_eval import evaluate_icl

    return evaluate_icl(loaded, tasks, (0,), queries_per_task=10, definition=True).shots[0]


def record_reference_eval(directory: Path, seed: int) -> None:
    """Write reference_eval.json beside an exported model (a test reproduces it)."""
    from tunelens.experiments.world_eval import reference_eval
    from tunelens.models.loading import load_model
    from tunelens.tasks.world.generator import generate_world

    recorded = reference_eval(load_model(str(directory)), generate_world(seed).heldout)
    (directory / "reference_eval.json").write_text(json.dumps(recorded, indent=2) + "\n")
