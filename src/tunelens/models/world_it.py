"""`world-it`: the base world model after multi-task instruction tuning on the training tasks.

The tuning data are every instance of every training task of the world (never
a held-out one), each in three encodings: the plain template with the
definition only, the plain template with the definition and the task's
positive examples as demonstrations, and the Tk-Instruct template with the
definition and two positive examples (the audit's encoding). Zero-shot prompts
teach reading the definition; the others keep in-context learning in use. All
weights are tuned (full fine-tuning through ``multitask_tune``), so the result
is an ordinary model directory that loads with ``from_pretrained``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tunelens.log import get_logger
from tunelens.models.loading import LoadedModel, load_model
from tunelens.models.tuning.config import TuningConfig
from tunelens.models.tuning.multitask import multitask_tune
from tunelens.prompts import PromptStyle, render_prompt, render_target
from tunelens.tasks.types import Example, Task
from tunelens.tasks.world.generator import generate_world

_log = get_logger(__name__)

__all__ = ["HeldoutAccuracy", "WorldItRecipe", "instruction_pairs", "instruction_tune_world_model"]

HeldoutAccuracy = Callable[[LoadedModel, list[Task]], float]
"""A tuned model's definition-only (k = 0) accuracy, 0-100, on held-out tasks: the
evaluation protocol is the caller's (``tunelens.experiments.world_eval``), not this layer's."""

ENCODINGS: tuple[tuple[str, PromptStyle, bool], ...] = (
    ("plain definition only", PromptStyle(template="plain", definition=True), False),
    ("plain definition + examples", PromptStyle(template="plain", definition=True), True),
    ("tk definition + 2 examples", PromptStyle(template="tk", definition=True, n_positive=2), True),
)


@dataclass
class WorldItRecipe:
    """Everything that decides `world-it` given the base model; saved as its recipe.json."""

    seed: int = 0
    learning_rate: float = 5e-4
    epochs: int = 2
    batch_size: int = 32
    max_steps: int | None = None  # a bound for tests; the shipped recipe runs every epoch
    threads: int = 1


def instruction_pairs(tasks: list[Task]) -> tuple[list[tuple[str, str]], list[str]]:
    """(prompt, target) for every instance of every task in each encoding, and pair names."""
    pairs: list[tuple[str, str]] = []
    names: list[str] = []
    for task in tasks:
        for encoding, style, with_examples in ENCODINGS:
            demos: list[Example] | None = None if with_examples else []
            if with_examples and style.template == "plain":
                demos = list(task.positive_examples)
            for instance in task.instances:
                pairs.append(
                    (
                        render_prompt(task, instance.input, demos, style),
                        render_target(instance.outputs[0]),
                    )
                )
                names.append(f"{task.name}/{instance.id} ({encoding})")
    return pairs, names


def instruction_tune_world_model(
    base_dir: Path,
    workdir: Path,
    target: Path,
    *,
    seed: int = 0,
    heldout_accuracy: HeldoutAccuracy,
    recipe: WorldItRecipe | None = None,
    progress: bool = True,
) -> None:
    """Tune the model in ``base_dir`` into ``target`` (model, tokenizer, recipe, training log).

    ``workdir`` keeps the training log; the tuning is minutes long, so an
    interrupted run starts over rather than resuming. ``heldout_accuracy`` scores
    the tuned model on the held-out tasks for the log's last line (the command passes
    world_eval's definition-only accuracy: an evaluation protocol is not this layer's).
    """
    recipe = recipe or WorldItRecipe(seed=seed)
    torch.set_num_threads(recipe.threads)
    workdir.mkdir(parents=True, exist_ok=True)
    world = generate_world(recipe.seed)
    pairs, names = instruction_pairs(world.train)
    loaded = load_model(str(base_dir))
    config = TuningConfig(
        method="full",
        learning_rate=recipe.learning_rate,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr_schedule="linear",
        max_steps=recipe.max_steps,
    ).with_seed(recipe.seed)
    started = time.time()
    tuned = multitask_tune(loaded, pairs, config, progress=progress, names=names)
    log_path = workdir / "training_log.jsonl"
    with log_path.open("w") as log:
        for step in range(0, tuned.steps, 25):
            window = tuned.losses[step : step + 25]
            record = {"step": step + len(window), "loss": round(sum(window) / len(window), 4)}
            log.write(json.dumps(record) + "\n")
        model = tuned.as_loaded()
        definition_only = heldout_accuracy(model, world.heldout)
        final = {
            "pairs": len(pairs),
            "steps": tuned.steps,
            "seconds": round(time.time() - started, 1),
            "heldout_definition_only_accuracy": round(definition_only, 1),
        }
        log.write(json.dumps(final) + "\n")
    _log.info("world-it: %s", json.dumps(final))
    target.mkdir(parents=True, exist_ok=True)
    tuned.model.save_pretrained(target, safe_serialization=True)
    loaded.tokenizer.save_pretrained(target)
    base_recipe = json.loads((base_dir / "recipe.json").read_text())
    (target / "recipe.json").write_text(
        json.dumps({"base": base_recipe, "instruction_tuning": asdict(recipe)}, indent=2) + "\n"
    )
    (target / "training_log.jsonl").write_text(log_path.read_text())
