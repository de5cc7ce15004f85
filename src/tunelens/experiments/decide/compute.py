"""Compute per 1,000 items: prompt tokens and FLOPs of each method, and tuning's one-off cost.

Token counts are measured with the model's tokenizer on the prompts ``decide``
actually ran. FLOPs follow :mod:`tunelens.measures.flops` (Kaplan et al. 2020,
Table 1) with N = non-embedding parameters (from the model's config.json, as
``tunelens plan`` reads it), L layers and d the attention width:

* a forward pass over a sequence of T tokens costs ``2 N T + L d T (T + 1)``:
  2N per token for the weights, plus attention to the t earlier positions at
  each position t (2 L d t); generating the answer with a key/value cache costs
  the same as one pass over prompt + answer;
* training costs three forward passes (forward + backward) per pair each time
  the pair is used: ``3 x forward(prompt + target)``, summed over the steps of
  the tuning schedule. This is the full-fine-tuning figure; LoRA skips the
  weight gradients of the frozen base, so it is an upper bound there (by about
  a third).

These are estimates for comparing methods on one model, not measurements of
wall time. Tuning pays once and then runs short prompts; ICL pays for its
demonstrations in every prompt; :func:`break_even_items` says after how many
items the one-off cost is paid back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelens.measures import flops as _flops
from tunelens.measures.flops import ModelShape, forward_flops

__all__ = [
    "ModelShape",
    "break_even_items",
    "compute_entry",
    "forward_flops",
    "inference_per_1000",
    "pair_uses",
    "training_flops",
]


def inference_per_1000(
    prompt_tokens: Sequence[int], answer_tokens: float, shape: ModelShape
) -> dict[str, float]:
    """Per 1,000 items like these: prompt tokens, answer tokens, FLOPs (mean over the items)."""
    lengths = np.asarray(prompt_tokens, dtype=np.float64)
    if lengths.size == 0:
        return {
            "prompt_tokens_per_item": float("nan"),
            "prompt_tokens": float("nan"),
            "answer_tokens": float("nan"),
            "flops": float("nan"),
        }
    flops = np.mean([forward_flops(n + answer_tokens, shape) for n in lengths])
    return {
        "prompt_tokens_per_item": float(lengths.mean()),
        "prompt_tokens": float(1000.0 * lengths.mean()),
        "answer_tokens": float(1000.0 * answer_tokens),
        "flops": float(1000.0 * flops),
    }


def training_flops(
    pair_tokens: Sequence[int], uses: Sequence[int], shape: ModelShape
) -> dict[str, float]:
    """One-off tuning cost: tokens processed and 3 x forward FLOPs, each pair times its uses."""
    if len(pair_tokens) != len(uses):
        raise ValueError(f"{len(pair_tokens)} pair lengths for {len(uses)} use counts")
    tokens = float(sum(n * u for n, u in zip(pair_tokens, uses, strict=True)))
    flops = float(
        sum(_flops.training_flops(n, shape) * u for n, u in zip(pair_tokens, uses, strict=True))
    )
    return {"tokens": tokens, "flops": flops}


def pair_uses(n_pairs: int, steps: Sequence[Sequence[int]]) -> list[int]:
    """How often each pair is used by a schedule of steps (lists of pair indices)."""
    uses = [0] * n_pairs
    for step in steps:
        for i in step:
            uses[i] += 1
    return uses


def break_even_items(
    one_off_flops: float, per_item_flops: float, other_per_item_flops: float
) -> float | None:
    """Items after which paying ``one_off_flops`` up front and ``per_item_flops`` per item
    costs less than ``other_per_item_flops`` per item; None when it never does."""
    saving = other_per_item_flops - per_item_flops
    if saving <= 0:
        return None
    return one_off_flops / saving


def compute_entry(
    prompt_tokens: Sequence[int],
    answer_tokens: float,
    shape: ModelShape,
    training: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The ``compute`` block of one method in decide.json."""
    entry: dict[str, Any] = {
        "per_1000_items": inference_per_1000(prompt_tokens, answer_tokens, shape)
    }
    if training is not None:
        entry["training"] = training
    return entry
