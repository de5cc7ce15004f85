"""Last-token capture equals one unpadded forward per prompt, for each family.

Both paths: padded batches (``capture_last_token_states``) and packed rows
with the shared tokens computed once (``capture_packed`` and its one-prefix
form ``capture_with_shared_prefix``), including the packed path's fallbacks.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.numerics import assert_close_scaled

import tunelens.models.hidden_states as hs
from tunelens.models.hidden_states import (
    capture_last_token_states,
    capture_packed,
    capture_with_shared_prefix,
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
    assert_close_scaled(got, want, ATOL)
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
    assert_close_scaled(
        capture_last_token_states(loaded, PROMPTS[:2])[1],
        reference_states(loaded, PROMPTS[1]),
        ATOL,
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
    assert_close_scaled(got, want, ATOL)
    assert_close_scaled(
        got, capture_last_token_states(loaded, [PREFIX + s for s in SUFFIXES]), ATOL
    )


def references(loaded, prompts) -> torch.Tensor:
    return torch.stack([reference_states(loaded, p) for p in prompts])


def no_plain_path(monkeypatch) -> None:
    monkeypatch.setattr(
        hs, "capture_last_token_states", lambda *a, **k: pytest.fail("plain path taken")
    )


PACKED_ARCHS = ["llama", "gpt2", "qwen2"]


@pytest.mark.parametrize("arch", PACKED_ARCHS)
@pytest.mark.parametrize(
    "case",
    [
        "suffixes of different lengths",
        "one prompt",
        "zero-length prefix",
        "prompt is the prefix",
        "mixed groups",
    ],
)
def test_packed_equals_per_prompt_forward(tiny_model, arch, case, monkeypatch):
    loaded = load_model_from_objects(*tiny_model(arch))
    prompts = {
        "suffixes of different lengths": [PREFIX + s for s in SUFFIXES if s],
        "one prompt": [PREFIX + SUFFIXES[0]],
        # nothing shared (Llama: only its BOS): rows side by side, block-diagonal mask
        "zero-length prefix": PROMPTS,
        "prompt is the prefix": [PREFIX, PREFIX + SUFFIXES[0], PREFIX],
        # two demonstration prefixes and an unrelated prompt, in one call
        "mixed groups": [PREFIX + SUFFIXES[0], "a dog", PREFIX + SUFFIXES[3]]
        + ["Definition : is it red ?\n\n" + s for s in SUFFIXES[:2]],
    }[case]
    want = references(loaded, prompts)
    no_plain_path(monkeypatch)
    got = capture_packed(loaded, prompts)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert_close_scaled(got, want, ATOL)


@pytest.mark.parametrize("arch", PACKED_ARCHS)
def test_packed_rows_run_the_decoder_only_and_share_the_prefix(tiny_model, arch, monkeypatch):
    """One decoder forward per row, no LM head; with a small budget, several rows."""
    loaded = load_model_from_objects(*tiny_model(arch))
    prompts = [PREFIX + s for s in SUFFIXES]
    want = references(loaded, prompts)
    no_plain_path(monkeypatch)
    lengths: list[int] = []
    decoder = hs._decoder(loaded.model)
    assert decoder is not loaded.model
    head = loaded.model.get_output_embeddings()
    handles = [
        decoder.register_forward_hook(lambda m, i, o: lengths.append(o.hidden_states[0].shape[1])),
        head.register_forward_hook(lambda m, i, o: pytest.fail("LM head ran")),
    ]
    try:
        one_row = capture_packed(loaded, prompts)
        several = capture_packed(loaded, prompts, max_tokens=30)
    finally:
        for handle in handles:
            handle.remove()
    assert_close_scaled(one_row, want, ATOL)
    assert_close_scaled(several, want, ATOL)
    ids = [loaded.tokenizer(p)["input_ids"] for p in prompts]
    assert lengths[0] < sum(map(len, ids))  # the prefix is computed once
    assert len(lengths) > 2  # one row, then several


# the last block's attention projections that run at read positions only, per architecture
LAST_BLOCK_PROJECTIONS = {
    "llama": ("q_proj", "o_proj"),
    "gpt2": ("c_proj",),
    "qwen2": ("q_proj", "o_proj"),
}


@pytest.mark.parametrize("arch", PACKED_ARCHS)
def test_packed_rows_run_the_last_block_only_where_states_are_read(tiny_model, arch, monkeypatch):
    """The last block's MLP and query/output projections see one position per captured prompt;
    its key/value projections and every earlier block see every position."""
    from tunelens.models.patching import block_modules

    loaded = load_model_from_objects(*tiny_model(arch))
    prompts = [PREFIX + s for s in SUFFIXES if s]
    want = references(loaded, prompts)
    no_plain_path(monkeypatch)
    blocks = block_modules(loaded)
    last_attention = getattr(blocks[-1], "self_attn", None) or blocks[-1].attn
    first_attention = getattr(blocks[0], "self_attn", None) or blocks[0].attn
    names = LAST_BLOCK_PROJECTIONS[arch]
    watched = {
        "first mlp": blocks[0].mlp,
        "last mlp": blocks[-1].mlp,
        **{f"first {n}": getattr(first_attention, n) for n in names},
        **{f"last {n}": getattr(last_attention, n) for n in names},
        # keys and values: GPT-2's fused c_attn, Llama's and Qwen2's k_proj
        "last keys": getattr(last_attention, "k_proj", None) or last_attention.c_attn,
    }
    seen: dict[str, list[int]] = {name: [] for name in watched}

    def watch(name: str):  # registered before the capture's own hooks: sees the module's own output
        return lambda m, i, o: seen[name].append(o.shape[1])

    handles = [module.register_forward_hook(watch(name)) for name, module in watched.items()]
    try:
        got = capture_packed(loaded, prompts)
    finally:
        for handle in handles:
            handle.remove()
    assert_close_scaled(got, want, ATOL)
    row = seen["first mlp"][0]
    assert row > len(prompts)
    assert seen["last mlp"] == [len(prompts)]
    for n in names:
        assert seen[f"last {n}"] == [len(prompts)] and seen[f"first {n}"] == [row]
    assert seen["last keys"] == [row]


@pytest.mark.parametrize("arch", ["mistral", "gemma", "phi", "phi3"])
def test_packed_on_the_other_causal_families(arch, monkeypatch):
    """The rest of the architecture matrix (tests/helpers/models.py), byte-level BPE prompts."""
    from tests.helpers.models import tiny_config, world_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = world_tokenizer()
    config = tiny_config(
        arch,
        len(tokenizer),
        pad=tokenizer.pad_token_id,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    loaded = load_model_from_objects(AutoModelForCausalLM.from_config(config).eval(), tokenizer)
    prefix = "Definition: Name the colour.\n\nInput: grass\nOutput: green\n\n"
    prompts = [prefix + f"Input: {word}\nOutput:" for word in ("sky", "a ripe lemon", "snow")]
    want = references(loaded, prompts)
    no_plain_path(monkeypatch)
    assert_close_scaled(capture_packed(loaded, prompts), want, ATOL)


def test_packed_with_eager_attention(tiny_model, monkeypatch):
    """Eager attention adds the mask to the scores: the boolean mask becomes 0 / -inf."""
    model, tokenizer = tiny_model("qwen2")
    model.set_attn_implementation("eager")
    loaded = load_model_from_objects(model, tokenizer)
    prompts = [PREFIX + s for s in SUFFIXES]
    want = references(loaded, prompts)
    no_plain_path(monkeypatch)
    assert_close_scaled(capture_packed(loaded, prompts), want, ATOL)


def test_packed_falls_back_for_a_mask_free_attention(tiny_model, monkeypatch):
    """Flash attention takes no custom 4-D mask: the padded path runs instead."""
    loaded = load_model_from_objects(*tiny_model("llama"))
    prompts = [PREFIX + s for s in SUFFIXES]
    want = capture_last_token_states(loaded, prompts, batch_size=2)
    calls = []
    monkeypatch.setattr(
        hs, "capture_last_token_states", lambda model, p, b: calls.append((p, b)) or want
    )
    monkeypatch.setattr(loaded.model.config, "_attn_implementation", "flash_attention_2")
    assert capture_packed(loaded, prompts, batch_size=2) is want
    assert calls == [(prompts, 2)]


def test_packed_falls_back_past_a_sliding_window(tiny_model, monkeypatch):
    """The custom mask would drop a sliding window, so longer prompts take the padded path."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tokenizer = tiny_model("qwen2")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=0,
        initializer_range=0.2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    loaded = load_model_from_objects(Qwen2ForCausalLM(config).eval(), tokenizer)
    prompts = [PREFIX + s for s in SUFFIXES]
    want = references(loaded, prompts)
    real = hs.capture_last_token_states
    calls = []
    monkeypatch.setattr(
        hs, "capture_last_token_states", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert_close_scaled(capture_packed(loaded, prompts), want, ATOL)
    assert calls == [1]
    # prompts within the window are packed
    short = ["a dog", "the cat"]
    assert_close_scaled(capture_packed(loaded, short), references(loaded, short), ATOL)
    assert calls == [1]


def test_packed_falls_back_for_encoder_decoders(tiny_model):
    loaded = load_model_from_objects(*tiny_model("t5"))
    prompts = [PREFIX + s for s in SUFFIXES]
    assert_close_scaled(capture_packed(loaded, prompts), references(loaded, prompts), ATOL)


def test_packed_of_no_prompts_and_empty_prompt(tiny_model):
    loaded = load_model_from_objects(*tiny_model("qwen2"))  # no BOS: "" has no tokens
    assert capture_packed(loaded, []).shape == (0, 0, 0)
    with pytest.raises(ValueError, match="no tokens"):
        capture_packed(loaded, ["a dog", ""])
    with pytest.raises(ValueError, match="batch_size"):
        capture_packed(loaded, PROMPTS, batch_size=0)


def test_shared_prefix_whose_last_word_merges_with_a_suffix(tiny_model):
    """The shared tokens come from the token ids, not the prefix string."""
    loaded = load_model_from_objects(*tiny_model("gpt2"))
    prefix = "the cat sits on the ma"
    suffixes = ["t", " and a dog", " and the bird"]  # "ma" + "t" -> "mat"
    got = capture_with_shared_prefix(loaded, prefix, suffixes)
    assert_close_scaled(got, references(loaded, [prefix + s for s in suffixes]), ATOL)


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
    assert_close_scaled(capture_last_token_states(loaded, PROMPTS), want, ATOL)
    want = torch.stack([reference_states(loaded, PREFIX + s) for s in SUFFIXES])
    assert hs.packable(loaded)  # the wrapper does not hide the attention implementation
    assert_close_scaled(capture_with_shared_prefix(loaded, PREFIX, SUFFIXES), want, ATOL)
