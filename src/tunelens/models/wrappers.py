"""The transformers model under the wrappers that tuning and training put around it.

A loaded model may be wrapped by PEFT (a LoRA adapter: ``get_base_model()``)
and, in multi-process training, by DDP or a DeepSpeed engine (``.module``).
Helpers that read the model's own config, methods or forward signature look
through both, here in one place. No torch import: :mod:`tunelens.models.layers`
uses this while planning, before any model is loaded.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["forward_takes", "unwrap_model"]


def unwrap_model(model: Any) -> Any:
    """The transformers model under DDP / DeepSpeed (``.module``) and PEFT wrappers."""
    inner = getattr(model, "module", model)
    get_base = getattr(inner, "get_base_model", None)
    return get_base() if callable(get_base) else inner


def forward_takes(model: Any, argument: str) -> bool:
    """Whether the transformers model under any wrapper takes ``argument`` in its forward
    (position ids, ``logits_to_keep``, the cache argument's name)."""
    return argument in inspect.signature(unwrap_model(model).forward).parameters
