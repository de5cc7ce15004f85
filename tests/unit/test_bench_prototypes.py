"""The prototypes in bench/prototypes.py compute what the library computes (before they move there).

Packed shared-prefix hidden states equal one forward per prompt; shared-prefix
many-set tuning ends with the adapters of the library's ``tune_many_sets``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tunelens.models.hidden_states import capture_last_token_states
from tunelens.models.loading import load_model_from_objects
from tunelens.models.tuning import TuningConfig, tune_many_sets

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from prototypes import (  # noqa: E402
    capture_packed,
    shared_prefix_length,
    tune_many_sets_shared_prefix,
)

PREFIX = (
    "Definition : is it an animal ?\n\n"
    "Input : the cat\nOutput : yes\n\nInput : a knife\nOutput : no\n\n"
)
SUFFIXES = [
    "Input : a dog\nOutput :",
    "",  # the prompt is exactly the prefix
    "Input : the small bird eats a green pear under the big tree\nOutput :",
    "Input : hammer\nOutput :",
]


def definition_sets() -> list[list[tuple[str, str]]]:
    """Three sets of four pairs; the prompts of a set share a definition."""
    words = ["cat", "dog", "apple", "pear", "knife", "spoon", "bird", "fish", "tree", "house"]
    sets = []
    for j, definition in enumerate(
        ["is it an animal ?", "is it a fruit or a tool ?", "the first word is a colour"]
    ):
        sets.append(
            [
                (
                    f"Definition : {definition}\n\nInput : the {words[(j + i) % 10]}\nOutput :",
                    f" {['yes', 'no'][(i + j) % 2]}",
                )
                for i in range(4)
            ]
        )
    return sets


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("max_tokens", [2048, 40])  # 40: several packed rows
def test_packed_states_equal_plain_states(tiny_model, arch, max_tokens):
    loaded = load_model_from_objects(*tiny_model(arch))
    want = capture_last_token_states(loaded, [PREFIX + s for s in SUFFIXES])
    got = capture_packed(loaded, PREFIX, SUFFIXES, max_tokens=max_tokens)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_packed_states_with_eager_attention(tiny_model):
    model, tokenizer = tiny_model("llama")
    model.set_attn_implementation("eager")
    loaded = load_model_from_objects(model, tokenizer)
    want = capture_last_token_states(loaded, [PREFIX + s for s in SUFFIXES])
    torch.testing.assert_close(capture_packed(loaded, PREFIX, SUFFIXES), want, atol=1e-4, rtol=0)


def test_packed_states_fall_back_for_seq2seq(tiny_model):
    loaded = load_model_from_objects(*tiny_model("t5"))
    want = capture_last_token_states(loaded, [PREFIX + s for s in SUFFIXES])
    torch.testing.assert_close(capture_packed(loaded, PREFIX, SUFFIXES), want, atol=1e-4, rtol=0)


def test_shared_prefix_length_keeps_the_last_prompt_token(tiny_model):
    from tunelens.models.batching import encode_pairs

    _, tokenizer = tiny_model("llama")
    encoded = encode_pairs(tokenizer, definition_sets()[0], kind="causal")
    n = shared_prefix_length(encoded)
    assert all(e.prompt_ids[:n] == encoded[0].prompt_ids[:n] for e in encoded)
    assert n < min(len(e.prompt_ids) for e in encoded)
    assert n >= 8  # <s> Definition : is it an animal ? \n\n Input : the


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prefix_tuning_equals_tune_many_sets(tiny_model, arch):
    loaded = load_model_from_objects(*tiny_model(arch))
    sets = definition_sets()
    config = TuningConfig(
        epochs=3,
        batch_size=2,
        learning_rate=1e-2,
        weight_decay=0.01,
        lr_schedule="linear",
        max_grad_norm=0.5,
    )
    want = tune_many_sets(loaded, sets, config, seeds=[3, 4, 5])
    got = tune_many_sets_shared_prefix(loaded, sets, config, seeds=[3, 4, 5], sets_per_batch=2)
    for ours, theirs in zip(got, want, strict=True):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=0)
        assert any(ours[k].abs().sum() > 0 for k in ours if "lora_B" in k)
    assert all(p.grad is None for p in loaded.model.parameters())
