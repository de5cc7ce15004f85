"""The audit as ``tunelens plan`` and ``--limit`` see it.

The engine (:mod:`tunelens.runs.plan`, :mod:`~tunelens.runs.limit`) names no
experiment: it asks the hooks of :class:`~tunelens.experiments.audit.AuditExperiment`,
which delegate here. A cell's work is counted as the audit runs it: greedy
generation on the held-out prompts of each evaluation encoding (shared
prefixes grouped as the model generates them), each sample scored, and for a
grid cell one multi-task tuning run on its training pairs and the untuned model's
teacher-forced forward over its outputs (token distribution shift). Prompts and pairs
are rendered as the cell renders them where its tasks are on this machine,
else sized from :func:`task_shape`.
"""

from __future__ import annotations

import math
from typing import Any

from tunelens.api import Cell, StudyInputs
from tunelens.experiments.audit.experiment import eval_items, eval_prompts, training_pairs
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.runs.costs import Work, forward_work, generation_work, tuning_steps
from tunelens.runs.plan import FULL_INSTANCES, PlanContext, PlanPrompts, task_shape

__all__ = [
    "absent_shape",
    "audit_work",
    "limit_section",
    "plan_prompts",
    "token_rank_work",
    "training_shape",
]

SCORED_ONLY = ("random", "copy_input", "copy_demo")  # baselines that run no model


def limit_section(section: AuditSpec, n: int) -> AuditSpec:
    """``--limit n``: at most n held-out instances scored and n training instances per task
    (``full`` and larger sizes become n; sizes made equal merge)."""
    sizes: list[Any] = []
    for size in section.instances_per_task:
        capped = n if size == "full" else min(int(size), n)
        if capped not in sizes:
            sizes.append(capped)
    return section.model_copy(
        update={
            "eval_instances_per_task": min(section.eval_instances_per_task, n),
            "instances_per_task": sizes,
        }
    )


def plan_prompts(section: AuditSpec, inputs: StudyInputs) -> PlanPrompts:
    """Tk-Instruct prompts (definition + positive examples) of the evaluated instances,
    checked against every audited model (key ``audit.n_positive``)."""
    style = PromptStyle(template="tk", definition=True, n_positive=section.n_positive)
    prompts = [
        render_prompt(task, inst.input, None, style)
        for task in inputs.tasks(section.test)
        for inst in task.instances[: section.eval_instances_per_task]
    ]
    return PlanPrompts(prompts, models=section.audited_models(), key="audit.n_positive")


def absent_shape(cell: Cell) -> dict[str, Any]:
    """Prompt and pair counts of a cell whose tasks are not here: ``{"prompts": {encoding:
    tokens}, "items": n, "pairs": n, "pair_tokens": n}``."""
    p = cell.params
    test = task_shape(str(p.get("test", "")), "test")
    n_pos = int(p.get("n_positive", 2))
    prompts = {}
    for encoding in p.get("eval_encodings") or ["definition_examples"]:
        shots = n_pos if encoding == "definition_examples" else 0
        prompts[encoding] = test.definition_tokens + (shots + 1) * test.example_tokens
    train = task_shape(str(p.get("train", "")), "train")
    n = p.get("instances_per_task", 5)
    per_task = train.instances_per_task if n == "full" else float(n)
    if train.exact:
        per_task = min(per_task, train.instances_per_task)
    pair = train.example_tokens * (1 + (n_pos if p.get("examples") != "none" else 0))
    pair += train.definition_tokens if p.get("definition") != "none" else 0
    return {
        "prompts": prompts,
        "items": test.tasks * min(int(p.get("eval_instances_per_task", 100)), FULL_INSTANCES),
        "pairs": int(train.tasks * per_task),
        "pair_tokens": pair,
    }


def training_shape(cell: Cell) -> tuple[int, int]:
    """(batch size, tokens per row) of a grid cell's multi-task tuning: one training pair
    with its definition and positive examples."""
    p = cell.params
    tuning = p.get("tuning") or {}
    shape = task_shape(str(p.get("train", "")), "train")
    n_pos = int(p.get("n_positive", 2))
    seq = shape.definition_tokens + (n_pos + 1) * shape.example_tokens
    return int(tuning.get("batch_size", 8)), seq


# ---------------------------------------------------------------- work of a cell


def _add_evaluation(
    work: Work, cell: Cell, items: list[Any] | None, shape: dict[str, Any], estimate: PlanContext
) -> None:
    """Greedy generation on the held-out prompts of each evaluation encoding, each sample
    scored (shared prefixes grouped above the model's break-even, as it generates);
    ``items`` None: the held-out tasks are not here, ``shape`` sizes them."""
    from tunelens.models.prefix_generation import break_even_tokens

    p = cell.params
    max_new = int(p.get("max_new_tokens", 8))
    n_items = len(items) if items is not None else int(shape["items"])
    break_even = break_even_tokens(estimate.size.total, estimate.size.layers)
    for encoding in list(p.get("eval_encodings") or ["definition_examples"]):
        if items is not None:
            prompts = eval_prompts(items, int(p.get("n_positive", 2)), p["template"], encoding)
            ids = estimate.counter.token_ids(prompts)
            lengths = (
                [len(row) for row in ids] if ids is not None else estimate.counter.lengths(prompts)
            )
        else:
            ids, lengths = None, [int(shape["prompts"][encoding])] * n_items
        work.add(
            generation_work(
                lengths,
                max_new,
                estimate.kind,
                estimate.device,
                token_ids=ids,
                min_saved_tokens=break_even,
            )
        )
        work.samples += len(lengths)
        if p.get("baseline") is None:
            work.add(token_rank_work(lengths, ids, max_new, estimate))


def token_rank_work(
    lengths: list[int], ids: list[list[int]] | None, max_new: int, estimate: PlanContext
) -> Work:
    """The untuned model's teacher-forced forward over prompt + tuned output (token
    distribution shift): packed rows that share the prompts' prefixes, as
    :func:`tunelens.models.token_ranks.teacher_forced_ranks` runs them, each output taken
    at its bound of ``max_new`` tokens; padded rows where the ids are unknown."""
    from tunelens.models.packing import pack_rows

    if ids is None or estimate.kind != "causal":
        return forward_work([n + max_new for n in lengths])
    rows = pack_rows([[*row, *([0] * max_new)] for row in ids], hidden_size=estimate.size.hidden)
    return forward_work([len(row.ids) for row in rows], batch=1)


def _pair_lengths(
    cell: Cell, train: Any, shape: dict[str, Any], estimate: PlanContext
) -> tuple[int, float, list[int], float]:
    """(pairs, mean tokens per pair, lengths of a sample of pairs, mean target tokens) of a
    grid cell's training pairs: at most 512 of them counted, taken evenly."""
    p = cell.params
    if not train:
        mean = float(shape["pair_tokens"])  # targets unknown: priced as prompt tokens
        return int(shape["pairs"]), mean, [int(mean)], 0.0
    pairs = training_pairs(
        train,
        definition=p["definition"],
        examples=p["examples"],
        instances_per_task=p["instances_per_task"],
        n_positive=int(p.get("n_positive", 2)),
        seed=cell.seed,
        template=p["template"],
        mixed=p.get("train_encoding") == "mixed",
    )
    step = max(1, len(pairs) // 512)
    sample = pairs[::step][:512]
    counter = estimate.counter
    lengths = [n + 1 for n in counter.lengths([a + b for a, b in sample])]  # + EOS
    targets = [n + 1 for n in counter.lengths([b for _, b in sample], special=False)]
    mean = sum(lengths) / max(1, len(lengths))
    return len(pairs), mean, lengths, sum(targets) / max(1, len(targets))


def _add_training(
    work: Work, cell: Cell, train: Any, shape: dict[str, Any], estimate: PlanContext
) -> None:
    """One multi-task tuning run over the cell's training pairs (AdamW over every weight
    with full tuning)."""
    tuning = cell.params.get("tuning") or {}
    n_pairs, mean, lengths, mean_target = _pair_lengths(cell, train, shape, estimate)
    steps = tuning_steps(n_pairs, tuning)
    batch = int(tuning.get("batch_size", 16))
    # shuffled batches pad to about the longest of ``batch`` draws: the 90th percentile
    ordered = sorted(lengths)
    width = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    rows = min(steps * batch, n_pairs * int(tuning.get("epochs", 1)))  # rows trained on
    work.training_attention += rows * width**2
    trained = int(mean * rows)
    work.multitask_steps += steps
    work.multitask_runs += 1
    work.training_tokens += trained
    work.training_targets += int(mean_target * rows)
    if tuning.get("method") == "full":
        work.full_training_tokens += trained
        accumulation = int(tuning.get("gradient_accumulation_steps", 1) or 1)
        work.trained_parameters_steps += estimate.size.total * math.ceil(steps / accumulation)


def audit_work(cell: Cell, estimate: PlanContext) -> Work:
    """An audit cell: multi-task tuning on the training pairs (grid cells), then greedy
    generation on the held-out prompts of each evaluation encoding, each sample scored."""
    p = cell.params
    data = cell.data or {}
    test = data.get("test") or ()
    train = data.get("train") or ()
    baseline = p.get("baseline")
    shape = absent_shape(cell) if not test or (baseline is None and not train) else {}
    items = eval_items(test, int(p.get("eval_instances_per_task", 100))) if test else None
    work = Work(exact=bool(test) and (baseline is not None or bool(train)))
    if baseline in SCORED_ONLY:
        # scoring only; the guess baseline also scores every label of the output space
        n_items = len(items) if items is not None else int(shape["items"])
        work.samples = n_items * (3 if baseline == "random" else 1)
        return work
    _add_evaluation(work, cell, items, shape, estimate)
    if baseline is None:
        _add_training(work, cell, train, shape, estimate)
    return work
