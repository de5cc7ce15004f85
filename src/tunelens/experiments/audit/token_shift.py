"""Token distribution shift in the audit: along each tuned condition's greedy output on the
held-out prompts, the rank of every token under the untuned model (Lin et al. 2023).

In a grid cell, :func:`add_token_ranks` runs after the tuned model has answered and been
unloaded: one teacher-forced forward of the untuned model over prompt + tuned output
(:func:`tunelens.models.token_ranks.teacher_forced_ranks`, packed rows so that a task's
shared definition and examples run once) gives each sample ``output_ids``,
``output_texts``, ``base_ranks`` and ``base_top_ids``, and each evaluation the label-token
ids of every held-out task and the tokenizer's special ids. :func:`token_shift_section`
turns the finished cells into results.json ``audit_token_shift`` (arithmetic only,
:mod:`tunelens.measures.token_shift`): per tuned condition, seed and encoding the shares
with intervals over tasks, the kinds and the most shifted tokens, and one verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunelens.api import Cell
from tunelens.measures.token_shift import (
    MARGINAL_MAX_RANK,
    positions_of,
    shift_reading,
    summarise,
)
from tunelens.tasks.types import Task

__all__ = ["DEFINITION", "add_token_ranks", "token_shift_section"]

DEFINITION = {
    "unshifted": "the untuned model's top-1 token (rank 1)",
    "marginal": f"rank 2 to {MARGINAL_MAX_RANK} under the untuned model",
    "shifted": f"rank {MARGINAL_MAX_RANK + 1} or lower under the untuned model",
    "positions": "every token of the tuned model's greedy output on the held-out prompts, "
    "up to and including its stop token (end of sequence or newline)",
    "statistic": "percent of a task's output tokens, mean over tasks with a 95% interval "
    "(bootstrap; a t-interval below 10 tasks)",
    "reference": "Lin et al. 2023, The Unlocking Spell on Base LLMs (URIAL, AlignTDS)",
}


def add_token_ranks(
    loaded: Any,
    evaluations: Mapping[str, dict[str, Any]],
    outputs: Mapping[str, Sequence[Sequence[int]]],
    tasks: Sequence[Task],
) -> None:
    """Rank the tuned outputs ``outputs[encoding]`` (token ids, in sample order) under the
    untuned ``loaded`` model and write the readings into ``evaluations`` (see the module)."""
    from tunelens.models.token_ranks import label_token_ids, ranked_samples, special_ids

    tokenizer = loaded.tokenizer
    labels = {t.name: sorted(label_token_ids(tokenizer, t.labels)) for t in tasks if t.labels}
    for encoding, ids in outputs.items():
        evaluation = evaluations[encoding]
        samples = evaluation["samples"]
        ranked = ranked_samples(loaded, [str(s["prompt"]) for s in samples], ids)
        for sample, record in zip(samples, ranked, strict=True):
            sample.update(record)
        evaluation["token_shift"] = {
            "label_token_ids": labels,
            "special_ids": special_ids(tokenizer),
        }


def condition_summary(
    evaluation: Mapping[str, Any], n_boot: int, seed: int = 0
) -> dict[str, Any] | None:
    """One evaluation's token-shift summary over tasks, or None where its cell has no ranks
    (cells from before the measure)."""
    info = evaluation.get("token_shift")
    if not isinstance(info, Mapping):
        return None
    positions, labels_of_unit = positions_of(
        evaluation.get("samples") or [], info["label_token_ids"], set(info["special_ids"])
    )
    return summarise(positions, labels_of_unit, n_boot=n_boot, seed=seed, unit="task")


ENCODING_WORDS = {
    "definition_only": "the definition only",
    "definition_examples": "the definition and positive examples",
}


def _describe(condition: Mapping[str, Any]) -> str:
    """'tuning with the original definition and original examples (5 instances per task,
    seed 0), evaluated with the definition only'."""
    encoding = str(condition["encoding"])
    return (
        f"tuning with the {condition['definition']} definition and {condition['examples']} "
        f"examples ({condition['instances_per_task']} instances per task, seed "
        f"{condition['seed']}), evaluated with {ENCODING_WORDS.get(encoding, encoding)},"
    )


def token_shift_section(
    results: Sequence[tuple[Cell, Mapping[str, Any]]], encodings: Sequence[str], n_boot: int
) -> dict[str, Any] | None:
    """results.json ``audit_token_shift`` from the grid cells, or None where none has ranks.

    The verdict reads the first condition tuned with the original definition and
    examples (the tuning whose gain the audit splits), else the first condition.
    """
    rows = []
    for cell, result in results:
        if "baseline" in cell.params:
            continue
        condition = {
            **{k: cell.params[k] for k in ("definition", "examples", "instances_per_task")},
            "seed": cell.seed,
        }
        for encoding in encodings:
            evaluation = (result.get("evaluations") or {}).get(encoding)
            summary = condition_summary(evaluation or {}, n_boot)
            if summary is None:
                continue
            described = {**condition, "encoding": encoding}
            summary["reading"] = shift_reading(summary, _describe(described).capitalize())
            rows.append({"condition": described, **summary})
    if not rows:
        return None
    rows.sort(key=lambda r: encodings.index(r["condition"]["encoding"]))
    lead = next(
        (
            r
            for r in rows
            if (r["condition"]["definition"], r["condition"]["examples"])
            == ("original", "original")
        ),
        rows[0],
    )
    return {"definition": dict(DEFINITION), "verdict": lead["reading"], "conditions": rows}
