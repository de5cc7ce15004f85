"""Per-set tuning with shared prompt prefixes equals the full rows and sequential PEFT runs.

``tune_many_sets`` computes each set's shared prompt prefix once per step, in
packed rows (a 4-D mask) or through the prefix's key/value cache; both must
end where the full padded rows and sequential ``tune_on_pairs`` runs (PEFT)
end: every set's LoRA A and B within 1e-4, on tiny random Llama, GPT-2 and
Qwen2 configs, with and without a shared prefix, for sets whose rows differ in
length. No timing is asserted.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import has_lora_layers, logits_of, prompt, wrap
from tests.helpers.numerics import assert_close_scaled

from tunelens.models.batching import encode_pairs
from tunelens.models.tuning import TuningConfig, many_sets, tune_many_sets, tune_on_pairs
from tunelens.models.tuning.many_sets import choose_layout, shared_prefix_length

ARCHS = ("llama", "gpt2", "qwen2")
PROBE = prompt("the small cat")
WORDS = ["cat", "dog", "apple", "pear", "knife", "spoon", "bird", "fish", "tree", "house"]
DEFINITIONS = [
    "is it an animal ?",
    "is it a fruit or a tool ?",
    "the first word is a colour",
    "yes",  # a short definition: a shorter prefix than the others
]


def definition_sets(n_pairs: int = 5) -> list[list[tuple[str, str]]]:
    """Sets whose prompts share a definition; inputs of 1-3 words (rows differ in length)."""
    sets = []
    for j, definition in enumerate(DEFINITIONS):
        pairs = []
        for i in range(n_pairs):
            words = " ".join(WORDS[(j + i + m) % len(WORDS)] for m in range(1 + (i + j) % 3))
            pairs.append(
                (
                    f"Definition : {definition}\n\nInput : the {words}\nOutput :",
                    f" {['yes', 'no', 'maybe'][(i + j) % 3]}",
                )
            )
        sets.append(pairs)
    return sets


def unshared_sets() -> list[list[tuple[str, str]]]:
    """Sets whose prompts start with different words: no shared prefix (but Llama's BOS)."""
    return [
        [
            (f"{WORDS[(j + i) % 10]} and the {WORDS[(j + 2 * i + 1) % 10]} ?", " yes")
            for i in range(4)
        ]
        for j in range(3)
    ]


def config(**changes) -> TuningConfig:
    """Linear decay, weight decay and clipping that bites: every part of the loop is exercised."""
    settings = {
        "epochs": 3,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "weight_decay": 0.01,
        "lr_schedule": "linear",
        "max_grad_norm": 0.05,
    }
    return TuningConfig(**settings | changes)


def assert_same_adapters(got, want) -> None:
    assert len(got) == len(want)
    for ours, theirs in zip(got, want, strict=True):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert_close_scaled(ours[key], theirs[key], 1e-4)
        assert any(ours[k].abs().sum() > 0 for k in ours if "lora_B" in k)


def sequential(loaded, sets, settings, seeds):
    """One ``tune_on_pairs`` (PEFT) run per set, adapters reset between sets."""
    states = []
    for pairs, seed in zip(sets, seeds, strict=True):
        tuned = tune_on_pairs(loaded, pairs, settings.with_seed(seed))
        try:
            states.append(tuned.adapter_state())
        finally:
            tuned.unload()
    return states


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefix_layouts_equal_full_rows_and_sequential_peft(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    sets = definition_sets()
    seeds = [3, 4, 5, 6]
    settings = config()
    encoded = [encode_pairs(loaded.tokenizer, s, kind="causal") for s in sets]
    assert choose_layout(loaded, encoded, settings) == "packed"
    before = logits_of(loaded, PROBE)
    flags = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
    rows = tune_many_sets(loaded, sets, settings, seeds=seeds, layout="rows")
    assert_same_adapters(rows, sequential(loaded, sets, settings, seeds))
    for layout in ("auto", "packed", "cache"):
        got = tune_many_sets(loaded, sets, settings, seeds=seeds, layout=layout)
        assert_same_adapters(got, rows)
        assert torch.equal(logits_of(loaded, PROBE), before)
        assert not has_lora_layers(loaded.model)
        assert all(p.grad is None for p in loaded.model.parameters())
        assert {n: p.requires_grad for n, p in loaded.model.named_parameters()} == flags
    # In chunks of two sets (ordered by length), still each set's own adapter, in input order.
    chunked = tune_many_sets(loaded, sets, settings, seeds=seeds, sets_per_batch=2)
    assert_same_adapters(chunked, rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_sets_without_a_shared_prefix_take_the_full_rows(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    sets = unshared_sets()
    seeds = [0, 1, 2]
    settings = config(epochs=2)
    encoded = [encode_pairs(loaded.tokenizer, s, kind="causal") for s in sets]
    prefixes = [shared_prefix_length(e) for e in encoded]
    assert prefixes == ([1, 1, 1] if arch == "llama" else [0, 0, 0])  # Llama: only BOS
    assert choose_layout(loaded, encoded, settings) == "rows"
    want = sequential(loaded, sets, settings, seeds)
    assert_same_adapters(tune_many_sets(loaded, sets, settings, seeds=seeds), want)
    # Packing needs no prefix: each row is its own block of the mask.
    assert_same_adapters(tune_many_sets(loaded, sets, settings, seeds=seeds, layout="packed"), want)
    if arch == "llama":  # the cache layout needs a prefix in every set: BOS is one
        got = tune_many_sets(loaded, sets, settings, seeds=seeds, layout="cache")
        assert_same_adapters(got, want)
    else:
        with pytest.raises(ValueError, match="shared prompt prefix"):
            tune_many_sets(loaded, sets, settings, seeds=seeds, layout="cache")


def test_sets_of_other_sizes_and_a_mixed_block(tiny_model):
    """Two lockstep groups (5 and 3 pairs); one block mixes a prefix-less set with others."""
    loaded = wrap(tiny_model("qwen2"), "qwen2")
    sets = definition_sets()[:2] + [unshared_sets()[0][:3] + [definition_sets()[2][0]]]
    sets += [definition_sets(3)[3]]
    seeds = [7, 8, 9, 10]
    settings = config()
    want = sequential(loaded, sets, settings, seeds)
    for layout in ("auto", "packed"):
        got = tune_many_sets(loaded, sets, settings, seeds=seeds, layout=layout)
        assert_same_adapters(got, want)


def test_eager_attention_takes_an_additive_packed_mask(tiny_model):
    model, tokenizer = tiny_model("llama")
    model.set_attn_implementation("eager")
    loaded = wrap((model, tokenizer), "llama")
    sets, seeds, settings = definition_sets()[:3], [0, 1, 2], config()
    encoded = [encode_pairs(tokenizer, s, kind="causal") for s in sets]
    assert choose_layout(loaded, encoded, settings) == "packed"
    want = sequential(loaded, sets, settings, seeds)
    assert_same_adapters(tune_many_sets(loaded, sets, settings, seeds=seeds), want)


def test_long_packed_rows_take_the_cache(tiny_model, monkeypatch):
    loaded = wrap(tiny_model("llama"), "llama")
    sets, settings = definition_sets(), config()
    encoded = [encode_pairs(loaded.tokenizer, s, kind="causal") for s in sets]
    monkeypatch.setattr(many_sets, "PACKED_MAX_TOKENS", 10)
    assert choose_layout(loaded, encoded, settings) == "cache"
    # one row per step: nothing to share
    assert choose_layout(loaded, encoded, config(batch_size=1)) == "rows"


def test_encoder_decoders_take_the_full_rows(tiny_model):
    loaded = wrap(tiny_model("t5"), "t5")
    sets, settings = definition_sets()[:2], config(epochs=1)
    encoded = [encode_pairs(loaded.tokenizer, s, kind="seq2seq") for s in sets]
    assert choose_layout(loaded, encoded, settings) == "rows"
    for layout in ("packed", "cache"):
        with pytest.raises(ValueError, match="causal LM"):
            tune_many_sets(loaded, sets, settings, layout=layout)
    with pytest.raises(ValueError, match="layout must be one of"):
        tune_many_sets(loaded, sets, settings, layout="sideways")  # type: ignore[arg-type]


def test_shared_prefix_length_keeps_the_last_prompt_token(tiny_model):
    _, tokenizer = tiny_model("llama")
    encoded = encode_pairs(tokenizer, definition_sets()[0], kind="causal")
    n = shared_prefix_length(encoded)
    assert all(e.prompt_ids[:n] == encoded[0].prompt_ids[:n] for e in encoded)
    assert n < min(len(e.prompt_ids) for e in encoded)
    assert n >= 10  # <s> Definition : is it an animal ? \n\n Input : the
    one = encode_pairs(tokenizer, definition_sets()[0][:1], kind="causal")
    assert shared_prefix_length(one) == len(one[0].prompt_ids) - 1


def test_sliding_windows_and_alibi_keep_the_full_rows(tiny_model):
    """A custom mask would drop a sliding window; ALiBi takes positions from the mask."""
    loaded = wrap(tiny_model("qwen2"), "qwen2")
    sets, settings = definition_sets(), config()
    encoded = [encode_pairs(loaded.tokenizer, s, kind="causal") for s in sets]
    model_config = loaded.model.config
    model_config.sliding_window = 4  # shorter than every row
    model_config.layer_types = ["sliding_attention"] * model_config.num_hidden_layers
    assert choose_layout(loaded, encoded, settings) == "rows"
    with pytest.raises(ValueError, match="sliding window"):
        choose_layout(loaded, encoded, settings, "packed")
    model_config.sliding_window = 128  # longer than every row: nothing is cut
    assert choose_layout(loaded, encoded, settings) == "packed"
    model_config.alibi = True
    assert choose_layout(loaded, encoded, settings) == "rows"


@pytest.mark.parametrize("arch", ARCHS)
def test_tune_set_gives_tune_on_pairs_adapter_and_losses(tiny_model, arch):
    """One set on the fast path: the adapter, the step losses and the tuned model's logits
    of a plain tune_on_pairs run; the base model comes back intact."""
    from tunelens.models.tuning import tune_set

    loaded = wrap(tiny_model(arch), arch)
    before = logits_of(loaded, PROBE)
    pairs = definition_sets(6)[1]
    settings = config(epochs=3, batch_size=4)
    plain = tune_on_pairs(loaded, pairs, settings)
    plain_logits = logits_of(loaded, PROBE, plain.model)
    plain_losses = list(plain.losses)
    plain.unload()
    fast = tune_set(loaded, pairs, settings)
    try:
        assert fast.steps == len(plain_losses) == 6
        assert_close_scaled(torch.tensor(fast.losses), torch.tensor(plain_losses), 1e-5)
        assert_close_scaled(logits_of(loaded, PROBE, fast.model), plain_logits, 1e-4)
    finally:
        fast.unload()
    assert not has_lora_layers(loaded.model)
    assert torch.equal(logits_of(loaded, PROBE), before)
