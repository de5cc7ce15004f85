"""The function-vectors experiment as ``tunelens plan``, ``--limit`` and the preflight see it.

A heads cell's work is counted as
:func:`~tunelens.experiments.function_vectors.measure.run_heads_cell` batches
it: the in-context prompts once (their head outputs recorded), the
shuffled-label prompts once, then per layer the shuffled prompts repeated once
per head, :data:`~tunelens.experiments.function_vectors.measure.HEAD_ROWS` rows
a forward. The plan sees only the heads cells (the vector cells are asked for
once they finish), so each heads cell also carries the work of the vector cell
that follows it: the in-context prompts again, the zero-shot and the ICL
prompts of the queries, and the zero-shot prompts once per layer the vector is
added at.
"""

from __future__ import annotations

import json
from typing import Any

from tunelens.api import Cell, StudyInputs
from tunelens.errors import TunelensInputError
from tunelens.experiments.function_vectors.measure import HEAD_ROWS, draw_task
from tunelens.experiments.function_vectors.spec import FunctionVectorsSpec
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.runs.costs import Work, forward_work
from tunelens.runs.plan import PlanContext, PlanPrompts, task_shape
from tunelens.runs.preflight import located

__all__ = ["function_vectors_work", "limit_section", "plan_prompts", "preflight"]


def limit_section(section: FunctionVectorsSpec, n: int) -> FunctionVectorsSpec:
    """``--limit n``: at most n averaged (and n shuffled) prompts and n evaluation queries per
    task and seed, at least 2 of each (a mean and a dev/test split need two)."""
    return section.model_copy(
        update={
            "n_prompts": max(2, min(section.n_prompts, n)),
            "n_queries": max(2, min(section.n_queries, n)),
        }
    )


def _encoder_decoder(model: str) -> bool | None:
    """Whether ``model``'s config.json says encoder-decoder (None: no config here)."""
    from tunelens.models.paths import resolve_model_path

    try:
        config = resolve_model_path(model) / "config.json"
        data = json.loads(config.read_text(encoding="utf-8"))
    except (TunelensInputError, OSError, ValueError):
        return None
    return bool(data.get("is_encoder_decoder")) if isinstance(data, dict) else None


def preflight(section: FunctionVectorsSpec, inputs: StudyInputs, source: str | None) -> None:
    """Every model decoder-only (``function_vectors.models``), and every task's draw of the
    first seed (a label space; ``function_vectors.n_queries``: enough instances), before any
    model loads."""
    for model in section.models:
        if _encoder_decoder(model):
            raise TunelensInputError(
                f"{model} is an encoder-decoder; per-head function vectors need a "
                "decoder-only causal LM (Llama, Mistral, Qwen2, GPT-2, ...)",
                source=source,
                where="function_vectors.models",
            )
    tasks = inputs.tasks(section.tasks)
    for task in tasks:
        try:
            draw_task(task, section.k, section.n_prompts, section.n_queries, section.seeds[0])
        except TunelensInputError as error:
            raise located(error, source, error.where or "function_vectors.tasks") from None


def _style(section_or_params: Any) -> PromptStyle:
    """The prompt style the plan renders with (a chat template counted as plain text)."""
    get = (
        section_or_params.get
        if isinstance(section_or_params, dict)
        else lambda key, default=None: getattr(section_or_params, key, default)
    )
    template = get("template", "plain")
    return PromptStyle(
        template="plain" if template == "chat" else template,
        definition=bool(get("definition", False)),
        n_positive=0,
    )


def plan_prompts(section: FunctionVectorsSpec, inputs: StudyInputs) -> PlanPrompts:
    """The in-context prompts of the first seed (the longest the cells make), checked
    against every model of the section (key ``function_vectors.k``)."""
    prompts = []
    style = _style(section)
    for task in inputs.tasks(section.tasks):
        draw = draw_task(task, section.k, section.n_prompts, section.n_queries, section.seeds[0])
        prompts += [render_prompt(task, q.input, d, style) for q, d in draw.clean]
    return PlanPrompts(prompts, models=list(section.models), key="function_vectors.k")


def _lengths(cell: Cell, counter: Any) -> dict[str, list[int]]:
    """Token lengths of the cell's averaged, shuffled, zero-shot and ICL prompts."""
    p = cell.params
    task = (cell.data or {}).get("task")
    if task is None:  # the tasks are not on this machine: sized from their shape
        shape = task_shape(str(p.get("tasks", "")))
        d = shape.definition_tokens if p.get("definition") else 0
        icl = d + (int(p["k"]) + 1) * shape.example_tokens
        zero = d + shape.example_tokens
        n, q = int(p["n_prompts"]), int(p["n_queries"])
        return {"clean": [icl] * n, "shuffled": [icl] * n, "zero": [zero] * q, "icl": [icl] * q}
    draw = draw_task(task, p["k"], p["n_prompts"], p["n_queries"], cell.seed)
    style = _style(p)
    return {
        "clean": counter.lengths([render_prompt(task, q.input, d, style) for q, d in draw.clean]),
        "shuffled": counter.lengths(
            [render_prompt(task, q.input, d, style) for q, d in draw.shuffled]
        ),
        "zero": counter.lengths([render_prompt(task, q.input, [], style) for q in draw.queries]),
        "icl": counter.lengths(
            [
                render_prompt(task, q.input, d, style)
                for q, d in zip(draw.queries, draw.query_demos, strict=True)
            ]
        ),
    }


def function_vectors_work(cell: Cell, estimate: PlanContext) -> Work:
    """A heads cell with the vector cell that follows it (a vector cell: its own part)."""
    p = cell.params
    lengths = _lengths(cell, estimate.counter)
    layers, heads = estimate.size.layers, max(1, estimate.size.heads)
    work = Work(exact=bool((cell.data or {}).get("task")))
    work.add(forward_work(lengths["clean"], batch=HEAD_ROWS))
    if p.get("stage") != "vector":
        work.add(forward_work(lengths["shuffled"], batch=HEAD_ROWS))
        per_chunk = max(1, HEAD_ROWS // heads)
        repeated = [n for n in lengths["shuffled"] for _ in range(heads)]
        work.add(forward_work(repeated, batch=per_chunk * heads, passes=layers))
        work.add(forward_work(lengths["clean"], batch=HEAD_ROWS))  # the vector cell's own
    wanted = p.get("layers") or (cell.data or {}).get("layers") or list(range(layers + 1))
    n_layers = len([layer for layer in wanted if layer <= layers])
    work.add(forward_work(lengths["zero"], batch=HEAD_ROWS))
    work.add(forward_work(lengths["icl"], batch=HEAD_ROWS))
    work.add(forward_work(lengths["zero"] * n_layers, batch=HEAD_ROWS))
    return work
