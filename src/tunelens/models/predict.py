"""Predictions for accuracy: greedy generation, and log-probabilities of label words.

:func:`generate_predictions` is what exact match and ROUGE-L are computed on:
greedy decoding (no sampling, one beam, whatever the model's generation
config says), so a prediction is a function of model and prompt. The answer is
the generated text up to the first newline, stripped: prompts end in
``Output:`` and every template separates examples with newlines, so the first
line is the answer and anything after it is the model starting a new example.
Generation stops early once every row has produced a newline or an
end-of-sequence token, which cannot change the first line.

:func:`tunelens.models.scoring.score_labels` (built on this module's batching)
gives, for classification tasks, the summed log-probability of each label
continuation (``" " + label``, the training target format), so accuracy can be
read as the best-scoring label: a measure that does not depend on the model
stopping at the right place.

Batching: every prompt is tokenised once (one tokenizer call for the whole
list; the batches are padded from those ids), sorted by length (longest first,
less padding), and cut into batches by a **token budget**
(:func:`token_batches`): a batch takes rows while its padded size, rows x
(longest prompt + new tokens), stays within ``max_batch_tokens`` (default
:func:`default_batch_tokens`: 2,048 positions on a CPU, 16,384 on an
accelerator; at most :data:`MAX_BATCH_ROWS` rows), so short prompts share few
calls and long ones do not blow up memory. A caller that passes ``batch_size``
alone gets fixed batches of that many rows instead (the batched LoRA probe
lines its adapter stack up with one such batch). Results come back in input
order and do not depend on the batching (tests: token-budget batches give the
same greedy text as fixed batches of 2 and 16 on tiny random models).

Measured on this machine's 2 CPU cores, the audit's 2,028 world evaluation
prompts in both encodings (36-57 tokens, 4 new tokens, world model, one
thread, best of 3 in CPU time, load 2-3; two runs): fixed batches of 16 rows
5.38 / 4.77 s, 32 rows 5.72 / 4.23, 64 rows 5.45 / 5.46; budgets of 1,024
tokens 5.08 / 5.37, 2,048 4.87 / 5.09, 4,096 5.30 / 5.45, 8,192 6.17 / 6.69.
Between 16 rows and 4,096 tokens the differences are within the run-to-run
noise; 8,192 is slower (the CPU's caches), hence 2,048 on a CPU.

Causal LMs are padded on the left for generation, so every row's continuation
starts at the same position; the model's own generation code derives position
ids from the attention mask. Nothing is truncated: a prompt that leaves no room
in the model's context raises TunelensInputError.

Shared-prefix fast path (:mod:`tunelens.models.prefix_generation`, on unless
``share_prefix=False``): prompts that share a token prefix of at least
:data:`~tunelens.models.prefix_generation.MIN_PREFIX_TOKENS` (16) tokens, at
least :data:`~tunelens.models.prefix_generation.MIN_GROUP_PROMPTS` (2) of them
(decide's ICL prompts behind one demonstration set, the audit's Tk-Instruct
prompts of one task behind its definition and examples), are grouped by the
prefix tree, where a group saves enough to pay for its own calls
(``min_saved_tokens``, default the model's
:func:`~tunelens.models.prefix_generation.model_break_even`: about 220 saved
tokens on ``world``, 18 on a 20M-parameter model); each group's prefix runs once
into a ``DynamicCache``, and its
suffixes are generated in token-budget batches on copies of that cache repeated
to the batch, padded between prefix and suffix (mask 0) so positions run on
without a gap, as in the plain path. Same greedy text as the plain path (up to
float rounding: the prefix is computed in a batch of one). Everything else takes
the plain path: encoder-decoders, models whose cache is not a plain
full-attention ``DynamicCache`` (sliding-window, chunked, hybrid or linear
attention, a ``cache_implementation`` in the generation config, a model with its
own cache), attention other than eager or SDPA (flash and flex kernels handle
padding their own way), fixed batches (``batch_size`` alone: the batched LoRA
probe's one adapter per row), and prompts in no qualifying group.
Measured as above (process time, one thread, two interleaved repetitions, two
runs), the audit's 2,028 world:heldout Tk prompts with definition + 2 examples
(49-74 tokens, 40 groups sharing 47-72 of them, 4 new tokens): plain 9.9 / 10.4
and 11.1 / 11.6 s, fast path 2.1 / 2.5 and 3.0 / 2.7 s; definition only (31-56
tokens): plain 6.3 / 6.4 s, fast 2.2 / 2.1 s; identical predictions.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Collection, Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from tunelens.errors import TunelensInputError
from tunelens.models import prefix_generation
from tunelens.models.batching import context_length
from tunelens.models.loading import LoadedModel

# Padded positions (rows x (longest prompt + new tokens)) per generate / scoring call.
CPU_BATCH_TOKENS = 2048
ACCELERATOR_BATCH_TOKENS = 16384
MAX_BATCH_ROWS = 256


def default_batch_tokens(device: Any = "cpu") -> int:
    """The token budget of one evaluation batch on ``device`` (a torch device or its name)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    return CPU_BATCH_TOKENS if kind == "cpu" else ACCELERATOR_BATCH_TOKENS


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


def greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """The model's generation config made greedy, stopping at EOS or any newline token."""
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


def length_order(tokenizer: Any, prompts: Sequence[str]) -> tuple[list[int], list[int]]:
    """Prompt token lengths and the indices sorted by length (longest first)."""
    lengths = [len(ids) for ids in _tokenise(tokenizer, prompts)]
    return lengths, _longest_first(lengths)


def _tokenise(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of every prompt (special tokens included), one tokenizer call."""
    return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


def _longest_first(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def token_batches(
    order: Sequence[int],
    widths: Sequence[Sequence[int]],
    *,
    max_batch_tokens: int | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Consecutive runs of ``order`` (indices, usually longest first) that make one batch each.

    ``widths[i]`` are row i's lengths along each padded dimension (one for a
    causal LM: prompt + new tokens; two for an encoder-decoder: encoder and
    decoder). A batch's padded size is rows x the sum over dimensions of the
    longest row; a batch takes rows while that stays within
    ``max_batch_tokens`` and the rows within ``batch_size`` (a row longer than
    the budget goes alone). ``batch_size`` alone gives fixed batches of that many
    rows; neither gives :data:`CPU_BATCH_TOKENS` and :data:`MAX_BATCH_ROWS`.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
    if batch_size is not None and max_batch_tokens is None:
        return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    budget = max_batch_tokens if max_batch_tokens is not None else CPU_BATCH_TOKENS
    rows_cap = batch_size if batch_size is not None else MAX_BATCH_ROWS
    batches: list[list[int]] = []
    current: list[int] = []
    longest: list[int] = []
    for i in order:
        grown = (
            [max(a, b) for a, b in zip(longest, widths[i], strict=True)]
            if current
            else list(widths[i])
        )
        if current and (len(current) >= rows_cap or (len(current) + 1) * sum(grown) > budget):
            batches.append(current)
            current, grown = [], list(widths[i])
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, side: str, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``rows`` padded to the longest (as the
    tokenizer pads: ``pad_id`` and mask 0 on the ``side`` given)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        n = len(row)
        if side == "left":
            ids[j, width - n :] = torch.tensor(row, dtype=torch.long)
            mask[j, width - n :] = 1
        else:
            ids[j, :n] = torch.tensor(row, dtype=torch.long)
            mask[j, :n] = 1
    return ids.to(device), mask.to(device)


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


def _decode_batch(
    loaded: LoadedModel,
    rows: Sequence[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: Any,
    results: list[str],
    cache: Any = None,
    output_ids: list[list[int]] | None = None,
) -> None:
    """One ``generate`` call; each row's first line goes to ``results[rows[j]]`` (and its
    generated ids, cut after the first stop token, to ``output_ids[rows[j]]`` if given)."""
    extra = {} if cache is None else {"cache": cache}
    output = loaded.model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra
    )
    new = output[:, input_ids.shape[1] :] if loaded.kind == "causal" else output
    texts = loaded.tokenizer.batch_decode(new, skip_special_tokens=True)
    for i, text in zip(rows, texts, strict=True):
        results[i] = first_line(text)
    if output_ids is not None:
        generated = new if loaded.kind == "causal" else new[:, 1:]  # seq2seq: no start token
        stop = config.eos_token_id
        stops = {stop} if isinstance(stop, int) else set(stop or ())
        for i, row in zip(rows, generated.tolist(), strict=True):
            output_ids[i] = until_stop(row, stops)


def until_stop(ids: Sequence[int], stops: Collection[int]) -> list[int]:
    """``ids`` up to and including the first stop token (generation pads a finished row
    after it); all of them where none stops."""
    for j, token in enumerate(ids):
        if token in stops:
            return list(ids[: j + 1])
    return list(ids)


def shared_prefix_batches(
    ids: Sequence[Sequence[int]],
    widths: Sequence[Sequence[int]],
    *,
    max_batch_tokens: int | None,
    batch_size: int | None = None,
    min_saved_tokens: int = 0,
) -> list[tuple[prefix_generation.PrefixGroup, list[list[int]]]]:
    """The fast path's plan: each qualifying prefix group with its batches (longest first).

    Groups save at least ``min_saved_tokens`` prefix tokens each
    (:func:`~tunelens.models.prefix_generation.plan_groups`). Within a group the
    batches are :func:`token_batches` over the same widths as the plain path
    (prefix + suffix + new tokens per row: what the expanded cache holds).
    :func:`generate_predictions` runs this plan; ``tunelens plan`` counts it.
    """
    plan = []
    for group in prefix_generation.plan_groups(ids, min_saved=min_saved_tokens):
        order = sorted(group.members, key=lambda i: (-len(ids[i]), i))
        batches = token_batches(
            order, widths, max_batch_tokens=max_batch_tokens, batch_size=batch_size
        )
        plan.append((group, batches))
    return plan


def _generate_shared(
    loaded: LoadedModel,
    ids: Sequence[Sequence[int]],
    widths: Sequence[Sequence[int]],
    config: Any,
    max_batch_tokens: int | None,
    batch_size: int | None,
    results: list[str],
    min_saved_tokens: int,
    output_ids: list[list[int]] | None = None,
) -> set[int]:
    """The fast path: every qualifying prefix group generated on its cached prefix
    (:func:`shared_prefix_batches`). Returns the prompts done; the rest are the plain path's.
    """
    model = loaded.model
    done: set[int] = set()
    plan = shared_prefix_batches(
        ids,
        widths,
        max_batch_tokens=max_batch_tokens,
        batch_size=batch_size,
        min_saved_tokens=min_saved_tokens,
    )
    for group, batches in plan:
        cache = prefix_generation.prefix_cache(
            model, ids[group.members[0]][: group.prefix_length], loaded.device
        )
        if cache is None:
            continue
        for rows in batches:
            input_ids, attention_mask = prefix_generation.group_inputs(
                group.prefix_length,
                [ids[i] for i in rows],
                loaded.tokenizer.pad_token_id,
                loaded.device,
            )
            _decode_batch(
                loaded,
                rows,
                input_ids,
                attention_mask,
                config,
                results,
                prefix_generation.expanded(cache, len(rows)),
                output_ids,
            )
        done.update(group.members)
    return done


@torch.no_grad()
def generate_predictions(
    loaded: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int | None = None,
    *,
    max_batch_tokens: int | None = None,
    token_ids: Sequence[Sequence[int]] | None = None,
    share_prefix: bool = True,
    min_saved_tokens: int | None = None,
    output_ids: list[list[int]] | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts``, each cut at its first newline and stripped.

    Batched by :func:`token_batches` (``max_batch_tokens`` padded positions,
    default :func:`default_batch_tokens` of the model's device; ``batch_size`` alone: fixed batches
    of that many rows), left padding for causal LMs, right for
    encoder-decoders; returned in input order; special tokens are dropped from
    the text. Each prompt is tokenised once; ``token_ids`` (the prompts' ids,
    special tokens included, as ``tokenizer(prompts)`` gives them) skips even
    that. Deterministic for a given model and prompt list.

    ``share_prefix`` (default on): prompts that share a long token prefix are
    generated on that prefix computed once (the module docstring says when;
    same greedy text), where a group saves at least ``min_saved_tokens`` tokens
    (default: the model's break-even). Off, or with fixed batches (``batch_size``
    alone), every prompt takes the plain path.

    ``output_ids`` (a list, emptied first): receives each prompt's generated token ids in
    input order, up to and including the first stop token (EOS or a newline token), so a
    caller can read the output exactly as the model chose it (token distribution shift,
    :mod:`tunelens.models.token_ranks`) rather than re-tokenising its text.
    """
    if not prompts:
        return []
    model = loaded.model
    ids, lengths = _checked_ids(loaded, prompts, token_ids, max_new_tokens)
    config = greedy_config(model, loaded.tokenizer, max_new_tokens)
    widths = (
        [(n + max_new_tokens,) for n in lengths]
        if loaded.kind == "causal"
        else [(n, max_new_tokens) for n in lengths]
    )
    fast = _takes_fast_path(loaded, config, share_prefix, batch_size, max_batch_tokens)
    if max_batch_tokens is None and batch_size is None:
        max_batch_tokens = default_batch_tokens(loaded.device)
    was_training = model.training
    model.eval()
    results: list[str] = [""] * len(prompts)
    if output_ids is not None:
        output_ids[:] = [[] for _ in prompts]
    try:
        if fast and min_saved_tokens is None:
            min_saved_tokens = prefix_generation.model_break_even(model)
        done = (
            _generate_shared(
                loaded,
                ids,
                widths,
                config,
                max_batch_tokens,
                batch_size,
                results,
                min_saved_tokens or 0,
                output_ids,
            )
            if fast
            else set()
        )
        rest = [i for i in _longest_first(lengths) if i not in done]
        _generate_plain(
            loaded, ids, rest, widths, config, max_batch_tokens, batch_size, results, output_ids
        )
    finally:
        model.train(was_training)
    return results


def _checked_ids(
    loaded: LoadedModel,
    prompts: Sequence[str],
    token_ids: Sequence[Sequence[int]] | None,
    max_new_tokens: int,
) -> tuple[list[list[int]], list[int]]:
    """Every prompt's token ids (``token_ids`` as given, else tokenised once) and their
    lengths; a prompt of no tokens, or one with no room for the new tokens, is refused."""
    if token_ids is not None and len(token_ids) != len(prompts):
        raise ValueError(f"{len(token_ids)} token id lists for {len(prompts)} prompts")
    ids = (
        [list(t) for t in token_ids]
        if token_ids is not None
        else _tokenise(loaded.tokenizer, prompts)
    )
    lengths = [len(row) for row in ids]
    if min(lengths) == 0:
        raise TunelensInputError(
            "prompt tokenises to no tokens", where=f"prompt {lengths.index(0)}"
        )
    _check_room(lengths, context_length(loaded.model), max_new_tokens, loaded.kind)
    return ids, lengths


def _takes_fast_path(
    loaded: LoadedModel,
    config: Any,
    share_prefix: bool,
    batch_size: int | None,
    max_batch_tokens: int | None,
) -> bool:
    """Whether shared prefixes are generated once (:func:`_generate_shared`).

    Fixed batches keep the plain path: the batched LoRA probe lines one adapter per row
    up with its batch, which a prefix group's batches would not respect.
    """
    return (
        share_prefix
        and loaded.kind == "causal"
        and not (batch_size is not None and max_batch_tokens is None)
        and prefix_generation.supports_prefix_cache(loaded.model, config)
    )


def _generate_plain(
    loaded: LoadedModel,
    ids: Sequence[Sequence[int]],
    order: Sequence[int],
    widths: Sequence[Sequence[int]],
    config: Any,
    max_batch_tokens: int | None,
    batch_size: int | None,
    results: list[str],
    output_ids: list[list[int]] | None = None,
) -> None:
    """The prompts ``order`` names, in padded batches (:func:`token_batches`), left padding
    for causal LMs, right for encoder-decoders; each one's text goes to ``results``."""
    side = "left" if loaded.kind == "causal" else "right"
    batches = token_batches(order, widths, max_batch_tokens=max_batch_tokens, batch_size=batch_size)
    for rows in batches:
        input_ids, attention_mask = pad_rows(
            [ids[i] for i in rows], loaded.tokenizer.pad_token_id, side, loaded.device
        )
        _decode_batch(
            loaded, rows, input_ids, attention_mask, config, results, output_ids=output_ids
        )
