"""The convergence experiment as ``tunelens plan``, ``--limit`` and the preflight see it.

The engine (:mod:`tunelens.runs.plan`, :mod:`~tunelens.runs.limit`,
:mod:`~tunelens.runs.preflight`) names no experiment: it asks the hooks of
:class:`~tunelens.experiments.convergence.ConvergenceExperiment`, which delegate
here. A cell's work is counted as :func:`~tunelens.experiments.convergence.run_convergence_cell`
batches it: anchor and ICL captures and last-token forwards in batches of 16,
generation in token-budget batches of the real prompt lengths, one lockstep
tuning run for all sets of a LoRA cell probed together in chunks of
:data:`~tunelens.experiments.convergence.PROBE_ROWS` rows (one model per set,
each probed alone, with full tuning). Prompts are rendered as the cell renders
them where its tasks are on this machine, else sized from :func:`task_shape`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunelens.api import Cell, StudyInputs
from tunelens.errors import TunelensInputError
from tunelens.experiments.convergence.experiment import PROBE_ROWS
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.prompts import PromptStyle, Template, render_prompt, render_target
from tunelens.runs.costs import (
    TokenCounter,
    Work,
    forward_work,
    generation_work,
    training_attention,
    tuning_steps,
)
from tunelens.runs.plan import PlanContext, PlanPrompts, task_shape
from tunelens.runs.preflight import located
from tunelens.tasks.sampling import sample_demo_sets
from tunelens.tasks.types import Task

__all__ = [
    "absent_shape",
    "convergence_work",
    "limit_section",
    "plan_conditions",
    "plan_prompts",
    "preflight",
    "training_shape",
]


def limit_section(section: ConvergenceSpec, n: int) -> ConvergenceSpec:
    """``--limit n``: at most n (demonstration set, anchor) pairs per seed, and at least 2
    (the statistics across anchors need two)."""
    return section.model_copy(update={"n_pairs": max(2, min(section.n_pairs, n))})


def largest_draw(section: ConvergenceSpec, tasks: Sequence[Task], relevance: str) -> Any:
    """The demonstration sets the first seed's cells draw at the largest k: the draw that
    fails exactly when theirs would, and whose ICL prompts are the longest they make."""
    k_max = max(section.k)
    return sample_demo_sets(
        tasks,
        n_pairs=section.n_pairs,
        anchors_per_set=section.anchors_per_set,
        k=k_max,
        relevance=relevance,
        seed=section.seeds[0],
        k_max=k_max,
    )


def preflight(section: ConvergenceSpec, inputs: StudyInputs, source: str | None) -> None:
    """The cells' demonstration draw at the largest k, made once before any model loads, so
    a pool too small for k (``convergence.k``) or relevance 'other' over one task
    (``convergence.relevance``) fails here."""
    tasks = inputs.tasks(section.tasks)
    if not tasks and not inputs.strict:
        return  # not on this machine (tunelens plan): nothing to check yet
    if "other" in section.relevance and len(tasks) < 2:
        raise TunelensInputError(
            f"relevance 'other' draws the demonstrations from another task, so it needs at "
            f"least two tasks; {section.tasks} names {len(tasks)}",
            source=source,
            where="convergence.relevance",
        )
    for relevance in section.relevance:
        try:
            largest_draw(section, tasks, relevance)
        except TunelensInputError as error:
            key = (
                "convergence.relevance" if "relevance 'other'" in error.message else "convergence.k"
            )
            raise located(error, source, key) from None


def _style(template: Template, definition: bool) -> PromptStyle:
    """The prompt style the plan renders with (a chat template counted as plain text)."""
    return PromptStyle(
        template="plain" if template == "chat" else template, definition=definition, n_positive=0
    )


def plan_prompts(section: ConvergenceSpec, inputs: StudyInputs) -> PlanPrompts:
    """The ICL prompts of the first seed at the largest k (the longest the cells make),
    checked against every model of the section (key ``convergence.k``)."""
    tasks = inputs.tasks(section.tasks)
    prompts = []
    if tasks:
        style = _style(section.template, any(section.definition))
        for relevance in section.relevance:
            sets = largest_draw(section, tasks, relevance)
            for demo_set in sets:
                for anchor in demo_set.anchors:
                    prompts.append(
                        render_prompt(demo_set.task, anchor.input, demo_set.demos, style)
                    )
    return PlanPrompts(prompts, models=list(section.models), key="convergence.k")


def absent_shape(cell: Cell) -> dict[str, int]:
    """Prompt lengths of a cell whose tasks are not here (from :func:`task_shape`)."""
    p = cell.params
    shape = task_shape(str(p.get("tasks", "")))
    e = shape.example_tokens
    d = shape.definition_tokens if p.get("definition") else 0
    return {"anchor": d + e, "icl": d + (int(p.get("k", 8)) + 1) * e, "row": d + e}


def training_shape(cell: Cell) -> tuple[int, int]:
    """(batch size, tokens per row) of a cell's tuning: at most k rows of one example each."""
    p = cell.params
    tuning = p.get("tuning") or {}
    shape = task_shape(str(p.get("tasks", "")))
    batch = min(int(tuning.get("batch_size", 8)), int(p.get("k", 8)))
    return batch, shape.definition_tokens + shape.example_tokens


def plan_conditions(cells: Sequence[Cell]) -> int:
    """Conditions the report aggregates and plots: the cells' names without their seed."""
    return len({re.sub(r" seed=\d+$", "", cell.name) for cell in cells})


# ---------------------------------------------------------------- work of a cell


@dataclass
class _Lengths:
    """Token lengths of one cell's prompts: an anchor and an ICL prompt per pair (``owners``:
    each pair's set), and per tuned set (``used``) its training rows and target tokens."""

    anchors: list[int]
    icl: list[int]
    owners: list[int]
    used: list[int]
    rows: list[list[int]]
    targets: list[int]
    exact: bool


def _counted_lengths(cell: Cell, counter: TokenCounter) -> _Lengths:
    """The lengths of the prompts the cell renders from its own tasks (its seeded draw)."""
    p = cell.params
    n, k = int(p.get("n_pairs", 30)), int(p.get("k", 8))
    sets = sample_demo_sets(
        cell.data["tasks"],
        n_pairs=n,
        anchors_per_set=int(p.get("anchors_per_set", 1)),
        k=k,
        relevance=p.get("relevance", "same"),
        seed=cell.seed,
        k_max=p.get("k_max"),
    )
    style = _style(p.get("template", "plain"), bool(p.get("definition")))
    anchors, icl, owners = [], [], []
    set_rows, set_targets = [], []
    for j, demo_set in enumerate(sets):
        set_rows.append(
            [
                render_prompt(demo_set.task, d.input, [], style) + render_target(d.output)
                for d in demo_set.demos
            ]
        )
        set_targets.append([render_target(d.output) for d in demo_set.demos])
        for anchor in demo_set.anchors:
            anchors.append(render_prompt(demo_set.task, anchor.input, [], style))
            icl.append(render_prompt(demo_set.task, anchor.input, demo_set.demos, style))
            owners.append(j)
    anchors, icl, owners = anchors[:n], icl[:n], owners[:n]
    used = sorted(set(owners))
    return _Lengths(
        anchors=counter.lengths(anchors),
        icl=counter.lengths(icl),
        owners=owners,
        used=used,
        rows=[counter.lengths(set_rows[j]) for j in used],
        targets=[sum(counter.lengths(set_targets[j], special=False)) for j in used],
        exact=True,
    )


def _assumed_lengths(cell: Cell) -> _Lengths:
    """The lengths :func:`absent_shape` assumes where the cell's tasks are not here."""
    p = cell.params
    n, k = int(p.get("n_pairs", 30)), int(p.get("k", 8))
    per_set = int(p.get("anchors_per_set", 1))
    shape = absent_shape(cell)
    n_sets = math.ceil(n / per_set)
    return _Lengths(
        anchors=[shape["anchor"]] * n,
        icl=[shape["icl"]] * n,
        owners=[i // per_set for i in range(n)],
        used=list(range(n_sets)),
        rows=[[shape["row"]] * k for _ in range(n_sets)],
        targets=[0] * n_sets,  # unknown: priced as prompt tokens
        exact=False,
    )


def _add_tuning(work: Work, lengths: _Lengths, params: dict[str, Any], device: str) -> None:
    """Every used set tuned on its k rows, then probed: full tuning is one model per set,
    each probed alone; LoRA is one lockstep run whose sets are probed together."""
    tuning = params.get("tuning") or {}
    k = int(params.get("k", 8))
    max_new = int(params.get("max_new_tokens", 8))
    steps = tuning_steps(k, tuning)
    epochs = steps / max(1, math.ceil(k / int(tuning.get("batch_size", 8))))
    epochs_tokens = int(sum(sum(rows) * epochs for rows in lengths.rows))
    epochs_targets = int(sum(lengths.targets) * epochs)
    full = tuning.get("method") == "full"
    if full:
        work.optimizer_steps += steps * len(lengths.used)
        work.tuning_runs += len(lengths.used)
        work.training_tokens += epochs_tokens
        work.training_targets += epochs_targets
        work.full_training_tokens += epochs_tokens
    else:
        work.lockstep_steps += steps
        work.lockstep_runs += 1
        work.lockstep_tokens += epochs_tokens
        work.lockstep_targets += epochs_targets
    batch = min(k, int(tuning.get("batch_size", 8))) or 1
    for rows in lengths.rows:
        work.training_attention += training_attention(rows, batch, steps)
    if full:
        for j in lengths.used:  # each tuned set probed alone: states, last-token forward, generate
            rows = [lengths.anchors[i] for i, o in enumerate(lengths.owners) if o == j]
            work.add(forward_work(rows, passes=2))
            work.add(generation_work(rows, max_new, device=device))
    else:
        _add_batched_probe(work, lengths.anchors, max_new)


def _add_batched_probe(work: Work, anchors: list[int], max_new: int) -> None:
    """The batched-LoRA probe: per chunk of :data:`PROBE_ROWS` rows one capture, one
    last-token forward and one generate, every row of the chunk in each."""
    for start in range(0, len(anchors), PROBE_ROWS):
        chunk = anchors[start : start + PROBE_ROWS]
        work.add(forward_work(chunk, batch=len(chunk), passes=2))
        work.add(
            Work(
                generate_tokens=sum(chunk) + len(chunk) * max_new,
                decode_tokens=len(chunk) * max_new,
                generate_calls=1,
                decode_steps=max_new,
                attention=len(chunk) * (max(chunk) ** 2 + max_new * (max(chunk) + max_new)),
            )
        )


def convergence_work(cell: Cell, estimate: PlanContext) -> Work:
    """A convergence cell: anchor and ICL captures, forwards and generations, per-set tuning,
    the probe of every tuned set, activation patching, the random-init control's model."""
    p = cell.params
    max_new = int(p.get("max_new_tokens", 8))
    device = estimate.device
    if (cell.data or {}).get("tasks"):
        lengths = _counted_lengths(cell, estimate.counter)
    else:
        lengths = _assumed_lengths(cell)
    work = Work(exact=lengths.exact)
    work.add(forward_work(lengths.anchors, passes=2))  # states + last-token forward
    work.add(forward_work(lengths.icl, passes=2))
    work.add(generation_work(lengths.anchors, max_new, device=device))
    work.add(generation_work(lengths.icl, max_new, device=device))
    _add_tuning(work, lengths, p, device)
    if p.get("patching"):
        layers = estimate.size.layers
        wanted = p.get("patching_layers") or list(range(layers + 1))
        n_layers = len([layer for layer in wanted if layer <= layers])
        work.add(forward_work(lengths.anchors, passes=2 * n_layers))
    if p.get("control") == "random_init":
        work.model_builds += 1
    return work
