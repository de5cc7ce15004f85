"""What a function-vectors cell computes on the model (Todd et al., ICLR 2024).

Two kinds of cell, each for one (model, task, seed):

- **heads** (:func:`run_heads_cell`): the mean output of every attention head at
  the last token of ``n_prompts`` in-context prompts (k demonstrations, correct
  labels), and each head's *indirect effect*: on ``n_prompts`` other prompts whose
  demonstration labels are shuffled among themselves, the rise in the probability
  of the correct label when that head's output at the last token is replaced by
  its mean. All heads of a layer run in one forward: the shuffled prompts are
  repeated once per head, one head patched per row
  (:func:`tunelens.models.heads.patch_heads`).
- **vector** (:func:`run_vector_cell`): given the top heads of the model (chosen
  over every task and seed from the heads cells), the function vector of this
  task is the sum of their mean outputs as written into the residual stream
  (:func:`tunelens.models.heads.head_contribution`); it is added after each layer
  at the last token of ``n_queries`` zero-shot prompts, all layers in one batch
  (one layer per row, :func:`tunelens.models.heads.add_to_residual`), beside the
  zero-shot and the in-context (k demonstrations) readings of the same queries.

The probability of a label is that of its whole continuation (the product of its
tokens' probabilities, :mod:`tunelens.models.scoring`); for a one-token label it is
the paper's first-token probability. A prediction is the label with the highest
summed log-probability.

The draw (:func:`draw_task`) is seeded by (seed, task) only, so every model sees
the same prompts (a paired design) and both cells of a task the same ones.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelens.errors import TunelensInputError
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.tasks.sampling import as_examples
from tunelens.tasks.types import Example, Instance, Task

__all__ = [
    "HEAD_ROWS",
    "HeadEffects",
    "Scorer",
    "TaskDraw",
    "draw_task",
    "gold_index",
    "head_effects",
    "run_heads_cell",
    "run_vector_cell",
]

# Rows (prompt x head, or query x layer) scored in one forward.
HEAD_ROWS = 128
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TaskDraw:
    """One task's prompts for one seed: the in-context prompts whose head outputs are
    averaged (``clean``), the shuffled-label prompts the averages are patched into
    (``shuffled``), and the evaluation queries with their own demonstrations
    (``queries``, ``query_demos``; the first half chooses the layer, the rest reports)."""

    task: Task
    clean: tuple[tuple[Instance, tuple[Example, ...]], ...]
    shuffled: tuple[tuple[Instance, tuple[Example, ...]], ...]
    queries: tuple[Instance, ...]
    query_demos: tuple[tuple[Example, ...], ...]

    @property
    def n_dev(self) -> int:
        """Evaluation queries that choose the layer (the first ones); the rest report it."""
        return len(self.queries) // 2


def _shuffle_labels(demos: list[Example], rng: random.Random) -> tuple[Example, ...]:
    """The demonstrations with their labels permuted among them (the paper's corruption)."""
    outputs = [d.output for d in demos]
    rng.shuffle(outputs)
    return tuple(Example(d.input, out) for d, out in zip(demos, outputs, strict=True))


def draw_task(task: Task, k: int, n_prompts: int, n_queries: int, seed: int) -> TaskDraw:
    """The seeded draw of one task: evaluation queries first (held out of every
    demonstration and averaged prompt), then prompts drawn from the remaining pool."""
    if not task.labels:
        raise TunelensInputError(
            f"task {task.name!r} has no label space; function vectors score labels",
            where="function_vectors.tasks",
        )
    need = n_queries + k + 1
    if len(task.instances) < need:
        raise TunelensInputError(
            f"task {task.name!r} has {len(task.instances)} instances; n_queries={n_queries} "
            f"held-out queries and prompts of k={k} demonstrations need {need}",
            where="function_vectors.n_queries",
        )
    rng = random.Random(f"function_vectors|{seed}|{task.name}")
    order = rng.sample(list(task.instances), len(task.instances))
    queries, pool = order[:n_queries], order[n_queries:]

    def prompt() -> tuple[Instance, list[Example]]:
        chosen = rng.sample(pool, k + 1)
        return chosen[0], as_examples(chosen[1:])

    clean = [(q, tuple(d)) for q, d in (prompt() for _ in range(n_prompts))]
    shuffled = []
    for _ in range(n_prompts):
        query, demos = prompt()
        shuffled.append((query, _shuffle_labels(demos, rng)))
    demos_of_queries = tuple(tuple(as_examples(rng.sample(pool, k))) for _ in queries)
    return TaskDraw(task, tuple(clean), tuple(shuffled), tuple(queries), demos_of_queries)


def gold_index(task: Task, instance: Instance) -> int:
    """The index in the task's labels of the instance's first reference that is a label."""
    labels = list(task.labels or ())
    for output in instance.outputs:
        if output in labels:
            return labels.index(output)
    raise TunelensInputError(
        f"task {task.name!r}: instance {instance.id!r} has no reference among its labels",
        where="function_vectors.tasks",
    )


def _style(params: dict[str, Any]) -> PromptStyle:
    return PromptStyle(template=params["template"], definition=params["definition"], n_positive=0)


@dataclass
class Reading:
    """Per row: the probability of the gold label's continuation, and whether it wins."""

    p: np.ndarray
    correct: np.ndarray


def _read(scores: Any, gold: Sequence[int]) -> Reading:
    summed = np.stack(scores.summed)
    rows = np.arange(len(gold))
    winners = summed.argmax(axis=1)
    return Reading(p=np.exp(summed[rows, gold]), correct=(winners == np.asarray(gold)) * 1.0)


class Scorer:
    """Scores prompts of one task under an edit, in chunks of :data:`HEAD_ROWS` rows; counts
    its forwards (one prompt forward per chunk) and rows."""

    def __init__(self, loaded: Any, task: Task) -> None:
        self.loaded = loaded
        self.labels = list(task.labels or ())
        self.task = task.name
        self.forwards = 0
        self.rows = 0

    def __call__(self, prompts: Sequence[str], gold: Sequence[int], hooks: Any = None) -> Reading:
        from tunelens.models.heads import scored_with

        hooks = hooks if hooks is not None else contextlib.nullcontext()
        labels = [self.labels] * len(prompts)
        scores = scored_with(self.loaded, prompts, labels, hooks, tasks=[self.task] * len(prompts))
        self.forwards += 1
        self.rows += len(prompts)
        return _read(scores, gold)

    def plain(self, prompts: Sequence[str], gold: Sequence[int]) -> Reading:
        """Unedited readings of ``prompts``, chunked."""
        parts = [
            self(prompts[i : i + HEAD_ROWS], gold[i : i + HEAD_ROWS])
            for i in range(0, len(prompts), HEAD_ROWS)
        ]
        return Reading(
            p=np.concatenate([r.p for r in parts]),
            correct=np.concatenate([r.correct for r in parts]),
        )


def _rounded(x: Any) -> Any:
    """Nested lists of floats at 9 significant figures (small probabilities keep their
    precision; stored cells stay the same across machines' last-bit differences)."""
    return np.vectorize(lambda v: float(f"{v:.9g}"), otypes=[float])(
        np.asarray(x, dtype=np.float64)
    ).tolist()


def _mean_heads(loaded: Any, projections: Any, score: Scorer, prompts: list[str], gold: list[int]):
    """``[blocks, heads, head_dim]`` mean head outputs at the last token over ``prompts``,
    and the prompts' own readings."""
    from tunelens.models.heads import record_head_outputs

    with record_head_outputs(loaded, projections) as record:
        reading = score.plain(prompts, gold)
    return record.stacked().mean(dim=0), reading


@dataclass
class HeadEffects:
    """What :func:`head_effects` measures: mean head outputs ``[blocks, heads, head_dim]``,
    the readings of the averaged and of the corrupted prompts, and the indirect effect of
    every head on every corrupted prompt ``[prompt, block, head]``."""

    means: Any
    clean: Reading
    corrupted: Reading
    aie: np.ndarray


def head_effects(
    score: Scorer,
    projections: Sequence[Any],
    clean: tuple[list[str], list[int]],
    corrupted: tuple[list[str], list[int]],
    progress: Progress | None = None,
) -> HeadEffects:
    """Each head's mean output over the ``clean`` prompts (with their gold label indices), and
    its indirect effect on each ``corrupted`` prompt: P(gold) with that head's output at the
    last token replaced by its mean, minus P(gold) unpatched. All heads of a block in one
    forward per chunk of prompts (one row per prompt and head)."""
    import torch

    from tunelens.models.heads import patch_heads

    means, clean_reading = _mean_heads(score.loaded, projections, score, *clean)
    prompts, gold = corrupted
    base = score.plain(prompts, gold)
    n_heads = projections[0].n_heads
    per_chunk = max(1, HEAD_ROWS // n_heads)
    chunks = -(-len(prompts) // per_chunk)
    aie = np.zeros((len(prompts), len(projections), n_heads))
    for block, projection in enumerate(projections):
        for c in range(chunks):
            rows = [
                (i, h)
                for i in range(c * per_chunk, min((c + 1) * per_chunk, len(prompts)))
                for h in range(projection.n_heads)
            ]
            heads = torch.tensor([h for _, h in rows])
            edit = patch_heads(score.loaded, projection, heads, means[block][heads])
            reading = score([prompts[i] for i, _ in rows], [gold[i] for i, _ in rows], edit)
            for (i, h), p in zip(rows, reading.p, strict=True):
                aie[i, block, h] = p - base.p[i]
            if progress is not None:
                progress(block * chunks + c + 1, len(projections) * chunks)
    return HeadEffects(means, clean_reading, base, aie)


def run_heads_cell(
    loaded: Any, task: Task, params: dict[str, Any], seed: int, progress: Progress | None = None
) -> dict[str, Any]:
    """One task's mean head outputs and per-head indirect effects ``[prompt, layer, head]``
    on its shuffled-label prompts (:func:`head_effects`)."""
    from tunelens.models.heads import head_layout

    projections = head_layout(loaded, where="function_vectors.models")
    draw = draw_task(task, params["k"], params["n_prompts"], params["n_queries"], seed)
    style, tok = _style(params), loaded.tokenizer
    score = Scorer(loaded, task)
    clean = [render_prompt(task, q.input, d, style, tok) for q, d in draw.clean]
    shuffled = [render_prompt(task, q.input, d, style, tok) for q, d in draw.shuffled]
    effects = head_effects(
        score,
        projections,
        (clean, [gold_index(task, q) for q, _ in draw.clean]),
        (shuffled, [gold_index(task, q) for q, _ in draw.shuffled]),
        progress,
    )
    return {
        "task": task.name,
        "n_layers": len(projections),
        "n_heads": projections[0].n_heads,
        "head_dim": projections[0].head_dim,
        "clean": {"p": _rounded(effects.clean.p), "correct": _rounded(effects.clean.correct)},
        "shuffled": {
            "p": _rounded(effects.corrupted.p),
            "correct": _rounded(effects.corrupted.correct),
        },
        "aie": _rounded(effects.aie),
        "forwards": score.forwards,
        "rows": score.rows,
    }


def run_vector_cell(
    loaded: Any, task: Task, params: dict[str, Any], seed: int, progress: Progress | None = None
) -> dict[str, Any]:
    """Zero-shot, in-context and function-vector readings of one task's evaluation queries,
    the vector added after each layer. ``params["heads"]``: ``[[layer, head], ...]`` with
    layer L the block that writes residual layer L (1-based)."""
    import torch

    from tunelens.models.heads import add_to_residual, head_contribution, head_layout

    projections = head_layout(loaded, where="function_vectors.models")
    draw = draw_task(task, params["k"], params["n_prompts"], params["n_queries"], seed)
    style, tok = _style(params), loaded.tokenizer
    score = Scorer(loaded, task)
    clean = [render_prompt(task, q.input, d, style, tok) for q, d in draw.clean]
    means, _ = _mean_heads(
        loaded, projections, score, clean, [gold_index(task, q) for q, _ in draw.clean]
    )
    contributions = [
        head_contribution(projections[layer - 1], head, means[layer - 1, head])
        for layer, head in params["heads"]
    ]
    vector = torch.stack(contributions).sum(dim=0)
    gold = [gold_index(task, q) for q in draw.queries]
    zero_shot = [render_prompt(task, q.input, [], style, tok) for q in draw.queries]
    icl = [
        render_prompt(task, q.input, d, style, tok)
        for q, d in zip(draw.queries, draw.query_demos, strict=True)
    ]
    zs_reading, icl_reading = score.plain(zero_shot, gold), score.plain(icl, gold)
    n_layers = len(projections) + 1
    layers = [x for x in params.get("layers") or range(n_layers) if x < n_layers]
    rows = [(layer, q) for layer in layers for q in range(len(zero_shot))]
    p = np.zeros((len(layers), len(zero_shot)))
    correct = np.zeros_like(p)
    for start in range(0, len(rows), HEAD_ROWS):
        chunk = rows[start : start + HEAD_ROWS]
        edit = add_to_residual(loaded, torch.tensor([layer for layer, _ in chunk]), vector)
        reading = score([zero_shot[q] for _, q in chunk], [gold[q] for _, q in chunk], edit)
        for (layer, q), pr, hit in zip(chunk, reading.p, reading.correct, strict=True):
            p[layers.index(layer), q], correct[layers.index(layer), q] = pr, hit
        if progress is not None:
            progress(start // HEAD_ROWS + 1, -(-len(rows) // HEAD_ROWS))
    return {
        "task": task.name,
        "heads": [list(h) for h in params["heads"]],
        "layers": layers,
        "n_dev": draw.n_dev,
        "vector_norm": round(float(vector.norm()), 7),
        "zero_shot": {"p": _rounded(zs_reading.p), "correct": _rounded(zs_reading.correct)},
        "icl": {"p": _rounded(icl_reading.p), "correct": _rounded(icl_reading.correct)},
        "vector": {"p": _rounded(p), "correct": _rounded(correct)},
        "forwards": score.forwards,
        "rows": score.rows,
    }
