"""Token distribution shift for ``decide``'s tuned methods (tuning sizes and format controls).

A tuned method's cell, answering by greedy generation (``--predict generate``, the
default), also ranks its answers' tokens under the untuned model
(:func:`token_rank_record`: one teacher-forced forward over prompt + answer, after the
adapter is unloaded). :func:`method_token_shift` turns that record into the method's
``token_shift`` in decide.json (:mod:`tunelens.measures.token_shift`): decide has one
task, so the shares are means over test *items* with intervals over items. Under
``--predict score`` no answer is generated and there is nothing to rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunelens.measures.token_shift import positions_of, shift_reading, summarise

__all__ = ["method_token_shift", "token_rank_record"]

TASK = "task"


def token_rank_record(
    loaded: Any, prompts: Sequence[str], outputs: Sequence[Sequence[int]], labels: Sequence[str]
) -> dict[str, Any]:
    """The untuned ``loaded`` model's ranks along a tuned method's answers (token ids)."""
    from tunelens.models.token_ranks import label_token_ids, ranked_samples, special_ids

    return {
        "samples": ranked_samples(loaded, prompts, outputs),
        "label_token_ids": sorted(label_token_ids(loaded.tokenizer, labels)),
        "special_ids": special_ids(loaded.tokenizer),
    }


def method_token_shift(
    record: Mapping[str, Any], name: str, *, seed: int, n_boot: int
) -> dict[str, Any] | None:
    """A tuned method's token-shift summary over test items (its reading included), or None
    without output tokens."""
    samples = [
        {**sample, "task": TASK, "item": str(i)} for i, sample in enumerate(record["samples"])
    ]
    positions, labels = positions_of(
        samples,
        {TASK: record["label_token_ids"]},
        set(record["special_ids"]),
        unit_key="item",
    )
    summary = summarise(positions, labels, n_boot=n_boot, seed=seed, unit="item")
    if summary is None:
        return None
    summary.pop("per_unit")  # one row per test item: the samples hold them
    summary["reading"] = shift_reading(summary, f"Tuning ({name})")
    return summary
