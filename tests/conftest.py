"""Shared fixtures: tiny randomly initialised HF models and a word-level tokenizer, built offline.

``tiny_model("llama" | "gpt2" | "qwen2" | "t5")`` returns ``(model, tokenizer)``
in eval mode, seeded. The tokenizers mimic their families' special-token
habits (Llama prepends BOS, T5 appends ``</s>``, GPT-2 has no pad token), so
code under test meets the same situations as with the real ones.
"""

from __future__ import annotations

import pytest
import torch

ARCHITECTURES = ("llama", "gpt2", "qwen2", "t5")

# One string split on spaces: easier to read and extend than a long list literal.
_WORD_TEXT = (
    "the a cat dog bird fish red blue green small big runs sits eats sleeps on under mat tree "
    "river house yes no maybe Input Output Definition label is it one two three four five and "
    "or not apple pear knife spoon hammer colour animal fruit tool word first last"
)
WORDS = tuple(_WORD_TEXT.split())
PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "<s>", "</s>"


def build_tokenizer(*, bos: bool = False, eos_suffix: bool = False, pad: bool = True):
    """A word-level PreTrainedTokenizerFast (whitespace + punctuation split), no files needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, EOS, ":", ".", ",", "?", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([PAD, UNK, BOS, EOS])
    single = " ".join(([BOS] if bos else []) + ["$A"] + ([EOS] if eos_suffix else []))
    core.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD if pad else None,
        model_max_length=128,
    )


def build_tiny_model(arch: str, seed: int = 0):
    """(model, tokenizer) for a tiny random config of ``arch``; hidden 32, 2 layers."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(seed)
    if arch == "llama":
        tokenizer = build_tokenizer(bos=True)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        tokenizer = build_tokenizer(pad=False)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            initializer_range=0.2,
            bos_token_id=3,
            eos_token_id=3,
        )
        model = GPT2LMHeadModel(config)
    elif arch == "qwen2":
        tokenizer = build_tokenizer()
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,
            eos_token_id=3,
            pad_token_id=0,
        )
        model = Qwen2ForCausalLM(config)
    elif arch == "t5":
        tokenizer = build_tokenizer(eos_suffix=True)
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=3,
        )
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    return model.eval(), tokenizer


@pytest.fixture
def tiny_model():
    """Factory fixture: ``tiny_model(arch, seed=0) -> (model, tokenizer)``."""
    return build_tiny_model


@pytest.fixture
def tiny_tokenizer():
    """Factory fixture: ``tiny_tokenizer(bos=..., eos_suffix=..., pad=...)``."""
    return build_tokenizer


@pytest.fixture(scope="session")
def real_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory fixture: ``real_model_dir("mistral" | "gpt2" | "qwen2" | "world", seed=0)``.

    A tiny random model on the genuine tokenizer (tests/helpers/real_models.py),
    saved once per session where tunelens's loader can read it; skips where the
    shared tokenizer folder is absent.
    """
    from tests.helpers.real_models import RealModelDirs

    return RealModelDirs(tmp_path_factory.mktemp("real-models"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, one torch thread per worker (and per CLI child it starts).

    The suite runs on as many workers as the machine has cores (``-n auto`` in
    pyproject.toml); two workers of two threads each on two cores would spin
    against each other at every OpenMP region.
    """
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        # The cores are the test processes': a study runs its cells in this process (the
        # tests of worker processes ask for them with workers=/--workers).
        os.environ.setdefault("TUNELENS_WORKERS", "1")
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first (in their collected order), then the rest.

    With several xdist workers the long end-to-end tests then start at once on
    different workers and the short ones fill in around them, instead of the
    last long test running alone at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
