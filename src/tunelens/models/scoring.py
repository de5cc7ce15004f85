"""Label scores: the log-likelihood of each label's whole continuation after the prompt.

A label is scored by the summed log-probability of its target text
(``render_target(label)`` = ``" " + label``) after the prompt, tokenised exactly
as a training target (:func:`tunelens.models.batching.encode_pairs`: the prompt
with special tokens, the target without), as lm-evaluation-harness's
``loglikelihood`` does. A label's first token alone does not stand for it: real
tokenizers split labels (SentencePiece and Qwen2 turn ``" 0"`` into a space
piece and ``"0"``), so first tokens collide and a label space of two would read
as one. The label distribution of a row is the softmax of its labels' summed
scores; the per-token (length-normalised) scores come alongside.

Cost near one forward: the labels of a prompt are continuations of the same
prefix, so causal models run the prompt batch once into a ``DynamicCache``
(left padding, position ids counted over real tokens) and each label index
then takes one short forward of its continuation tokens on that cache (cropped
back after each, or copied where the cache cannot be cropped), with every row
of the batch in it, so a batched-LoRA stack (one adapter per row) stays lined up.
A label of one token needs no continuation forward at all: the prompt forward's
last logits score it. Encoder-decoders run the encoder once and the decoder once
per label index (the start token, then the label's tokens).

Patching (:mod:`tunelens.models.patching`): the same block hooks record every
layer's state at the last prompt token and, with a patch, replace block L's
output there. Only the prompt forward is hooked; the continuation forwards read
the patched state through the cache, which makes the whole equal to one forward
over prompt + continuation with the patch at the last prompt position.

Rows without a label space (free-text tasks) get no label scores; their
next-token logits at the answer position come back in ``logits`` for the
caller's fallback.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

from tunelens.errors import TunelensInputError
from tunelens.models.batching import EncodedPair, context_length, encode_pairs
from tunelens.models.hidden_states import (
    accepts_position_ids,
    check_nonempty,
    decoder_start_id,
    last_real_index,
)
from tunelens.models.loading import LoadedModel
from tunelens.models.patching import block_modules, last_token_hooks, patch_source
from tunelens.models.predict import default_batch_tokens, pad_rows, token_batches
from tunelens.models.wrappers import forward_takes
from tunelens.prompts import render_target

__all__ = [
    "LabelScores",
    "check_distinct_labels",
    "merge_label_scores",
    "score_label_continuations",
    "score_labels",
]


@dataclass
class LabelScores:
    """Per-row label scores and the readings at the last prompt token.

    ``summed[i]`` / ``per_token[i]``: float64 ``[len(labels[i])]``, the summed and
    the per-token mean log-probability of each of row i's labels (empty for a
    row without labels). ``logits``: ``[n, vocab]`` float32 next-token logits at
    the last prompt token; ``states``: ``[n, layers, hidden]`` float32, every
    layer's state there (layer 0 = embeddings), as in
    :class:`tunelens.models.patching.LastToken`.
    """

    summed: list[np.ndarray]
    per_token: list[np.ndarray]
    logits: torch.Tensor
    states: torch.Tensor

    def log_distribution(self, row: int) -> np.ndarray:
        """Log of the softmax over row ``row``'s labels of their summed scores."""
        values = self.summed[row]
        return values - np.logaddexp.reduce(values) if len(values) else values


@dataclass
class _Row:
    prompt_ids: tuple[int, ...]
    targets: list[tuple[int, ...]]


def check_distinct_labels(
    targets: Sequence[Sequence[int]], labels: Sequence[str], task: str
) -> None:
    """Raise TunelensInputError where two of ``labels`` (of ``task``) have the same target
    token ids ``targets``: their scores would be equal whatever the model, so the label
    distribution could not tell them apart."""
    first: dict[tuple[int, ...], str] = {}
    for name, ids in zip(labels, targets, strict=True):
        key = tuple(ids)
        if key in first:
            raise TunelensInputError(
                f"labels {first[key]!r} and {name!r} tokenise to the same tokens {list(key)}: "
                "no score can tell them apart",
                where=f"task {task}",
            )
        first[key] = name


def _encode(
    loaded: LoadedModel,
    prompts: Sequence[str],
    labels: Sequence[Sequence[str]],
    include_eos: bool,
    tasks: Sequence[str] | None,
    distinct: bool = True,
) -> list[_Row]:
    """Each prompt's ids and its labels' target ids, tokenised as training pairs."""
    pairs, names, owner = [], [], []
    for i, (prompt, row_labels) in enumerate(zip(prompts, labels, strict=True)):
        where = tasks[i] if tasks is not None else f"prompt {i}"
        for label in row_labels:
            pairs.append((prompt, render_target(label)))
            names.append(f"{where}, label {label!r}")
            owner.append(i)
    encoded: list[EncodedPair] = encode_pairs(
        loaded.tokenizer,
        pairs,
        kind=loaded.kind,
        add_eos=include_eos,
        max_length=context_length(loaded.model),
        names=names,
    )
    rows: list[_Row | None] = [None] * len(prompts)
    for i, pair in zip(owner, encoded, strict=True):
        row = rows[i] or _Row(pair.prompt_ids, [])
        row.targets.append(pair.target_ids)
        rows[i] = row
    bare = [i for i, row in enumerate(rows) if row is None]
    if bare:  # rows without labels: the prompt alone, tokenised as encode_pairs does
        ids = loaded.tokenizer([prompts[i] for i in bare], add_special_tokens=True)["input_ids"]
        for i, row_ids in zip(bare, ids, strict=True):
            rows[i] = _Row(tuple(row_ids), [])
    out = [row for row in rows if row is not None]
    checked: set[tuple[str, ...]] = set()
    for i, (row, row_labels) in enumerate(zip(out, labels, strict=True)):
        if distinct and tuple(row_labels) not in checked:  # a task's label set is checked once
            checked.add(tuple(row_labels))
            where = tasks[i] if tasks else f"of prompt {i}"
            check_distinct_labels(row.targets, row_labels, where)
    return out


def _target_logp(logits: torch.Tensor, targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[rows]`` summed log-probabilities of ``targets[i]`` read at positions 0.. of row i."""
    width = logits.shape[1]
    index = torch.zeros((len(targets), width), dtype=torch.long)
    valid = torch.zeros((len(targets), width), dtype=torch.bool)
    for i, tokens in enumerate(targets):
        index[i, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
        valid[i, : len(tokens)] = True
    logp = logits.float().log_softmax(dim=-1)
    picked = logp.gather(-1, index.to(logp.device)[..., None]).squeeze(-1)
    return (picked * valid.to(picked.device)).sum(dim=1).double().cpu()


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _croppable(cache: Any) -> bool:
    """Whether cropping ``cache`` back restores it exactly (full-attention dynamic layers)."""
    layers = getattr(cache, "layers", None)
    return callable(getattr(cache, "crop", None)) and bool(
        layers and all(type(layer) is DynamicLayer for layer in layers)
    )


def _continuation(
    loaded: LoadedModel, cache: Any, prompt_mask: torch.Tensor, tails: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Logits ``[rows, width, vocab]`` of the continuation tokens ``tails`` on the prompt cache.

    Rows are padded on the right (a row with no tail is all padding); positions run
    on from each prompt's real length. The cache comes back as it was.
    """
    model = loaded.model
    ids, mask = pad_rows(tails, loaded.tokenizer.pad_token_id, "right", loaded.device)
    width = ids.shape[1]
    kwargs: dict[str, Any] = {}
    if accepts_position_ids(model):
        start = prompt_mask.long().sum(dim=1, keepdim=True)
        kwargs["position_ids"] = start + torch.arange(width, device=ids.device)
    crop = _croppable(cache)
    work = cache if crop else copy.deepcopy(cache)
    out = model(
        input_ids=ids,
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        cache=work,
        use_cache=True,
        **kwargs,
    )
    if crop:
        cache.crop(-width)
    return out.logits


def _causal_batch(
    loaded: LoadedModel,
    rows: Sequence[_Row],
    prompts: Sequence[str],
    blocks: Sequence[torch.nn.Module],
    patch: tuple[int, torch.Tensor] | None,
) -> tuple[list[list[float]], torch.Tensor, list[torch.Tensor | None]]:
    """Summed label scores, last-token logits and recorded states of one batch of rows."""
    model = loaded.model
    ids, mask = pad_rows(
        [r.prompt_ids for r in rows], loaded.tokenizer.pad_token_id, "left", loaded.device
    )
    check_nonempty(mask, prompts)
    index = torch.full((len(rows),), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
    kwargs: dict[str, Any] = {}
    if accepts_position_ids(model):
        kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    if forward_takes(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    record: list[torch.Tensor | None] = [None] * (len(blocks) + 1)
    with last_token_hooks(blocks, index, record, patch):
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
    first = out.logits[:, -1].float()
    logp = first.log_softmax(dim=-1).double().cpu()
    sums = [[float(logp[i, t[0]]) for t in row.targets] for i, row in enumerate(rows)]
    cache = _cache_of(out)
    for j in range(max(len(row.targets) for row in rows)):
        tails = [row.targets[j][:-1] if j < len(row.targets) else () for row in rows]
        if not any(tails):
            continue  # every row's label j is one token: the prompt's logits scored it
        logits = _continuation(loaded, cache, mask, tails)
        rest = _target_logp(
            logits,
            [row.targets[j][1:] if tail else () for row, tail in zip(rows, tails, strict=True)],
        )
        for i, tail in enumerate(tails):
            if tail:
                sums[i][j] += float(rest[i])
    return sums, first.cpu(), record


def _seq2seq_batch(
    loaded: LoadedModel,
    rows: Sequence[_Row],
    prompts: Sequence[str],
    blocks: Sequence[torch.nn.Module],
    patch: tuple[int, torch.Tensor] | None,
) -> tuple[list[list[float]], torch.Tensor, list[torch.Tensor | None]]:
    """The encoder once (hooked), then the decoder from its start token once per label index."""
    model = loaded.model
    pad = loaded.tokenizer.pad_token_id
    ids, mask = pad_rows([r.prompt_ids for r in rows], pad, "right", loaded.device)
    check_nonempty(mask, prompts)
    record: list[torch.Tensor | None] = [None] * (len(blocks) + 1)
    with last_token_hooks(blocks, last_real_index(mask), record, patch):
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    start = decoder_start_id(model)

    def decode(decoder_rows: Sequence[Sequence[int]]) -> torch.Tensor:
        dec, dec_mask = pad_rows(decoder_rows, pad, "right", loaded.device)
        return model(
            encoder_outputs=encoded,
            attention_mask=mask,
            decoder_input_ids=dec,
            decoder_attention_mask=dec_mask,
            use_cache=False,
        ).logits

    first = decode([(start,)] * len(rows))[:, 0].float()
    sums: list[list[float]] = [[] for _ in rows]
    for j in range(max(len(row.targets) for row in rows)):
        targets = [row.targets[j] if j < len(row.targets) else () for row in rows]
        logits = decode([(start, *t[:-1]) for t in targets])
        scores = _target_logp(logits, targets)
        for i, t in enumerate(targets):
            if t:
                sums[i].append(float(scores[i]))
    return sums, first.cpu(), record


def _batches(
    loaded: LoadedModel, rows: Sequence[_Row], batch_size: int | None, max_batch_tokens: int | None
) -> list[list[int]]:
    """Fixed batches in input order (``batch_size`` alone: a batched-LoRA stack lines up
    with them), else token-budget batches longest first (``token_batches``)."""
    longest = [max((len(t) for t in row.targets), default=0) for row in rows]
    widths = [
        (len(row.prompt_ids) + n,) if loaded.kind == "causal" else (len(row.prompt_ids), n + 1)
        for row, n in zip(rows, longest, strict=True)
    ]
    if loaded.kind == "causal" and not accepts_position_ids(loaded.model):
        return [[i] for i in range(len(rows))]  # no position ids: unpadded rows, one at a time
    if batch_size is not None and max_batch_tokens is None:
        return token_batches(range(len(rows)), widths, batch_size=batch_size)
    order = sorted(range(len(rows)), key=lambda i: (-sum(widths[i]), i))
    budget = (
        max_batch_tokens if max_batch_tokens is not None else default_batch_tokens(loaded.device)
    )
    return token_batches(order, widths, max_batch_tokens=budget, batch_size=batch_size)


@torch.no_grad()
def score_label_continuations(
    loaded: LoadedModel,
    prompts: Sequence[str],
    labels: Sequence[Sequence[str]],
    *,
    tasks: Sequence[str] | None = None,
    patch_layer: int | None = None,
    patch_states: torch.Tensor | None = None,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    include_eos: bool = False,
    distinct: bool = True,
) -> LabelScores:
    """Score row i's ``labels[i]`` as continuations of ``prompts[i]``; see the module doc.

    ``tasks[i]`` names row i's task in errors: two labels with one token sequence
    raise TunelensInputError naming the task and both labels (``distinct=False``
    lets them through with equal scores, for callers that read ties themselves). With
    ``patch_layer`` and ``patch_states`` (as in
    :func:`tunelens.models.patching.last_token_forward`) row i's state after
    block L at its last prompt token is replaced before the forward goes on, and
    the label continuations read it through the cache. ``include_eos`` appends
    the end-of-sequence token to every label ("the label, then stop").
    ``batch_size`` alone: fixed batches in input order; otherwise token-budget
    batches (:func:`~tunelens.models.predict.token_batches`).
    """
    prompts = list(prompts)
    labels = [list(row) for row in labels]
    if len(labels) != len(prompts):
        raise ValueError(f"{len(labels)} label lists for {len(prompts)} prompts")
    if tasks is not None and len(tasks) != len(prompts):
        raise ValueError(f"{len(tasks)} task names for {len(prompts)} prompts")
    source = patch_source(loaded, len(prompts), patch_layer, patch_states)
    if not prompts:
        empty: list[np.ndarray] = []
        return LabelScores(empty, [], torch.zeros((0, 0)), torch.zeros((0, 0, 0)))
    rows = _encode(loaded, prompts, labels, include_eos, tasks, distinct)
    blocks = block_modules(loaded)
    run = _seq2seq_batch if loaded.kind == "seq2seq" else _causal_batch
    sums: list[list[float]] = [[] for _ in rows]
    logits: list[torch.Tensor | None] = [None] * len(rows)
    states: list[torch.Tensor | None] = [None] * len(rows)
    was_training = loaded.model.training
    loaded.model.eval()
    try:
        for batch in _batches(loaded, rows, batch_size, max_batch_tokens):
            patch = (
                (patch_layer, source[batch])
                if source is not None and patch_layer is not None
                else None
            )
            part, first, record = run(
                loaded, [rows[i] for i in batch], [prompts[i] for i in batch], blocks, patch
            )
            if any(r is None for r in record):
                raise RuntimeError("a block hook did not fire: the block list is not the forward's")
            layered = torch.stack([r for r in record if r is not None], dim=1).float().cpu()
            for k, i in enumerate(batch):
                sums[i], logits[i], states[i] = part[k], first[k], layered[k]
    finally:
        loaded.model.train(was_training)
    summed = [np.asarray(s, dtype=np.float64) for s in sums]
    lengths = [np.asarray([len(t) for t in row.targets], dtype=np.float64) for row in rows]
    return LabelScores(
        summed=summed,
        per_token=[s / n if len(n) else s for s, n in zip(summed, lengths, strict=True)],
        logits=torch.stack([x for x in logits if x is not None]),
        states=torch.stack([x for x in states if x is not None]),
    )


def score_labels(
    loaded: LoadedModel,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    include_eos: bool = False,
) -> np.ndarray:
    """``[n_prompts, n_labels]`` float64 summed log-probabilities of ``" " + label`` after
    each prompt: :func:`score_label_continuations` with one label set for every row.

    Each prompt and each label is tokenised once (``encode_pairs`` tokenises
    distinct texts once), and a score is minus the tuning loss of that pair
    summed over its tokens. Labels with one token sequence get equal scores
    (decide reads such a tie as no answer).
    """
    if not labels:
        raise ValueError("score_labels needs at least one label")
    if not prompts:
        return np.zeros((0, len(labels)), dtype=np.float64)
    scores = score_label_continuations(
        loaded,
        prompts,
        [list(labels)] * len(prompts),
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        include_eos=include_eos,
        distinct=False,
    )
    return np.stack(scores.summed)


def merge_label_scores(parts: Sequence[tuple[Sequence[int], LabelScores]], n: int) -> LabelScores:
    """One :class:`LabelScores` of ``n`` rows from parts that each scored some of them
    (``parts[k] = (rows, scores)``: ``scores`` row r is row ``rows[r]``); every row once."""
    summed: list[np.ndarray | None] = [None] * n
    per_token: list[np.ndarray | None] = [None] * n
    logits: list[torch.Tensor | None] = [None] * n
    states: list[torch.Tensor | None] = [None] * n
    for rows, scores in parts:
        for r, i in enumerate(rows):
            summed[i], per_token[i] = scores.summed[r], scores.per_token[r]
            logits[i], states[i] = scores.logits[r], scores.states[r]
    missing = [i for i, s in enumerate(summed) if s is None]
    if missing:
        raise ValueError(f"rows {missing[:5]} were not scored")
    return LabelScores(
        summed=[s for s in summed if s is not None],
        per_token=[s for s in per_token if s is not None],
        logits=torch.stack([x for x in logits if x is not None]),
        states=torch.stack([x for x in states if x is not None]),
    )
