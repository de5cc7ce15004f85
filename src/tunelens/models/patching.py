"""Activation patching at the last prompt token, with forward hooks on the transformer blocks.

The causal test of the convergence study (after Hendel et al., "In-Context
Learning Creates Task Vectors", 2023): run the zero-shot (anchor) prompt,
replace the residual stream at its last token after block L with a state taken
from another forward (the ICL prompt's, or the tuned model's), let the rest of
the forward run, and read the next-token distribution. Label scores of a
patched forward (every label's whole continuation reading the patched state
through the cache) are :func:`tunelens.models.scoring.score_label_continuations`,
on the same hooks (:func:`last_token_hooks`).

Layer numbering is that of :mod:`tunelens.models.hidden_states`: layer 0 is the
input of the first block (the token embeddings, after any embedding scale or
position embedding the model adds), layer L >= 1 the output of block L. The
states patched are the blocks' own outputs, *before* the model's final norm
(``output_hidden_states`` applies that norm to its last entry), so patching the
ICL state at the last layer reproduces the ICL next-token distribution exactly:
the final norm and the LM head see the ICL state at that position.

Blocks are found without an architecture table: the ``torch.nn.ModuleList``
whose length is the config's number of layers (``model.layers`` of Llama,
Qwen2, Mistral, Phi, Gemma; ``transformer.h`` of GPT-2; ``gpt_neox.layers``;
...). Hooks work through a PEFT wrapper and on a fully fine-tuned model alike.

Encoder-decoders (T5, BART): the blocks are the encoder's, and the patched
position is the encoder's last real token (T5's ``</s>``); the next-token
distribution is the decoder's first step from its start token. The decoder
cross-attends to every encoder token, so there patching one encoder position
does not reproduce the source's distribution even at the last layer.

Rows are padded; the last real token of each row is found from the attention
mask and causal models get position ids counted over real tokens, so a padded
batch gives the states of each prompt alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tunelens.models.blocks import blocks_of
from tunelens.models.hidden_states import (
    accepts_position_ids,
    check_nonempty,
    decoder_start_id,
    last_real_index,
)
from tunelens.models.loading import LoadedModel
from tunelens.prompts import render_target

__all__ = [
    "LastToken",
    "block_modules",
    "last_token_forward",
    "last_token_hooks",
    "label_token_ids",
    "n_patch_layers",
    "patch_source",
]


def block_modules(loaded: LoadedModel) -> list[torch.nn.Module]:
    """The transformer blocks whose outputs are patched (the encoder's for encoder-decoders)."""
    return blocks_of(loaded.model, encoder=loaded.kind == "seq2seq")


def n_patch_layers(loaded: LoadedModel) -> int:
    """Layers that can be patched: embeddings + one per block."""
    return len(block_modules(loaded)) + 1


@dataclass
class LastToken:
    """One forward's readings at the last prompt token.

    ``logits``: ``[n, vocab]`` next-token logits (float32, CPU); ``states``:
    ``[n, layers, hidden]`` the block inputs/outputs that patching replaces
    (layer 0 = embeddings, L = output of block L, before any final norm).
    """

    logits: torch.Tensor
    states: torch.Tensor


def _hidden_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def last_token_hooks(
    blocks: Sequence[torch.nn.Module],
    index: torch.Tensor,
    record: list[torch.Tensor | None],
    patch: tuple[int, torch.Tensor] | None,
) -> Iterator[None]:
    """Record every layer's state at ``index`` and, with ``patch = (layer, states)``, replace it.

    ``record`` gets one ``[rows, hidden]`` tensor per layer (0 = the first block's
    input); hooks on ``blocks`` are removed on exit.
    """
    rows = torch.arange(index.shape[0], device=index.device)
    handles = []

    def replace(hidden: torch.Tensor, layer: int) -> torch.Tensor:
        if patch is not None and patch[0] == layer:
            hidden = hidden.clone()
            hidden[rows, index] = patch[1].to(hidden.device, hidden.dtype)
        record[layer] = hidden[rows, index].detach()
        return hidden

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            return (replace(args[0], 0), *args[1:]), kwargs
        key = "hidden_states"
        kwargs = {**kwargs, key: replace(kwargs[key], 0)}
        return args, kwargs

    def make_post(layer: int):
        def post_hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            return _with_hidden(output, replace(_hidden_of(output), layer))

        return post_hook

    try:
        handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for layer, block in enumerate(blocks, start=1):
            handles.append(block.register_forward_hook(make_post(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward_batch(
    loaded: LoadedModel, prompts: list[str], patch: tuple[int, torch.Tensor] | None
) -> LastToken:
    model, tokenizer = loaded.model, loaded.tokenizer
    blocks = block_modules(loaded)
    record: list[torch.Tensor | None] = [None] * (len(blocks) + 1)
    if loaded.kind == "seq2seq":
        batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right")
        ids = batch["input_ids"].to(loaded.device)
        mask = batch["attention_mask"].to(loaded.device)
        check_nonempty(mask, prompts)
        index = last_real_index(mask)
        start = torch.full(
            (ids.shape[0], 1), decoder_start_id(model), dtype=torch.long, device=loaded.device
        )
        with last_token_hooks(blocks, index, record, patch):
            out = model(
                input_ids=ids, attention_mask=mask, decoder_input_ids=start, use_cache=False
            )
        logits = out.logits[:, 0]
    else:
        with_positions = accepts_position_ids(model)
        side = None if with_positions else "right"
        batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side=side)
        ids = batch["input_ids"].to(loaded.device)
        mask = batch["attention_mask"].to(loaded.device)
        check_nonempty(mask, prompts)
        index = last_real_index(mask)
        kwargs = {}
        if with_positions:
            kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        with last_token_hooks(blocks, index, record, patch):
            out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
        rows = torch.arange(ids.shape[0], device=ids.device)
        logits = out.logits[rows, index]
    if any(r is None for r in record):
        raise RuntimeError("a block hook did not fire: the block list is not the forward's")
    states = torch.stack([r for r in record if r is not None], dim=1)
    return LastToken(logits=logits.float().cpu(), states=states.float().cpu())


def patch_source(
    loaded: LoadedModel, n_rows: int, patch_layer: int | None, patch_states: torch.Tensor | None
) -> torch.Tensor | None:
    """The ``[n_rows, hidden]`` states to patch in at ``patch_layer`` (None: no patch).

    ``patch_states`` is ``[n, hidden]`` or ``[n, layers, hidden]`` (of which layer
    ``patch_layer`` is used); a layer out of range or a row count that differs
    from ``n_rows`` raises ValueError.
    """
    if (patch_layer is None) != (patch_states is None):
        raise ValueError("give both patch_layer and patch_states, or neither")
    if patch_layer is None or patch_states is None:
        return None
    n_layers = n_patch_layers(loaded)
    if not 0 <= patch_layer < n_layers:
        raise ValueError(f"patch_layer must lie in [0, {n_layers - 1}], got {patch_layer}")
    source = patch_states[:, patch_layer] if patch_states.ndim == 3 else patch_states
    if source.shape[0] != n_rows:
        raise ValueError(f"expected {n_rows} patch states, got {source.shape[0]}")
    return source


@torch.no_grad()
def last_token_forward(
    loaded: LoadedModel,
    prompts: Sequence[str],
    *,
    patch_layer: int | None = None,
    patch_states: torch.Tensor | None = None,
    batch_size: int = 16,
) -> LastToken:
    """Next-token logits and per-layer states at each prompt's last token, optionally patched.

    With ``patch_layer = L`` and ``patch_states`` (``[n, hidden]``, or ``[n,
    layers, hidden]`` from another :func:`last_token_forward`, of which layer L
    is used), row i's state at its last token after block L (L = 0: the
    embeddings) is replaced by ``patch_states[i]`` before the forward goes on.
    """
    prompts = list(prompts)
    source = patch_source(loaded, len(prompts), patch_layer, patch_states)
    was_training = loaded.model.training
    loaded.model.eval()
    try:
        parts = []
        for start in range(0, len(prompts), batch_size):
            stop = start + batch_size
            patch = (
                (patch_layer, source[start:stop])
                if patch_layer is not None and source is not None
                else None
            )
            parts.append(_forward_batch(loaded, prompts[start:stop], patch))
    finally:
        loaded.model.train(was_training)
    if not parts:
        return LastToken(torch.zeros((0, 0)), torch.zeros((0, 0, 0)))
    return LastToken(
        logits=torch.cat([p.logits for p in parts]), states=torch.cat([p.states for p in parts])
    )


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[int]:
    """The first token of each label's target text (``" " + label``), distinct, in label order.

    Not a label space: real tokenizers give different labels the same first
    token (SentencePiece's ``" 0"`` and ``" 1"`` both start with a space piece).
    Labels are scored by their whole continuations
    (:mod:`tunelens.models.scoring`); the convergence study uses these ids only
    for free-text tasks, whose answer reads as the first reference token.
    """
    ids: list[int] = []
    for label in labels:
        tokens = tokenizer(render_target(label), add_special_tokens=False)["input_ids"]
        if tokens and tokens[0] not in ids:
            ids.append(int(tokens[0]))
    return ids
