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

:func:`capture_packed` computes the same states with the tokens that prompts
share (the demonstrations of an ICL prompt set, a task definition) computed
once: prompts are packed into rows under a 4-D block mask
(:mod:`tunelens.models.packing`), for causal models whose attention takes one.

For causal models both paths run the decoder without its LM head: only states are
wanted. The packed path also runs the last block's MLP and its attention's
query and output projections only at the positions whose states are returned
(:mod:`tunelens.models.last_block`): no later layer reads the other positions' last-block
outputs, so that work is dropped, about a seventh of a 6-layer Llama's linear
FLOPs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from tunelens.errors import DivergedError
from tunelens.models.attention import AttentionOutputTap
from tunelens.models.last_block import last_block_positionwise, run_only_at
from tunelens.models.loading import LoadedModel
from tunelens.models.packing import PackedRow, attention_mask, model_mask, pack_rows
from tunelens.models.wrappers import forward_takes, unwrap_model


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder, no LM head (``LlamaForCausalLM.model``, ``GPT2LMHeadModel.transformer``).

    PEFT injects its LoRA layers into the modules themselves, so they act here too.
    """
    base = unwrap_model(model)
    inner = getattr(base, "base_model", base)  # transformers: the ``base_model_prefix`` module
    return inner if isinstance(inner, torch.nn.Module) else base


def accepts_position_ids(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes position ids (then padded rows get their own)."""
    return forward_takes(model, "position_ids")


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a [batch, seq] mask (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def _gather(states: Sequence[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """[batch, layers, hidden] from per-layer [batch, seq, hidden] at one position per row."""
    rows = torch.arange(index.shape[0], device=index.device)
    return torch.stack([h[rows, index] for h in states], dim=1)


def check_nonempty(attention_mask: torch.Tensor, prompts: Sequence[str]) -> None:
    empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prompt {prompts[empty[0]]!r} tokenizes to no tokens")


def _causal_batch(
    loaded: LoadedModel, prompts: list[str], tap: AttentionOutputTap | None = None, first: int = 0
) -> torch.Tensor:
    model, tokenizer = loaded.model, loaded.tokenizer
    with_positions = accepts_position_ids(model)
    # Without position ids, left padding would shift positions: pad right instead.
    side = None if with_positions else "right"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side=side)
    ids = batch["input_ids"].to(loaded.device)
    mask = batch["attention_mask"].to(loaded.device)
    check_nonempty(mask, prompts)
    kwargs = {}
    if with_positions:
        kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    last = last_real_index(mask)
    recording: Any = contextlib.nullcontext()
    if tap is not None:
        rows = torch.arange(len(prompts), device=mask.device)
        recording = tap.recording(model, range(first, first + len(prompts)), rows, last)
    with recording:
        out = _decoder(model)(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False, **kwargs
        )
    return _gather(out.hidden_states, last)


def decoder_start_id(model: torch.nn.Module) -> int:
    config: Any = unwrap_model(model).config
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
    check_nonempty(mask, prompts)
    start = torch.full(
        (ids.shape[0], 1), decoder_start_id(model), dtype=torch.long, device=loaded.device
    )
    out = model(
        input_ids=ids,
        attention_mask=mask,
        decoder_input_ids=start,
        output_hidden_states=True,
        use_cache=False,
    )
    encoder = _gather(out.encoder_hidden_states, last_real_index(mask))
    decoder = _gather(out.decoder_hidden_states, torch.zeros_like(start[:, 0]))
    return torch.cat([encoder, decoder], dim=1)


@torch.no_grad()
def capture_last_token_states(
    loaded: LoadedModel,
    prompts: list[str],
    batch_size: int = 16,
    *,
    tap: AttentionOutputTap | None = None,
) -> torch.Tensor:
    """Residual stream at each prompt's last token, every layer: float32 [prompts, layers, hidden].

    One padded forward per batch of ``batch_size`` prompts; the layer layout is
    described in the module docstring. An empty prompt list gives a [0, 0, 0] tensor.
    With ``tap``, the same forwards also record each block's attention output at
    the last token (causal LMs; an encoder-decoder makes the tap refuse).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        if loaded.kind == "seq2seq":
            if tap is not None:
                tap.refuse("encoder-decoder models: attention outputs are not tapped")
            chunks.append(_seq2seq_batch(loaded, chunk).float().cpu())
        else:
            chunks.append(_causal_batch(loaded, chunk, tap, start).float().cpu())
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


def _padded(
    loaded: LoadedModel, prompts: list[str], batch_size: int, tap: AttentionOutputTap | None
) -> torch.Tensor:
    """The padded path for what packing cannot take (``tap`` passed on only when given)."""
    if tap is None:
        return capture_last_token_states(loaded, prompts, batch_size)
    return capture_last_token_states(loaded, prompts, batch_size, tap=tap)


# Attention implementations that apply a custom 4-D mask as given (flash kernels take no
# mask, flex attention a BlockMask): the packed path needs one of these.
PACKABLE_ATTENTION = ("sdpa", "eager")


def sliding_window(config: Any) -> int | None:
    """The attention window of a model with sliding-window layers, else None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def packable(loaded: LoadedModel) -> bool:
    """Whether the model computes packed rows exactly: a causal LM with position ids whose
    attention takes a custom 4-D mask, and no position information from the mask (ALiBi)."""
    if loaded.kind != "causal" or not accepts_position_ids(loaded.model):
        return False
    config = unwrap_model(loaded.model).config
    attention = getattr(config, "_attn_implementation", None)
    return attention in PACKABLE_ATTENTION and not getattr(config, "alibi", False)


def _packed_row(
    loaded: LoadedModel,
    decoder: torch.nn.Module,
    row: PackedRow,
    *,
    last_block: Sequence[torch.nn.Module] = (),
    tap: AttentionOutputTap | None = None,
) -> torch.Tensor:
    """float32 [prompts captured in ``row``, layers, hidden], in the order of ``row.ends``."""
    device = loaded.device
    mask = model_mask(attention_mask(row, device), loaded.model)
    index = torch.tensor(list(row.ends.values()), dtype=torch.long, device=device)
    recording: Any = contextlib.nullcontext()
    if tap is not None:  # entered after run_only_at: its hooks see the restored full length
        rows = torch.zeros_like(index)
        recording = tap.recording(loaded.model, list(row.ends), rows, index)
    with run_only_at(last_block, index), recording:
        out = decoder(
            input_ids=torch.tensor([row.ids], dtype=torch.long, device=device),
            attention_mask=mask,
            position_ids=torch.tensor([row.positions], dtype=torch.long, device=device),
            output_hidden_states=True,
            use_cache=False,
        )
    return torch.stack([h[0, index] for h in out.hidden_states], dim=1).float().cpu()


@torch.no_grad()
def capture_packed(
    loaded: LoadedModel,
    prompts: Sequence[str],
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    tap: AttentionOutputTap | None = None,
) -> torch.Tensor:
    """``capture_last_token_states(loaded, prompts)``, computing the tokens prompts share once.

    The prompts' token ids are packed into rows (:mod:`tunelens.models.packing`):
    a shared prefix once, then every continuation of it, under a 4-D block mask
    (each continuation sees its prefix and itself) with position ids that
    continue from the prefix, so every state equals that of its prompt run
    alone (within float tolerance). Prompts that share nothing are packed side
    by side, without padding. The decoder runs without its LM head. A row holds
    up to ``max_tokens`` tokens (default: :func:`~tunelens.models.packing.row_budget`
    for the longest shared prefix and the model's hidden size); longer work
    takes several rows, each repeating the prefix it continues.

    Encoder-decoders, models without position ids, attention implementations
    that take no custom 4-D mask (flash attention, flex attention), ALiBi
    models, and sliding-window models with a prompt longer than the window take
    :func:`capture_last_token_states` (``batch_size`` prompts per padded
    forward). Unlike that path, rows mix prompts, so a model that applies a
    different adapter per batch row must not use this one. ``tap`` records each
    block's attention output at the same positions, in the same forwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = list(prompts)
    if not prompts or not packable(loaded):
        return _padded(loaded, prompts, batch_size, tap)
    ids = [list(row) for row in loaded.tokenizer(prompts)["input_ids"]]
    for prompt, prompt_ids in zip(prompts, ids, strict=True):
        if not prompt_ids:
            raise ValueError(f"prompt {prompt!r} tokenizes to no tokens")
    config: Any = unwrap_model(loaded.model).config
    window = sliding_window(config)
    if window is not None and max(map(len, ids)) > window:  # the mask would drop the window
        return _padded(loaded, prompts, batch_size, tap)
    hidden = int(getattr(config, "hidden_size", 1024))
    decoder = _decoder(loaded.model)
    last_block = last_block_positionwise(loaded.model)
    results: list[torch.Tensor | None] = [None] * len(prompts)
    for row in pack_rows(ids, max_tokens, hidden_size=hidden):
        states = _packed_row(loaded, decoder, row, last_block=last_block, tap=tap)
        for index, state in zip(row.ends, states, strict=True):
            results[index] = state
    return check_states(torch.stack(results))  # type: ignore[arg-type]


def capture_with_shared_prefix(
    loaded: LoadedModel,
    prefix: str,
    suffixes: Sequence[str],
    batch_size: int = 16,
    *,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """``capture_packed(loaded, [prefix + s for s in suffixes])``: one prefix, many suffixes.

    The shared tokens are found from the token ids, so a suffix whose first
    word merges with the prefix's last one still gives its own prompt's states.
    """
    return capture_packed(
        loaded, [prefix + s for s in suffixes], max_tokens=max_tokens, batch_size=batch_size
    )
