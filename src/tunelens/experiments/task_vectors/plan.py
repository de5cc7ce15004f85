"""The task-vector experiment as ``tunelens plan``, ``--limit`` and the preflight see it.

A cell's work is counted as :func:`~tunelens.experiments.task_vectors.compute.run_task_vector_cell`
runs it, from the cell's own prompts where its task is on this machine (else
sized from :func:`tunelens.runs.plan.task_shape`): zero-shot and ICL label
scoring of every set's query, the last-token forwards of the dummy-query
prompts (the ICL vectors), one patched zero-shot scoring per layer and source,
and with IT vectors the lockstep tuning of every set with the reads under the
batched LoRA stack.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from tunelens.api import Cell, StudyInputs
from tunelens.errors import TunelensInputError
from tunelens.experiments.task_vectors.compute import PROBE_ROWS
from tunelens.experiments.task_vectors.sets import draw_sets, draw_settings, unusable_reason
from tunelens.experiments.task_vectors.spec import TaskVectorsSpec
from tunelens.prompts import PromptStyle, Template, render_prompt, render_target
from tunelens.runs.costs import TokenCounter, Work, forward_work, training_attention, tuning_steps
from tunelens.runs.plan import PlanContext, PlanPrompts, task_shape

__all__ = [
    "estimate_work",
    "is_encoder_decoder",
    "limit_section",
    "plan_conditions",
    "plan_prompts",
    "preflight",
    "training_shape",
]

KEY = "task_vectors"


def limit_section(section: TaskVectorsSpec, n: int) -> TaskVectorsSpec:
    """``--limit n``: at most n dev and n test sets per task and seed."""
    return section.model_copy(
        update={"dev_sets": min(section.dev_sets, n), "test_sets": min(section.test_sets, n)}
    )


def is_encoder_decoder(model: str) -> bool:
    """Whether the model directory's config.json says encoder-decoder (False where absent)."""
    from tunelens.io import read_json
    from tunelens.models.paths import is_world_model, resolve_model_path

    if is_world_model(model):
        return False
    try:
        path = resolve_model_path(model) / "config.json"
    except TunelensInputError:
        return False
    if not path.is_file():
        return False
    return bool(read_json(path, what="model config").get("is_encoder_decoder"))


def preflight(section: TaskVectorsSpec, inputs: StudyInputs, source: str | None) -> None:
    """Before any model loads: an encoder-decoder (``task_vectors.models``), and tasks none of
    which can be drawn from (``task_vectors.tasks``) fail with one line."""
    for model in section.models:
        if is_encoder_decoder(model):
            raise TunelensInputError(
                f"task vectors are for causal language models; {model} is an encoder-decoder",
                source=source,
                where=f"{KEY}.models",
            )
    tasks = inputs.tasks(section.tasks)
    if not tasks:
        return  # not on this machine (tunelens plan): nothing to check yet
    reasons = [unusable_reason(task, **draw_settings(section)) for task in tasks]
    if all(reasons):
        raise TunelensInputError(
            f"no task of {section.tasks} can be used: {tasks[0].name}: {reasons[0]}"
            + (f" (and {len(tasks) - 1} more)" if len(tasks) > 1 else ""),
            source=source,
            where=f"{KEY}.tasks",
        )


def _style(template: Template, definition: bool) -> PromptStyle:
    """The prompt style the plan renders with (a chat template counted as plain text)."""
    return PromptStyle(
        template="plain" if template == "chat" else template, definition=definition, n_positive=0
    )


def plan_prompts(section: TaskVectorsSpec, inputs: StudyInputs) -> PlanPrompts:
    """The ICL prompts of the first seed (the longest the cells make), checked against every
    model of the section (key ``task_vectors.k``)."""
    prompts = []
    style = _style(section.template, section.definition)
    for task in inputs.tasks(section.tasks):
        if unusable_reason(task, **draw_settings(section)):
            continue
        for s in draw_sets(task, **draw_settings(section), seed=section.seeds[0]):
            prompts.append(render_prompt(task, s.query.input, list(s.demos), style))
    return PlanPrompts(prompts, models=list(section.models), key=f"{KEY}.k")


def training_shape(cell: Cell) -> tuple[int, int] | None:
    """(batch, tokens per row) of the per-set tuning, None without IT vectors."""
    p = cell.params
    if not p.get("it_vectors"):
        return None
    shape = task_shape(str(p.get("tasks", "")))
    batch = min(int((p.get("tuning") or {}).get("batch_size", 8)), int(p.get("k", 5)))
    return batch, shape.definition_tokens + shape.example_tokens


def plan_conditions(cells: Sequence[Cell]) -> int:
    """Conditions the report shows: (model, control)."""
    return len({re.sub(r" task=.*$", "", cell.name) for cell in cells})


def _lengths(cell: Cell, counter: TokenCounter) -> dict[str, list[int]]:
    """Token lengths of the cell's prompts, rendered from its own draw where its task is here."""
    p = cell.params
    task = (cell.data or {}).get("task")
    d, k = int(p["dummy_queries"]), int(p["k"])
    n = int(p["dev_sets"]) + int(p["test_sets"])
    if task is None:
        shape = task_shape(str(p.get("tasks", "")))
        e, defn = shape.example_tokens, (shape.definition_tokens if p.get("definition") else 0)
        return {
            "zero_shot": [defn + e] * n,
            "icl": [defn + (k + 1) * e] * n,
            "dummy_icl": [defn + (k + 1) * e] * (n * d),
            "dummy_zero_shot": [defn + e] * (n * d),
            "tuning": [defn + e] * (n * k),
        }
    style = _style(p.get("template", "plain"), bool(p.get("definition")))
    sets = draw_sets(task, **draw_settings(p), seed=cell.seed)

    def lengths(texts: list[str]) -> list[int]:
        return counter.lengths(texts)

    return {
        "zero_shot": lengths([render_prompt(task, s.query.input, [], style) for s in sets]),
        "icl": lengths([render_prompt(task, s.query.input, list(s.demos), style) for s in sets]),
        "dummy_icl": lengths(
            [render_prompt(task, x.input, list(s.demos), style) for s in sets for x in s.dummies]
        ),
        "dummy_zero_shot": lengths(
            [render_prompt(task, x.input, [], style) for s in sets for x in s.dummies]
        ),
        "tuning": lengths(
            [
                render_prompt(task, x.input, [], style) + render_target(x.output)
                for s in sets
                for x in s.demos
            ]
        ),
    }


def _add_tuning(work: Work, lengths: dict[str, list[int]], params: dict[str, Any]) -> None:
    """Every set tuned on its k pairs in one lockstep run (LoRA) or one run each (full), then
    read under its tuning: dummy states and the query's label scores."""
    tuning = params.get("tuning") or {}
    k = int(params["k"])
    n_sets = len(lengths["zero_shot"])
    steps = tuning_steps(k, tuning)
    epochs = steps / max(1, math.ceil(k / int(tuning.get("batch_size", 8))))
    tokens = int(sum(lengths["tuning"]) * epochs)
    batch = min(k, int(tuning.get("batch_size", 8))) or 1
    for j in range(n_sets):
        work.training_attention += training_attention(
            lengths["tuning"][j * k : (j + 1) * k], batch, steps
        )
    if tuning.get("method") == "full":
        work.optimizer_steps += steps * n_sets
        work.tuning_runs += n_sets
        work.training_tokens += tokens
        work.full_training_tokens += tokens
        work.add(forward_work(lengths["dummy_zero_shot"]))
        work.add(forward_work(lengths["zero_shot"], batch=1))
        return
    work.lockstep_steps += steps
    work.lockstep_runs += 1
    work.lockstep_tokens += tokens
    work.add(forward_work(lengths["dummy_zero_shot"], batch=PROBE_ROWS))
    work.add(forward_work(lengths["zero_shot"], batch=PROBE_ROWS))


def estimate_work(cell: Cell, estimate: PlanContext) -> Work:
    """A cell's forwards and tuning, counted as the cell runs them (a skipped task: none)."""
    p = cell.params
    if (cell.data or {}).get("skip"):
        return Work(exact=True)
    lengths = _lengths(cell, estimate.counter)
    work = Work(exact=(cell.data or {}).get("task") is not None)
    work.add(forward_work(lengths["zero_shot"]))
    work.add(forward_work(lengths["icl"]))
    work.add(forward_work(lengths["dummy_icl"]))
    n_layers = estimate.size.layers + 1
    wanted = [layer for layer in p.get("layers") or range(1, n_layers) if layer < n_layers]
    sources = 2 if p.get("it_vectors") else 1
    work.add(forward_work(lengths["zero_shot"], passes=len(wanted) * sources))
    if p.get("it_vectors"):
        _add_tuning(work, lengths, p)
    if p.get("control") == "random_init":
        work.model_builds += 1
    return work
