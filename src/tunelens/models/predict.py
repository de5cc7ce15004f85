"""Predictions for accuracy: greedy generation, and log-probabilities of label words.

:func:`generate_predictions` is what exact match and ROUGE-L are computed on:
greedy decoding (no sampling, one beam, whatever the model's generation
config says), so a prediction is a function of model and prompt. The answer is
the generated text up to the first newline, stripped: prompts end in
``Output:`` and every template separates examples with newlines, so the first
line is the answer and anything after it is the model starting a new example.
Generation stops early once every row has produced a newline or an
end-of-sequence token, which cannot change the first line.

:func:`score_labels` gives, for classification tasks, the summed
log-probability of each label continuation (``" " + label``, the training
target format), so accuracy can be read as the best-scoring label: a measure
that does not depend on the model stopping at the right place.

Prompts are batched in order of length (less padding) and results returned in
input order. Causal LMs are padded on the left for generation, so every row's
continuation starts at the same position; the model's own generation code
derives position ids from the attention mask. Nothing is truncated: a prompt
that leaves no room in the model's context raises TunelensInputError.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tunelens.errors import TunelensInputError
from tunelens.models.batching import (
    collate,
    context_length,
    encode_pairs,
    forward_logits,
    token_losses,
)
from tunelens.models.loading import LoadedModel

_NEWLINE_IDS: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()


def newline_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the non-special tokens whose text contains a newline (cached per tokenizer)."""
    try:
        return _NEWLINE_IDS[tokenizer]
    except (KeyError, TypeError):
        pass
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    found = tuple(i for i, text in zip(ids, texts, strict=True) if "\n" in text)
    with contextlib.suppress(TypeError):  # a tokenizer that takes no weak references
        _NEWLINE_IDS[tokenizer] = found
    return found


def first_line(text: str) -> str:
    """The text up to its first newline, stripped of surrounding whitespace."""
    return text.split("\n", 1)[0].strip()


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return []
    return list(configured) if isinstance(configured, list | tuple) else [int(configured)]


def _greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """The model's generation config made greedy, stopping at EOS or any newline token."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    stops = sorted(set(_eos_ids(model, tokenizer)) | set(newline_token_ids(tokenizer)))
    config.update(
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        max_length=None,
        min_new_tokens=None,
        min_length=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops or None,
    )
    return config


def _length_order(tokenizer: Any, prompts: Sequence[str]) -> tuple[list[int], list[int]]:
    """Prompt token lengths and the indices sorted by length (longest first)."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    return lengths, sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))


def _check_room(lengths: Sequence[int], limit: int | None, needed: int, kind: str) -> None:
    if limit is None:
        return
    for i, n in enumerate(lengths):
        total = n if kind == "seq2seq" else n + needed
        if total > limit:
            raise TunelensInputError(
                f"prompt is {n} tokens; with {needed} new tokens that exceeds the model context "
                f"of {limit} (tunelens never truncates a prompt: use fewer demonstrations or "
                "fewer new tokens)"
                if kind == "causal"
                else f"prompt is {n} tokens, longer than the model context of {limit} "
                "(tunelens never truncates a prompt)",
                where=f"prompt {i}",
            )


@torch.no_grad()
def generate_predictions(
    loaded: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations of ``prompts``, each cut at its first newline and stripped.

    Batched (left padding for causal LMs, right for encoder-decoders), returned
    in input order; special tokens are dropped from the text. Deterministic for
    a given model and prompt list.
    """
    if not prompts:
        return []
    model, tokenizer = loaded.model, loaded.tokenizer
    lengths, order = _length_order(tokenizer, prompts)
    if min(lengths) == 0:
        raise TunelensInputError(
            "prompt tokenises to no tokens", where=f"prompt {lengths.index(0)}"
        )
    _check_room(lengths, context_length(model), max_new_tokens, loaded.kind)
    config = _greedy_config(model, tokenizer, max_new_tokens)
    side = "left" if loaded.kind == "causal" else "right"
    was_training = model.training
    model.eval()
    results: list[str] = [""] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [prompts[i] for i in rows], return_tensors="pt", padding=True, padding_side=side
            ).to(loaded.device)
            output = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                generation_config=config,
            )
            new = output[:, batch["input_ids"].shape[1] :] if loaded.kind == "causal" else output
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in zip(rows, texts, strict=True):
                results[i] = first_line(text)
    finally:
        model.train(was_training)
    return results


@torch.no_grad()
def score_labels(
    loaded: LoadedModel,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 16,
    include_eos: bool = False,
) -> np.ndarray:
    """``[n_prompts, n_labels]`` summed log-probabilities of ``" " + label`` after each prompt.

    The continuation is tokenised exactly as a training target
    (:func:`tunelens.models.batching.encode_pairs`), so a score is minus the
    tuning loss of that pair summed over its tokens. ``include_eos`` adds the
    end-of-sequence token (scores "the label, then stop", which keeps a label
    that is a prefix of another from winning by being short). float64 array.
    """
    from tunelens.prompts import render_target

    if not labels:
        raise ValueError("score_labels needs at least one label")
    if not prompts:
        return np.zeros((0, len(labels)), dtype=np.float64)
    model, tokenizer = loaded.model, loaded.tokenizer
    pairs = [(p, render_target(label)) for p in prompts for label in labels]
    names = [f"prompt {i}, label {label!r}" for i in range(len(prompts)) for label in labels]
    encoded = encode_pairs(
        tokenizer,
        pairs,
        kind=loaded.kind,
        add_eos=include_eos,
        max_length=context_length(model),
        names=names,
    )
    order = sorted(
        range(len(encoded)),
        key=lambda i: (-len(encoded[i].prompt_ids) - len(encoded[i].target_ids), i),
    )
    scores = np.zeros(len(encoded), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = collate([encoded[i] for i in rows], tokenizer.pad_token_id, loaded.kind)
            batch = {k: v.to(loaded.device) for k, v in batch.items()}
            logits = forward_logits(model, batch, loaded.kind, tokenizer.pad_token_id)
            nll = token_losses(logits, batch["labels"], loaded.kind)
            scores[rows] = (-nll).double().cpu().numpy()
    finally:
        model.train(was_training)
    return scores.reshape(len(prompts), len(labels))
