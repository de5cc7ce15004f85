"""Teacher-forced ranks: where each token of a given output sits in a model's next-token order.

Token distribution shift (Lin et al., "The Unlocking Spell on Base LLMs", 2023;
:mod:`tunelens.measures.token_shift`) asks, along a *tuned* model's greedy output,
how the *untuned* model ranks each token given the same prefix (prompt and the
output tokens before it). That is one teacher-forced forward of the untuned model
over prompt + output, not a generation: every output position is read from the
same forward.

:func:`teacher_forced_ranks` returns, per output token, its rank (1 + the number of
vocabulary tokens with a strictly higher logit, so ties count in the token's
favour) and the model's own top-1 token there. Three paths, same numbers (within
float rounding of the logits):

- packed (causal LMs that take a custom 4-D mask, :func:`tunelens.models.hidden_states.packable`):
  the sequences go into rows of :func:`tunelens.models.packing.pack_rows`, so the
  prompts' shared prefix (a task's definition and examples) runs once per row; the
  LM head runs only at the positions that predict an output token
  (``logits_to_keep``, where the model takes it);
- padded (other causal LMs): right-padded batches of whole sequences
  (:func:`tunelens.models.predict.token_batches`);
- encoder-decoders: the prompt into the encoder, the decoder start token then the
  output (shifted right) into the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunelens.models.hidden_states import decoder_start_id, packable, sliding_window
from tunelens.models.last_block import last_block_positionwise, run_only_at
from tunelens.models.loading import LoadedModel
from tunelens.models.packing import PackedRow, attention_mask, model_mask, pack_rows
from tunelens.models.predict import default_batch_tokens, pad_rows, token_batches
from tunelens.models.wrappers import forward_takes, unwrap_model
from tunelens.prompts import render_target

__all__ = [
    "TokenRanks",
    "label_token_ids",
    "rank_of",
    "ranked_samples",
    "special_ids",
    "teacher_forced_ranks",
    "token_texts",
]


@dataclass(frozen=True)
class TokenRanks:
    """Per sequence, per output token: its rank under the model and the model's top-1 id."""

    ranks: list[list[int]]
    top_ids: list[list[int]]


def rank_of(logits: torch.Tensor, targets: torch.Tensor) -> tuple[list[int], list[int]]:
    """Ranks (1 = the model's top-1; ties in the target's favour) of ``targets`` [n] in
    ``logits`` [n, vocab], and the top-1 ids."""
    scores = logits.float()
    target = scores.gather(1, targets[:, None])
    ranks = (scores > target).sum(dim=1) + 1
    return ranks.tolist(), scores.argmax(dim=1).tolist()


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's own text (decoded alone, special tokens kept, spaces as the tokenizer
    writes them)."""
    return [str(t) for t in tokenizer.batch_decode([[i] for i in ids])] if ids else []


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> set[int]:
    """Ids of the tokens a label is written with: each label tokenised as its answer
    (``" " + label``, :func:`tunelens.prompts.render_target`) and alone, leaving out pieces
    that are only whitespace (SentencePiece's lone space before a digit is the separator,
    not the label)."""
    texts = [text for label in labels for text in (render_target(label), label)]
    if not texts:
        return set()
    ids = {int(i) for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in row}
    ordered = sorted(ids)
    return {
        i for i, text in zip(ordered, token_texts(tokenizer, ordered), strict=True) if text.strip()
    }


def ranked_samples(
    loaded: LoadedModel, prompts: Sequence[str], output_ids: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """Per prompt, what a token-shift record keeps: ``output_ids``, ``output_texts``,
    ``base_ranks`` and ``base_top_ids`` (``loaded`` is the untuned model; the prompts are
    tokenised as generation tokenised them, special tokens included)."""
    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    ranked = teacher_forced_ranks(loaded, prompt_ids, output_ids)
    return [
        {
            "output_ids": [int(i) for i in out],
            "output_texts": token_texts(tokenizer, out),
            "base_ranks": ranks,
            "base_top_ids": tops,
        }
        for out, ranks, tops in zip(output_ids, ranked.ranks, ranked.top_ids, strict=True)
    ]


def special_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's special token ids, sorted (format tokens wherever they appear)."""
    return sorted({int(i) for i in tokenizer.all_special_ids})


def _check(prompt_ids: Sequence[Sequence[int]], output_ids: Sequence[Sequence[int]]) -> None:
    if len(prompt_ids) != len(output_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(output_ids)} outputs")
    for i, prompt in enumerate(prompt_ids):
        if not prompt:
            raise ValueError(f"prompt {i} has no tokens")


@torch.no_grad()
def teacher_forced_ranks(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    *,
    max_tokens: int | None = None,
) -> TokenRanks:
    """Rank of every output token under ``loaded`` given its prompt and the output before it.

    ``prompt_ids[i]`` (special tokens included, as the prompt was generated from) and
    ``output_ids[i]`` (the generated tokens; may be empty) of each sequence. One
    teacher-forced forward per packed row or padded batch (see the module); ``max_tokens``
    caps a packed row (default: :func:`~tunelens.models.packing.row_budget`). The model is
    left in the mode it was in.
    """
    _check(prompt_ids, output_ids)
    model = loaded.model
    was_training = model.training
    model.eval()
    ranks: list[list[int]] = [[] for _ in prompt_ids]
    tops: list[list[int]] = [[] for _ in prompt_ids]
    todo = [i for i, out in enumerate(output_ids) if out]
    try:
        if not todo:
            pass
        elif loaded.kind == "seq2seq":
            _seq2seq(loaded, prompt_ids, output_ids, todo, ranks, tops)
        elif _packs(loaded, prompt_ids, output_ids):
            _packed(loaded, prompt_ids, output_ids, todo, ranks, tops, max_tokens)
        else:
            _padded(loaded, prompt_ids, output_ids, todo, ranks, tops)
    finally:
        model.train(was_training)
    return TokenRanks(ranks, tops)


def _packs(
    loaded: LoadedModel, prompt_ids: Sequence[Sequence[int]], output_ids: Sequence[Sequence[int]]
) -> bool:
    """Whether packed rows compute these sequences exactly (as ``capture_packed`` decides)."""
    if not packable(loaded):
        return False
    window = sliding_window(unwrap_model(loaded.model).config)
    longest = max(len(p) + len(o) for p, o in zip(prompt_ids, output_ids, strict=True))
    return window is None or longest <= window


def _segment_spans(row: PackedRow) -> dict[int, range]:
    """Row indices of each segment's tokens (a segment's tokens are contiguous)."""
    spans: dict[int, range] = {}
    start = 0
    for index in range(1, len(row.segments) + 1):
        if index == len(row.segments) or row.segments[index] != row.segments[start]:
            spans[row.segments[start]] = range(start, index)
            start = index
    return spans


def _sequence_indices(row: PackedRow, sequence: int, spans: dict[int, range]) -> list[int]:
    """Row index of every token of ``sequence`` (captured in ``row``), first token first."""
    chain = []
    segment = row.segments[row.ends[sequence]]
    while segment >= 0:
        chain.append(segment)
        segment = row.parents[segment]
    return [index for seg in reversed(chain) for index in spans[seg]]


def _row_queries(
    row: PackedRow, prompt_ids: Sequence[Sequence[int]], output_ids: Sequence[Sequence[int]]
) -> list[tuple[int, int, int]]:
    """(sequence, row index that predicts its j-th output token, target id) for every
    output token of the sequences the row captures."""
    spans = _segment_spans(row)
    queries = []
    for sequence in row.ends:
        indices = _sequence_indices(row, sequence, spans)
        start = len(prompt_ids[sequence])
        if len(indices) != start + len(output_ids[sequence]):  # the packing's own invariant
            raise RuntimeError(f"packed row lost tokens of sequence {sequence}")
        for j, target in enumerate(output_ids[sequence]):
            queries.append((sequence, indices[start + j - 1], int(target)))
    return queries


def _logits_at(model: Any, index: torch.Tensor, **inputs: Any) -> torch.Tensor:
    """Logits [rows, len(index), vocab] at sequence positions ``index``: the last block's
    position-wise work (:mod:`tunelens.models.last_block`) and the LM head run only there
    where the model allows it (``logits_to_keep``)."""
    with run_only_at(last_block_positionwise(model), index):
        if forward_takes(model, "logits_to_keep"):
            return model(**inputs, logits_to_keep=index, use_cache=False).logits
        return model(**inputs, use_cache=False).logits[:, index]


def _packed(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    todo: Sequence[int],
    ranks: list[list[int]],
    tops: list[list[int]],
    max_tokens: int | None,
) -> None:
    device = loaded.device
    prompts = [prompt_ids[i] for i in todo]
    outputs = [output_ids[i] for i in todo]
    sequences = [list(p) + list(o) for p, o in zip(prompts, outputs, strict=True)]
    hidden = int(getattr(unwrap_model(loaded.model).config, "hidden_size", 1024))
    for row in pack_rows(sequences, max_tokens, hidden_size=hidden):
        queries = _row_queries(row, prompts, outputs)
        if not queries:
            continue
        positions = sorted({q[1] for q in queries})
        column = {p: c for c, p in enumerate(positions)}
        logits = _logits_at(
            loaded.model,
            torch.tensor(positions, dtype=torch.long, device=device),
            input_ids=torch.tensor([row.ids], dtype=torch.long, device=device),
            attention_mask=model_mask(attention_mask(row, device), loaded.model),
            position_ids=torch.tensor([row.positions], dtype=torch.long, device=device),
        )[0]
        picked = logits[[column[q[1]] for q in queries]]
        targets = torch.tensor([q[2] for q in queries], dtype=torch.long, device=picked.device)
        found, best = rank_of(picked, targets)
        for (sequence, _, _), rank, top in zip(queries, found, best, strict=True):
            ranks[todo[sequence]].append(int(rank))
            tops[todo[sequence]].append(int(top))


def _padded(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    todo: Sequence[int],
    ranks: list[list[int]],
    tops: list[list[int]],
) -> None:
    """Right-padded batches of whole sequences (positions then run from 0 in every row)."""
    sequences = {i: list(prompt_ids[i]) + list(output_ids[i]) for i in todo}
    order = sorted(todo, key=lambda i: (-len(sequences[i]), i))
    widths = {i: (len(sequences[i]),) for i in todo}
    pad = loaded.tokenizer.pad_token_id or 0
    budget = default_batch_tokens(loaded.device)
    width_list = [widths.get(i, (0,)) for i in range(len(prompt_ids))]
    for rows in token_batches(order, width_list, max_batch_tokens=budget):
        ids, mask = pad_rows([sequences[i] for i in rows], pad, "right", loaded.device)
        first = min(len(prompt_ids[i]) - 1 for i in rows)
        last = max(len(sequences[i]) - 2 for i in rows)
        index = torch.arange(first, last + 1, device=loaded.device)
        logits = _logits_at(loaded.model, index, input_ids=ids, attention_mask=mask)
        for j, i in enumerate(rows):
            start = len(prompt_ids[i]) - 1 - first
            picked = logits[j, start : start + len(output_ids[i])]
            targets = torch.tensor(list(output_ids[i]), dtype=torch.long, device=picked.device)
            ranks[i], tops[i] = rank_of(picked, targets)


def _seq2seq(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    todo: Sequence[int],
    ranks: list[list[int]],
    tops: list[list[int]],
) -> None:
    """The prompt into the encoder; the start token and the output, shifted right, into the
    decoder: decoder position j predicts output token j."""
    start = decoder_start_id(loaded.model)
    pad = loaded.tokenizer.pad_token_id or 0
    order = sorted(todo, key=lambda i: (-len(prompt_ids[i]), i))
    widths = [(len(prompt_ids[i]), len(output_ids[i])) for i in range(len(prompt_ids))]
    budget = default_batch_tokens(loaded.device)
    for rows in token_batches(order, widths, max_batch_tokens=budget):
        ids, mask = pad_rows([prompt_ids[i] for i in rows], pad, "right", loaded.device)
        decoder = [[start, *list(output_ids[i])[:-1]] for i in rows]
        decoder_ids, decoder_mask = pad_rows(decoder, pad, "right", loaded.device)
        logits = loaded.model(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=decoder_mask,
            use_cache=False,
        ).logits
        for j, i in enumerate(rows):
            picked = logits[j, : len(output_ids[i])]
            targets = torch.tensor(list(output_ids[i]), dtype=torch.long, device=picked.device)
            ranks[i], tops[i] = rank_of(picked, targets)
