"""Control models: the same architecture with random weights.

Similarity that an untrained network also shows is no evidence of what
training did, so the convergence study runs its pipeline on such a copy too.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from tunelens.models.loading import LoadedModel


def random_init_like(loaded: LoadedModel, seed: int) -> LoadedModel:
    """A freshly initialised model of the same config and tokenizer (seeded)."""
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if loaded.kind == "seq2seq" else AutoModelForCausalLM
    model = auto.from_config(loaded.model.config)
    model.to(dtype=loaded.model.dtype, device=loaded.device).eval()  # inputs' device
    return LoadedModel(
        model=model,
        tokenizer=loaded.tokenizer,
        kind=loaded.kind,
        name=f"{loaded.name} (random init, seed {seed})",
    )
