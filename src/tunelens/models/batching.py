"""Turning (prompt, target) text pairs into padded training batches.

A training pair is the prompt a model sees at inference time and the answer it
should produce (``render_target(output)`` = ``" " + output``). The loss belongs
on the answer only, so:

* **causal LMs**: ``input_ids`` = prompt tokens + target tokens, ``labels`` =
  -100 on every prompt and padding position and the token id on target
  positions (the model shifts nothing here: :func:`causal_lm_loss` compares
  position t's logits with token t+1).
* **encoder-decoders**: the encoder reads the prompt, ``labels`` are the target
  tokens (-100 on padding); the decoder input is the labels shifted right.

The prompt is tokenised on its own, exactly as at inference (special tokens
included, e.g. Llama's BOS), and the target separately without special tokens,
optionally followed by the end-of-sequence token so that a tuned model learns
to stop. Tokenising separately keeps the training prompt token-identical to the
prompt whose hidden states and predictions are measured.

Truncation policy: never. A pair that does not fit the model's context
(``max_position_embeddings`` / ``n_positions`` / ... where the config has one)
raises :class:`~tunelens.errors.TunelensInputError` naming the pair and the
lengths, because cutting the prompt changes the task and cutting the target
trains on a wrong answer.

Batches are padded on the right (positions then count from 0 without explicit
position ids); padding is told apart from text by ``attention_mask``, never by
the pad id, so a tokenizer whose pad token is its EOS token still learns EOS.

Padding-free batches (:func:`collate_packed`, multi-task tuning on causal LMs
whose attention takes a custom 4-D mask): a batch's sequences are packed side
by side into a few rows, each sequence a block of a block-diagonal causal mask
with its own positions from 0, so a row computes what its sequences compute
alone and no position is spent on padding beyond evening the rows out.

The loss (:func:`masked_lm_loss`, :func:`target_losses`) runs the LM head only
at the positions that predict a target token (``logits_to_keep``) where the
model takes it: the prompt's logits are never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tunelens.errors import TunelensInputError
from tunelens.models.last_block import last_block_positionwise, run_only_at
from tunelens.models.packing import PackedRow, attention_mask, model_mask, padded_row
from tunelens.models.wrappers import forward_takes, unwrap_model

IGNORE_INDEX = -100

# Config attributes that bound the number of positions a model can attend over.
_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one (prompt, target) pair, unpadded."""

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    name: str = ""


def context_length(model_or_config: Any) -> int | None:
    """The longest sequence the model can take, or None where the config sets no bound.

    Relative-position models (T5) have no bound in their config and get None.
    For encoder-decoders the bound applies to encoder and decoder separately.
    """
    config = getattr(model_or_config, "config", model_or_config)
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config):
        config = text_config()
    for attribute in _CONTEXT_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _pair_name(names: Sequence[str] | None, index: int) -> str:
    return names[index] if names is not None and names[index] else f"training pair {index}"


def _excerpt(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    kind: Literal["causal", "seq2seq"],
    add_eos: bool = True,
    max_length: int | None = None,
    names: Sequence[str] | None = None,
) -> list[EncodedPair]:
    """Tokenise pairs (prompt with special tokens, target without, + EOS if ``add_eos``).

    ``max_length`` is the model's context (see :func:`context_length`); a pair
    that does not fit raises TunelensInputError naming it (``names[i]``, e.g.
    ``"task/instance"``, or its index) and the token counts. A target with no
    tokens at all also raises: there would be nothing to learn from it.
    """
    if names is not None and len(names) != len(pairs):
        raise ValueError(f"{len(names)} names for {len(pairs)} pairs")
    eos = tokenizer.eos_token_id if add_eos else None
    prompts = [p for p, _ in pairs]
    targets = [t for _, t in pairs]
    prompt_ids = _tokenise_distinct(tokenizer, prompts, add_special_tokens=True)
    target_ids = _tokenise_distinct(tokenizer, targets, add_special_tokens=False)
    encoded = []
    for i, (p_ids, t_ids) in enumerate(zip(prompt_ids, target_ids, strict=True)):
        t_ids = list(t_ids) + ([eos] if eos is not None else [])
        name = _pair_name(names, i)
        if not t_ids:
            raise TunelensInputError(
                f"the target {_excerpt(targets[i])} tokenises to no tokens; nothing to learn",
                where=name,
            )
        if not p_ids:
            raise TunelensInputError(
                f"the prompt {_excerpt(prompts[i])} tokenises to no tokens", where=name
            )
        if max_length is not None:
            _check_fits(len(p_ids), len(t_ids), max_length, kind, name, prompts[i])
        encoded.append(EncodedPair(tuple(p_ids), tuple(t_ids), name))
    return encoded


def _tokenise_distinct(
    tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool
) -> list[list[int]]:
    """Token ids of ``texts`` from one tokenizer call over the distinct texts (a prompt
    scored against several labels, or a label shared by many prompts, is tokenised once)."""
    if not texts:
        return []
    distinct = list(dict.fromkeys(texts))
    ids = tokenizer(distinct, add_special_tokens=add_special_tokens)["input_ids"]
    by_text = dict(zip(distinct, ids, strict=True))
    return [by_text[text] for text in texts]


def _check_fits(
    n_prompt: int, n_target: int, max_length: int, kind: str, name: str, prompt: str
) -> None:
    """Raise when a pair would have to be cut to fit ``max_length`` tokens."""
    where_text = f"prompt {_excerpt(prompt)}"
    if kind == "seq2seq":
        if n_prompt > max_length:
            raise TunelensInputError(
                f"{where_text} is {n_prompt} tokens, longer than the model context of "
                f"{max_length}; tunelens never truncates (shorten the prompt, e.g. fewer "
                "demonstrations)",
                where=name,
            )
        if n_target > max_length:
            raise TunelensInputError(
                f"the target is {n_target} tokens, longer than the decoder context of "
                f"{max_length}; tunelens never truncates a target",
                where=name,
            )
        return
    if n_prompt + n_target > max_length:
        raise TunelensInputError(
            f"{where_text} is {n_prompt} tokens and its target {n_target}: {n_prompt + n_target} "
            f"in all, longer than the model context of {max_length}; tunelens never truncates "
            "(shorten the prompt, e.g. fewer demonstrations)",
            where=name,
        )


def _pad(rows: Sequence[Sequence[int]], value: int, width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate_causal(
    encoded: Sequence[EncodedPair], pad_id: int, *, width: int | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``labels`` for a causal LM, right-padded.

    ``labels`` holds the token id on target positions and -100 on prompt and
    padding positions. ``width`` pads to a fixed length (at least the longest row).
    """
    rows = [e.prompt_ids + e.target_ids for e in encoded]
    longest = max(len(r) for r in rows)
    width = max(longest, width or 0)
    input_ids = _pad(rows, pad_id, width)
    attention_mask = _pad([[1] * len(r) for r in rows], 0, width)
    labels = _pad(
        [[IGNORE_INDEX] * len(e.prompt_ids) + list(e.target_ids) for e in encoded],
        IGNORE_INDEX,
        width,
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(
    encoded: Sequence[EncodedPair], pad_id: int, *, capacity: int | None = None
) -> dict[str, torch.Tensor]:
    """A causal batch without padding: sequences packed into rows under a block-diagonal mask.

    Sequences (prompt + target) go into rows first-fit, longest first, up to
    ``capacity`` tokens a row (default: twice the longest sequence, which keeps
    the dense mask's extra attention small next to the padding it removes); the
    rows are padded to the longest row by one more block that sees only itself.
    Returns ``input_ids``, ``position_ids`` (from 0 in every sequence),
    ``labels`` (as :func:`collate_causal`; a sequence's first token never carries
    a loss, as it is predicted from another sequence's last) and a boolean
    ``attention_mask`` [rows, 1, width, width]
    (:func:`tunelens.models.packing.attention_mask`). Under that mask every token
    sees exactly the tokens before it in its own sequence, at the positions it
    has there, so the losses equal :func:`collate_causal`'s up to float rounding.
    """
    if not encoded:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(e.prompt_ids) + len(e.target_ids) for e in encoded]
    limit = max(max(lengths), capacity if capacity is not None else 2 * max(lengths))
    bins: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(encoded)), key=lambda i: (-lengths[i], i)):
        room = next((b for b, used in enumerate(fill) if used + lengths[i] <= limit), None)
        if room is None:
            bins.append([])
            fill.append(0)
            room = len(bins) - 1
        bins[room].append(i)
        fill[room] += lengths[i]
    width = max(fill)
    ids, positions, labels, masks = [], [], [], []
    for members in bins:
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_positions: list[int] = []
        segments: list[int] = []
        for segment, i in enumerate(members):
            e = encoded[i]
            row_ids += e.prompt_ids + e.target_ids
            sequence_labels = [IGNORE_INDEX] * len(e.prompt_ids) + list(e.target_ids)
            sequence_labels[0] = IGNORE_INDEX  # the padded path's shift drops it too
            row_labels += sequence_labels
            row_positions += range(lengths[i])
            segments += [segment] * lengths[i]
        row = padded_row(
            PackedRow(row_ids, row_positions, segments, [-1] * len(members), {}), width, pad_id
        )
        ids.append(row.ids)
        positions.append(row.positions)
        labels.append(row_labels + [IGNORE_INDEX] * (width - len(row_labels)))
        masks.append(attention_mask(row))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.cat(masks),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def collate_seq2seq(
    encoded: Sequence[EncodedPair], pad_id: int, *, width: int | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids`` + ``attention_mask`` (the prompt) and ``labels`` (the target, -100 padded)."""
    prompt_width = max(max(len(e.prompt_ids) for e in encoded), width or 0)
    target_width = max(len(e.target_ids) for e in encoded)
    return {
        "input_ids": _pad([e.prompt_ids for e in encoded], pad_id, prompt_width),
        "attention_mask": _pad([[1] * len(e.prompt_ids) for e in encoded], 0, prompt_width),
        "labels": _pad([e.target_ids for e in encoded], IGNORE_INDEX, target_width),
    }


def collate(
    encoded: Sequence[EncodedPair], pad_id: int, kind: Literal["causal", "seq2seq"]
) -> dict[str, torch.Tensor]:
    """The padded batch for ``kind`` (see :func:`collate_causal` / :func:`collate_seq2seq`)."""
    if not encoded:
        raise ValueError("cannot collate an empty batch")
    return collate_causal(encoded, pad_id) if kind == "causal" else collate_seq2seq(encoded, pad_id)


def decoder_inputs(model: Any, labels: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Decoder input ids for an encoder-decoder: the labels shifted right after the start token.

    Uses the model's own ``prepare_decoder_input_ids_from_labels`` where it has one
    (T5, BART), so the start token and the -100 handling are the model's.
    """
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return prepare(labels=labels)
    config = model.config
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise ValueError("the model config has no decoder_start_token_id")
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row sum of token negative log-likelihoods over labelled positions, in float32.

    Causal logits at position t predict the token at t+1; seq2seq logits are
    already aligned with their labels. Rows are kept apart so that callers can
    normalise per example set (batched many-set tuning) or per batch.
    """
    if kind == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    # Only labelled positions reach float32 and the softmax: logits are [batch, seq, vocab].
    rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    nll = torch.nn.functional.cross_entropy(
        logits[rows, cols].float(), labels[rows, cols], reduction="none"
    )
    return torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)


def label_counts(labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Number of positions that carry a loss, per row (the normaliser of :func:`token_losses`)."""
    if kind == "causal":
        labels = labels[:, 1:]
    return (labels != IGNORE_INDEX).sum(dim=1)


def forward_logits(model: Any, batch: dict[str, torch.Tensor], kind: str, pad_id: int) -> Any:
    """Logits of ``model`` on a collated batch (teacher forcing for encoder-decoders)."""
    if kind == "causal":
        return model(**_causal_inputs(model, batch), use_cache=False).logits
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_inputs(unwrap_model(model), batch["labels"], pad_id),
        use_cache=False,
    )
    return out.logits


def _causal_inputs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of a causal batch: ids, mask (a packed batch's 4-D mask as the
    model's attention takes it) and, for packed batches, position ids."""
    mask = batch["attention_mask"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
    if mask.dim() == 4:
        inputs["attention_mask"] = model_mask(mask, model)
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    return inputs


def target_losses(
    model: Any, labels: torch.Tensor, **inputs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed NLL of a causal LM's target tokens, and the targets per row.

    Logits at t predict the token at t + 1; where the model takes
    ``logits_to_keep``, the LM head runs only at the positions that predict a
    target in some row (the prompt's logits are never used), and so do the last
    block's MLP and query/output projections (:mod:`tunelens.models.last_block`).
    """
    counts = label_counts(labels, "causal")
    if not forward_takes(model, "logits_to_keep"):
        logits = model(**inputs).logits
        return token_losses(logits, labels, "causal"), counts
    keep = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    with run_only_at(last_block_positionwise(model), keep):
        logits = model(**inputs, logits_to_keep=keep).logits
    # already aligned: the "seq2seq" convention of token_losses shifts nothing
    return token_losses(logits, labels[:, keep + 1], "seq2seq"), counts


def masked_lm_loss(
    model: Any, batch: dict[str, torch.Tensor], kind: str, pad_id: int
) -> torch.Tensor:
    """Mean negative log-likelihood over the target tokens of a batch (loss on outputs only).

    Causal batches, padded or packed (:func:`collate_packed`), go through
    :func:`target_losses`.
    """
    labels = batch["labels"]
    if kind == "causal":
        losses, counts = target_losses(
            model, labels, **_causal_inputs(model, batch), use_cache=False
        )
        return losses.sum() / counts.sum().clamp(min=1)
    logits = forward_logits(model, batch, kind, pad_id)
    return token_losses(logits, labels, kind).sum() / label_counts(labels, kind).sum().clamp(min=1)
