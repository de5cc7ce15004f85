"""Tiny random models on genuine tokenizers (issue 26): Mistral, GPT-2 and Qwen2.

The tokenizer files live in ``../shared/data/tokenizers/<name>`` beside the
repository (see its README for provenance and licences); they are read from
there, never copied into the repository. ``build_real_model_dir(name, dest)``
writes a tiny random model (hidden 32, 2 layers, vocabulary = the tokenizer's
full length) and the tokenizer with ``save_pretrained`` into ``dest``, so
tunelens's own loader (``tunelens.models.loading.load_model``) reads it like a
downloaded checkpoint. Where the shared folder is absent the helpers call
``pytest.skip`` with the path they looked for. ``"world"`` builds the same tiny
random model (a Llama) on the embedded world model's word-level tokenizer.

The session-scoped fixture ``real_model_dir`` (tests/conftest.py) builds each
directory once per test session: ``real_model_dir("mistral") -> Path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

REAL_TOKENIZERS = ("mistral", "gpt2", "qwen2")
# The embedded world model's word-level tokenizer (src/tunelens/assets/world), for a tiny
# random Llama beside the real ones: always present, never skipped.
WORLD_TOKENIZER = "world"

# tests/helpers/real_models.py -> parents[2] is the repository root; shared/ sits beside it.
SHARED_TOKENIZERS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers"


def tokenizer_dir(name: str) -> Path:
    """The shared folder of tokenizer ``name`` (``"world"``: the embedded world model's
    folder); ``pytest.skip`` where it is absent."""
    if name == WORLD_TOKENIZER:
        from tunelens.models.paths import world_model_dir

        return world_model_dir()
    if name not in REAL_TOKENIZERS:
        raise ValueError(f"unknown real tokenizer {name!r}; known: {', '.join(REAL_TOKENIZERS)}")
    folder = SHARED_TOKENIZERS / name
    if not folder.is_dir():
        pytest.skip(
            f"real tokenizer {name!r} not available: {folder} is absent "
            "(the shared tokenizer files sit beside the repository, never inside it)"
        )
    return folder


def load_real_tokenizer(name: str) -> Any:
    """The genuine tokenizer ``name``, loaded offline from the shared folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(name), local_files_only=True)


def _config(name: str, tokenizer: Any) -> Any:
    """A tiny config of the family's shape, its vocabulary the tokenizer's full length."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    init = 0.2  # wide weights: a random model whose outputs differ between inputs
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    common = {"vocab_size": len(tokenizer), "initializer_range": init, **special}
    if name == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024, **common)
    llama_shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        **common,
    }
    if name == WORLD_TOKENIZER:
        return LlamaConfig(pad_token_id=tokenizer.pad_token_id, **llama_shape)
    if name == "mistral":
        return MistralConfig(sliding_window=None, tie_word_embeddings=False, **llama_shape)
    return Qwen2Config(tie_word_embeddings=True, use_sliding_window=False, **llama_shape)


def build_real_model(name: str, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer): a tiny random model of family ``name`` on its genuine tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_real_tokenizer(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(name, tokenizer))
    return model.eval(), tokenizer


def build_real_model_dir(name: str, dest: Path, seed: int = 0) -> Path:
    """Save a tiny random ``name`` model and its tokenizer into ``dest``; returns ``dest``."""
    model, tokenizer = build_real_model(name, seed=seed)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


class RealModelDirs:
    """Builds each real-tokenizer model directory once, under one base folder."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._built: dict[tuple[str, int], Path] = {}

    def __call__(self, name: str, seed: int = 0) -> Path:
        """The directory of the tiny ``name`` model (seed ``seed``), built on first use."""
        key = (name, seed)
        if key not in self._built:
            tokenizer_dir(name)  # skip before building anything
            self._built[key] = build_real_model_dir(name, self.base / f"{name}-{seed}", seed)
        return self._built[key]
