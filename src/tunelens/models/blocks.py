"""A model's transformer blocks, found without an architecture table.

The blocks are the ``torch.nn.ModuleList`` whose length is the config's number
of layers (``model.layers`` of Llama, Qwen2, Mistral, Phi, Gemma;
``transformer.h`` of GPT-2; ``gpt_neox.layers``; ...), under any PEFT or
Accelerate wrapper. Patching hooks them (:mod:`tunelens.models.patching`) and
the packed paths cut the last one down (:mod:`tunelens.models.last_block`), so
both find them here.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelens.models.wrappers import unwrap_model

__all__ = ["blocks_of"]


def _n_layers(model: torch.nn.Module, encoder: bool) -> int:
    config: Any = unwrap_model(model).config
    if encoder:
        for key in ("num_layers", "encoder_layers", "num_hidden_layers"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text, key, None)
        if isinstance(value, int):
            return value
    raise ValueError("the model config names no layer count (num_hidden_layers / n_layer)")


def blocks_of(model: torch.nn.Module, *, encoder: bool = False) -> list[torch.nn.Module]:
    """The transformer blocks of ``model`` (under PEFT / Accelerate wrappers): the decoder's,
    or with ``encoder`` the encoder's."""
    base = unwrap_model(model)
    n = _n_layers(model, encoder)
    get_encoder = getattr(base, "get_encoder", None)
    root = get_encoder() if encoder and callable(get_encoder) else base
    candidates = [
        (name, module)
        for name, module in root.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == n
    ]
    if not encoder:  # a vision tower or an encoder may hold a list of the same length
        preferred = [c for c in candidates if "vision" not in c[0] and "encoder" not in c[0]]
        candidates = preferred or candidates
    if not candidates:
        raise ValueError(f"found no list of {n} transformer blocks in {type(base).__name__}")
    return list(candidates[0][1])
