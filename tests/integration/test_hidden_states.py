"""Batched, padded last-token capture equals one unpadded forward per prompt, for each family."""

from __future__ import annotations

import pytest
import torch

from tunelens.models.hidden_states import (
    capture_last_token_states,
    capture_with_shared_prefix,
    split_shared_prefix,
)
from tunelens.models.loading import load_model_from_objects

ATOL = 1e-4
PROMPTS = [
    "the cat sits on the mat",
    "a dog",
    "Input : red apple\nOutput : fruit",
    "big",
    "the small bird eats a green pear and the fish sleeps under the tree",
]
PREFIX = (
    "Definition : is it an animal ?\n\n"
    "Input : the cat\nOutput : yes\n\n"
    "Input : a knife\nOutput : no\n\n"
)
SUFFIXES = [
    "Input : a dog\nOutput :",
    "Input : red\nOutput :",
    "",  # the prompt is exactly the prefix
    "Input : the small bird eats a green pear under the big tree\nOutput :",
    "Input : hammer\nOutput :",
]


def reference_states(loaded, prompt: str) -> torch.Tensor:
    """What a researcher would write: one unpadded forward per prompt, [layers, hidden]."""
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        if loaded.kind == "seq2seq":
            start = torch.tensor([[model.config.decoder_start_token_id]])
            out = model(**batch, decoder_input_ids=start, output_hidden_states=True)
            encoder = torch.stack([h[0, -1] for h in out.encoder_hidden_states])
            decoder = torch.stack([h[0, 0] for h in out.decoder_hidden_states])
            return torch.cat([encoder, decoder])
        out = model(**batch, output_hidden_states=True)
        return torch.stack([h[0, -1] for h in out.hidden_states])


def expected_layers(model) -> int:
    config = model.config
    if config.is_encoder_decoder:
        return config.num_layers + 1 + config.num_decoder_layers + 1
    return config.num_hidden_layers + 1


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5"])
def test_batched_capture_equals_per_prompt_forward(tiny_model, arch, side):
    model, tokenizer = tiny_model(arch)
    loaded = load_model_from_objects(model, tokenizer)
    loaded.tokenizer.padding_side = side
    # batch_size 3: one full padded batch and one partial one
    got = capture_last_token_states(loaded, PROMPTS, batch_size=3)
    assert got.dtype == torch.float32
    assert got.shape == (len(PROMPTS), expected_layers(model), 32)
    want = torch.stack([reference_states(loaded, p) for p in PROMPTS])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # states differ between prompts (the comparison is not vacuous)
    assert (got[0, -1] - got[1, -1]).abs().max() > 1e-2


def test_left_padding_without_position_ids_would_be_wrong(tiny_model):
    """GPT-2's absolute positions: the naive left-padded batch differs, so the fix matters."""
    model, tokenizer = tiny_model("gpt2")
    loaded = load_model_from_objects(model, tokenizer)
    assert loaded.tokenizer.padding_side == "left"
    batch = loaded.tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    naive = torch.stack([h[1, -1] for h in out.hidden_states])
    assert (naive - reference_states(loaded, PROMPTS[1])).abs().max() > 1e-2
    torch.testing.assert_close(
        capture_last_token_states(loaded, PROMPTS[:2])[1],
        reference_states(loaded, PROMPTS[1]),
        atol=ATOL,
        rtol=0,
    )


def test_capture_of_no_prompts_and_bad_batch_size(tiny_model):
    loaded = load_model_from_objects(*tiny_model("llama"))
    assert capture_last_token_states(loaded, []).shape == (0, 0, 0)
    with pytest.raises(ValueError):
        capture_last_token_states(loaded, PROMPTS, batch_size=0)


def test_empty_prompt_is_rejected(tiny_model):
    loaded = load_model_from_objects(*tiny_model("qwen2"))  # no BOS: "" has no tokens
    with pytest.raises(ValueError, match="no tokens"):
        capture_last_token_states(loaded, ["a dog", ""])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5"])
def test_shared_prefix_equals_plain(tiny_model, arch, side):
    model, tokenizer = tiny_model(arch)
    loaded = load_model_from_objects(model, tokenizer)
    loaded.tokenizer.padding_side = side
    got = capture_with_shared_prefix(loaded, PREFIX, SUFFIXES, batch_size=2)
    want = torch.stack([reference_states(loaded, PREFIX + s) for s in SUFFIXES])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        got, capture_last_token_states(loaded, [PREFIX + s for s in SUFFIXES]), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prefix_uses_the_cache(tiny_model, arch, monkeypatch):
    """Prompts that extend the prefix never reach the plain path; the prefix runs once."""
    import tunelens.models.hidden_states as hs

    loaded = load_model_from_objects(*tiny_model(arch))
    calls = []
    monkeypatch.setattr(
        hs,
        "capture_last_token_states",
        lambda *a, **k: calls.append(a) or pytest.fail("plain path taken"),
    )
    forwards = []
    handle = loaded.model.register_forward_hook(lambda m, i, o: forwards.append(1))
    try:
        hs.capture_with_shared_prefix(loaded, PREFIX, SUFFIXES, batch_size=2)
    finally:
        handle.remove()
    # 1 prefix forward + ceil(4 extending suffixes / 2) suffix forwards
    assert len(forwards) == 3
    assert not calls


def test_split_shared_prefix_detects_boundary_merges(tiny_tokenizer):
    tokenizer = tiny_tokenizer(bos=True)
    prefix_ids, rests = split_shared_prefix(tokenizer, "the ca", ["t sits", " dog", ""])
    assert prefix_ids[0] == tokenizer.bos_token_id
    assert rests[0] is None  # "ca" + "t" -> "cat": tokenisation differs
    assert rests[1] == tokenizer(" dog", add_special_tokens=False)["input_ids"]
    assert rests[2] == []


def test_split_shared_prefix_with_appended_eos(tiny_tokenizer):
    tokenizer = tiny_tokenizer(eos_suffix=True)  # every prompt ends with </s>: no shared prefix
    _, rests = split_shared_prefix(tokenizer, "the cat", [" sits"])
    assert rests == [None]


def test_shared_prefix_falls_back_per_prompt(tiny_model):
    loaded = load_model_from_objects(*tiny_model("gpt2"))
    prefix = "the cat sits on the ma"
    suffixes = ["t", " and a dog", " and the bird"]  # first merges across the boundary
    got = capture_with_shared_prefix(loaded, prefix, suffixes)
    want = torch.stack([reference_states(loaded, prefix + s) for s in suffixes])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_capture_through_a_peft_wrapper(tiny_model, arch):
    """Tuned models arrive as PEFT wrappers; capture and the prefix path must still be exact."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_model(arch)
    targets = ["q_proj", "v_proj"] if arch == "llama" else ["c_attn"]
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False)
    )
    loaded = load_model_from_objects(peft_model, tokenizer)
    want = torch.stack([reference_states(loaded, p) for p in PROMPTS])
    torch.testing.assert_close(capture_last_token_states(loaded, PROMPTS), want, atol=ATOL, rtol=0)
    want = torch.stack([reference_states(loaded, PREFIX + s) for s in SUFFIXES])
    torch.testing.assert_close(
        capture_with_shared_prefix(loaded, PREFIX, SUFFIXES), want, atol=ATOL, rtol=0
    )
