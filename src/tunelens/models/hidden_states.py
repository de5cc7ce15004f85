"""Hidden states at the last prompt token, at every layer, in one batched forward.

Layer layout of the returned ``[prompts, layers, hidden]`` float32 tensor:

* causal LMs: ``output_hidden_states`` of the model, i.e. index 0 = token
  embeddings, index i = the residual stream after block i; ``layers =
  num_hidden_layers + 1``. As everywhere in transformers, the last entry is
  taken after the model's final norm (Llama, GPT-2, Qwen2 all do this).
* encoder-decoders: the encoder's states at the last non-pad encoder token
  (embeddings + each block, e.g. T5's ``</s>``), followed by the decoder's states
  at the decoder start token (embeddings + each block), so ``layers =
  (encoder layers + 1) + (decoder layers + 1)``. Encoder and decoder must share
  the hidden size (true for T5, BART, ...).

Padding: the last real token of each row is found from the attention mask, and
causal models receive position ids counted over real tokens only, so left and
right padding both give the same states as one unpadded prompt.

The shared-prefix variant computes a common prefix (the demonstrations of an
ICL prompt set) once, keeps its key/value cache (``transformers.DynamicCache``)
and runs only the suffixes, batched; see :func:`capture_with_shared_prefix`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from tunelens.errors import DivergedError
from tunelens.models.loading import LoadedModel


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (for signature checks)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _accepts_position_ids(model: torch.nn.Module) -> bool:
    parameters = inspect.signature(_base_model(model).forward).parameters
    return "position_ids" in parameters


def _last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a [batch, seq] mask (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def _gather(states: Sequence[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """[batch, layers, hidden] from per-layer [batch, seq, hidden] at one position per row."""
    rows = torch.arange(index.shape[0], device=index.device)
    return torch.stack([h[rows, index] for h in states], dim=1)


def _check_nonempty(attention_mask: torch.Tensor, prompts: Sequence[str]) -> None:
    empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prompt {prompts[empty[0]]!r} tokenizes to no tokens")


def _causal_batch(loaded: LoadedModel, prompts: list[str]) -> torch.Tensor:
    model, tokenizer = loaded.model, loaded.tokenizer
    with_positions = _accepts_position_ids(model)
    # Without position ids, left padding would shift positions: pad right instead.
    side = None if with_positions else "right"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side=side)
    ids = batch["input_ids"].to(loaded.device)
    mask = batch["attention_mask"].to(loaded.device)
    _check_nonempty(mask, prompts)
    kwargs = {}
    if with_positions:
        kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False, **kwargs
    )
    return _gather(out.hidden_states, _last_real_index(mask))


def _decoder_start_id(model: torch.nn.Module) -> int:
    config: Any = _base_model(model).config
    for source in (config, getattr(model, "generation_config", None)):
        value = getattr(source, "decoder_start_token_id", None) if source is not None else None
        if value is not None:
            return int(value)
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    raise ValueError("the model config has no decoder_start_token_id (nor pad_token_id)")


def _seq2seq_batch(loaded: LoadedModel, prompts: list[str]) -> torch.Tensor:
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    ids = batch["input_ids"].to(loaded.device)
    mask = batch["attention_mask"].to(loaded.device)
    _check_nonempty(mask, prompts)
    start = torch.full(
        (ids.shape[0], 1), _decoder_start_id(model), dtype=torch.long, device=loaded.device
    )
    out = model(
        input_ids=ids,
        attention_mask=mask,
        decoder_input_ids=start,
        output_hidden_states=True,
        use_cache=False,
    )
    encoder = _gather(out.encoder_hidden_states, _last_real_index(mask))
    decoder = _gather(out.decoder_hidden_states, torch.zeros_like(start[:, 0]))
    return torch.cat([encoder, decoder], dim=1)


@torch.no_grad()
def capture_last_token_states(
    loaded: LoadedModel, prompts: list[str], batch_size: int = 16
) -> torch.Tensor:
    """Residual stream at each prompt's last token, every layer: float32 [prompts, layers, hidden].

    One padded forward per batch of ``batch_size`` prompts; the layer layout is
    described in the module docstring. An empty prompt list gives a [0, 0, 0] tensor.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    step = _seq2seq_batch if loaded.kind == "seq2seq" else _causal_batch
    chunks = [
        step(loaded, list(prompts[start : start + batch_size])).float().cpu()
        for start in range(0, len(prompts), batch_size)
    ]
    return check_states(torch.cat(chunks)) if chunks else torch.zeros((0, 0, 0))


def check_states(states: torch.Tensor) -> torch.Tensor:
    """``states`` [prompts, layers, hidden], or DivergedError when a state is NaN/inf or all zero.

    A diverged tuning leaves non-finite or collapsed (all-zero) residual
    streams; measured as they are, they would read as cosines of 0.0.
    """
    if states.numel() == 0:
        return states
    bad = ~torch.isfinite(states).all(dim=-1)
    what = "not finite (NaN or infinite)"
    if not bad.any():
        bad = (states == 0).all(dim=-1)
        what = "all zero (the representation collapsed)"
    if bad.any():
        prompt, layer = (int(i) for i in bad.nonzero()[0])
        raise DivergedError(
            f"the hidden state of prompt {prompt} at layer {layer} is {what}; the model or its "
            "tuning diverged (lower the learning rate or check the weights)",
            where="hidden states",
        )
    return states


def split_shared_prefix(
    tokenizer, prefix: str, suffixes: Sequence[str]
) -> tuple[list[int], list[list[int] | None]]:
    """Token ids of ``prefix`` and, per suffix, the ids that follow it in ``prefix + suffix``.

    A suffix gets ``None`` where the tokenisation of the full prompt does not
    start with the prefix's tokens (a word split across the boundary, a
    tokenizer that appends end-of-sequence, ...): reusing the prefix cache there
    would compute a different prompt, so that prompt takes the plain path.
    """
    prefix_ids = list(tokenizer(prefix)["input_ids"]) if prefix else []
    full = tokenizer([prefix + s for s in suffixes])["input_ids"] if suffixes else []
    n = len(prefix_ids)
    rest: list[list[int] | None] = []
    for ids in full:
        ids = list(ids)
        rest.append(ids[n:] if n and len(ids) >= n and ids[:n] == prefix_ids else None)
    return prefix_ids, rest


def _suffix_batch(
    loaded: LoadedModel, cache, prefix_len: int, suffixes: list[list[int]]
) -> torch.Tensor:
    """States at the last suffix token, for suffixes that continue a cached prefix (batch 1)."""
    device = loaded.device
    batch, width = len(suffixes), max(len(s) for s in suffixes)
    pad_id = loaded.tokenizer.pad_token_id
    ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    suffix_mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    for row, suffix in enumerate(suffixes):  # right padding: suffixes follow the prefix directly
        ids[row, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        suffix_mask[row, : len(suffix)] = 1
    mask = torch.cat(
        [torch.ones((batch, prefix_len), dtype=torch.long, device=device), suffix_mask], dim=1
    )
    positions = (prefix_len + torch.arange(width, device=device)).expand(batch, -1)
    past = copy.deepcopy(cache)  # the forward extends the cache; keep the prefix's intact
    past.batch_repeat_interleave(batch)
    out = loaded.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=past,
        use_cache=True,
        output_hidden_states=True,
    )
    last = suffix_mask.sum(dim=1) - 1
    return _gather(out.hidden_states, last)


@torch.no_grad()
def capture_with_shared_prefix(
    loaded: LoadedModel, prefix: str, suffixes: list[str], batch_size: int = 16
) -> torch.Tensor:
    """``capture_last_token_states(loaded, [prefix + s for s in suffixes])``, prefix computed once.

    The prefix runs once (batch 1) and its key/value cache is copied and
    repeated for each batch of suffixes, which then run padded on the right.
    Prompts whose tokenisation does not extend the prefix's (see
    :func:`split_shared_prefix`), encoder-decoders and models without
    position-id support take the plain path, so the result always equals the
    plain computation (within float tolerance).
    """
    prompts = [prefix + s for s in suffixes]
    if loaded.kind != "causal" or not suffixes or not _accepts_position_ids(loaded.model):
        return capture_last_token_states(loaded, prompts, batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prefix_ids, rests = split_shared_prefix(loaded.tokenizer, prefix, suffixes)
    if not prefix_ids or all(r is None for r in rests):
        return capture_last_token_states(loaded, prompts, batch_size)

    device = loaded.device
    prefix_tensor = torch.tensor([prefix_ids], dtype=torch.long, device=device)
    prefix_out = loaded.model(
        input_ids=prefix_tensor,
        attention_mask=torch.ones_like(prefix_tensor),
        use_cache=True,
        output_hidden_states=True,
    )
    cache = prefix_out.past_key_values
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):  # no reusable KV cache
        return capture_last_token_states(loaded, prompts, batch_size)
    prefix_last = (
        _gather(prefix_out.hidden_states, torch.tensor([len(prefix_ids) - 1], device=device))
        .float()
        .cpu()
    )

    results: list[torch.Tensor | None] = [None] * len(prompts)
    extend = [i for i, r in enumerate(rests) if r]  # suffix adds at least one token
    for i, r in enumerate(rests):
        if r is not None and not r:  # the full prompt is exactly the prefix
            results[i] = prefix_last[0]
    for start in range(0, len(extend), batch_size):
        rows = extend[start : start + batch_size]
        row_ids = [r for r in (rests[i] for i in rows) if r is not None]
        states = _suffix_batch(loaded, cache, len(prefix_ids), row_ids)
        for row, state in zip(rows, states.float().cpu(), strict=True):
            results[row] = state
    plain = [i for i, r in enumerate(rests) if r is None]
    if plain:
        states = capture_last_token_states(loaded, [prompts[i] for i in plain], batch_size)
        for row, state in zip(plain, states, strict=True):
            results[row] = state
    return check_states(torch.stack(results))  # type: ignore[arg-type]
