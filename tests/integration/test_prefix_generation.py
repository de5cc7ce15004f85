"""Shared-prefix generation: prompts with a common prefix give the plain path's greedy text,
with the prefix run once per group; encoder-decoders and sliding-window models fall back."""

from __future__ import annotations

import random

import pytest
import torch
from tests.helpers.models import prompt, wrap
from tests.helpers.numerics import assert_close_scaled

from tunelens.models import prefix_generation
from tunelens.models.predict import generate_predictions
from tunelens.models.prefix_generation import PrefixGroup, plan_groups, supports_prefix_cache

WORDS = "the a cat dog bird fish red blue green small big runs sits eats sleeps on under mat tree"


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS.split(), k=n))


def demonstrations(rng: random.Random, k: int) -> str:
    """An ICL prefix: ``k`` solved examples (about 8 tokens each), one per line."""
    return "".join(f"{prompt(words(rng, 4))} {rng.choice(['yes', 'no'])}\n" for _ in range(k))


def mixed_prompts(seed: int = 0) -> tuple[list[str], int]:
    """Two prefix groups (ICL sets of 4 and 3 demonstrations, 9 and 6 test items of 1-9
    words) and 4 unrelated zero-shot prompts, shuffled; and the number of groups (2)."""
    rng = random.Random(seed)
    texts = []
    for k, n in ((4, 9), (3, 6)):
        prefix = demonstrations(rng, k)
        texts += [prefix + prompt(words(rng, rng.randint(1, 9))) for _ in range(n)]
    texts += [prompt(words(rng, rng.randint(1, 9))) for _ in range(4)]
    rng.shuffle(texts)
    return texts, 2


class Spy:
    """Counts the prefix forwards of the fast path."""

    def __init__(self, monkeypatch):
        self.prefixes: list[int] = []
        inner = prefix_generation.prefix_cache

        def counted(model, prefix, device):
            self.prefixes.append(len(prefix))
            return inner(model, prefix, device)

        monkeypatch.setattr(prefix_generation, "prefix_cache", counted)


def embedded_tokens(model, run) -> int:
    """Token positions that went through the input embedding while ``run()`` ran."""
    seen = [0]
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _module, args, _out: seen.__setitem__(0, seen[0] + args[0].numel())
    )
    try:
        run()
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_shared_prefix_path_gives_the_plain_text_and_runs_each_prefix_once(
    tiny_model, arch, monkeypatch
):
    loaded = wrap(tiny_model(arch), arch)
    texts, n_groups = mixed_prompts()
    plain: list[str] = []
    plain_tokens = embedded_tokens(
        loaded.model,
        lambda: plain.extend(generate_predictions(loaded, texts, 6, share_prefix=False)),
    )
    assert any(plain)
    spy = Spy(monkeypatch)
    fast: list[str] = []
    # min_saved_tokens=0: every group the tree offers, however small (the default keeps
    # the plain path for groups below the model's break-even; tested below)
    fast_tokens = embedded_tokens(
        loaded.model,
        lambda: fast.extend(generate_predictions(loaded, texts, 6, min_saved_tokens=0)),
    )
    # Exact text: on these seeds no greedy step is a near-tie, so float noise between the
    # batch-of-one prefix forward and the padded batch does not change an argmax.
    assert fast == plain
    assert len(spy.prefixes) == n_groups
    assert all(n >= prefix_generation.MIN_PREFIX_TOKENS for n in spy.prefixes)
    # the prefixes went through the model once, not once per prompt
    assert fast_tokens < plain_tokens
    # many small batches within a group, and the group rows one by one: the same text
    for budget in (1, 120):
        assert (
            generate_predictions(loaded, texts, 6, max_batch_tokens=budget, min_saved_tokens=0)
            == plain
        )
    # a budget and a row cap together: the cap holds within a group too
    assert (
        generate_predictions(
            loaded, texts, 6, max_batch_tokens=10**4, batch_size=2, min_saved_tokens=0
        )
        == plain
    )
    assert len(spy.prefixes) == 4 * n_groups


def test_prefix_logits_match_the_plain_forward(tiny_model):
    """The cached prefix + mid-padded suffix gives the left-padded forward's next-token
    logits (within 1e-4: the two paths sum in different orders)."""
    loaded = wrap(tiny_model("llama"), "llama")
    texts, _ = mixed_prompts(seed=1)
    ids = [list(x) for x in loaded.tokenizer(texts)["input_ids"]]
    group = max(plan_groups(ids), key=lambda g: len(g.members))
    rows = [ids[i] for i in group.members]
    cache = prefix_generation.prefix_cache(loaded.model, rows[0][: group.prefix_length], "cpu")
    assert cache is not None
    input_ids, mask = prefix_generation.group_inputs(group.prefix_length, rows, 0, "cpu")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        fast = loaded.model(
            input_ids=input_ids[:, group.prefix_length :],
            attention_mask=mask,
            position_ids=positions[:, group.prefix_length :],
            cache=prefix_generation.expanded(cache, len(rows)),
        ).logits[:, -1]
        for j, row in enumerate(rows):
            alone = loaded.model(input_ids=torch.tensor([row])).logits[0, -1]
            assert_close_scaled(fast[j], alone, 1e-4)


def test_encoder_decoder_falls_back_to_the_plain_path(tiny_model, monkeypatch):
    loaded = wrap(tiny_model("t5", seed=2), "t5")
    texts, _ = mixed_prompts()
    plain = generate_predictions(loaded, texts, 5, share_prefix=False)
    spy = Spy(monkeypatch)
    assert generate_predictions(loaded, texts, 5, min_saved_tokens=0) == plain
    assert spy.prefixes == []


def test_groups_below_the_break_even_take_the_plain_path(tiny_model, monkeypatch):
    """By default a group is shared only where it saves the model's break-even in tokens:
    a tiny model's per-call cost dwarfs what its prefix forwards cost, so it keeps the
    plain path; lowering the bound to what the groups save turns the fast path on."""
    loaded = wrap(tiny_model("llama"), "llama")
    texts, n_groups = mixed_prompts()
    ids = [list(x) for x in loaded.tokenizer(texts)["input_ids"]]
    savings = sorted((len(g.members) - 1) * g.prefix_length for g in plan_groups(ids))
    assert len(savings) == n_groups
    assert prefix_generation.model_break_even(loaded.model) > savings[-1]
    plain = generate_predictions(loaded, texts, 5, share_prefix=False)
    spy = Spy(monkeypatch)
    assert generate_predictions(loaded, texts, 5) == plain
    assert spy.prefixes == []
    # a bound between the two groups' savings: only the larger group is shared
    assert generate_predictions(loaded, texts, 5, min_saved_tokens=savings[-1]) == plain
    assert len(spy.prefixes) == 1


def test_break_even_falls_with_model_size():
    """Fewer saved tokens pay for a group as parameters per layer grow (the per-call cost
    grows with layers, the saving with parameters per token)."""
    world = prefix_generation.break_even_tokens(1_623_552, 6)
    small = prefix_generation.break_even_tokens(480_000, 3)
    big = prefix_generation.break_even_tokens(6_700_000_000, 32)
    assert big <= 1 < world < small
    assert prefix_generation.break_even_tokens(20_000_000, 6) < world / 10


def test_fixed_batches_and_unshared_prompts_take_the_plain_path(tiny_model, monkeypatch):
    loaded = wrap(tiny_model("llama"), "llama")
    texts, _ = mixed_prompts()
    plain = generate_predictions(loaded, texts, 5, share_prefix=False)
    spy = Spy(monkeypatch)
    # batch_size alone: the batched LoRA probe's fixed batches, kept as they are
    assert (
        generate_predictions(loaded, texts, 5, batch_size=len(texts), min_saved_tokens=0) == plain
    )
    rng = random.Random(3)
    short = [prompt(words(rng, rng.randint(1, 9))) for _ in range(8)]  # share < 16 tokens
    assert generate_predictions(loaded, short, 5, min_saved_tokens=0) == generate_predictions(
        loaded, short, 5, share_prefix=False
    )
    assert spy.prefixes == []


def test_sliding_window_models_are_not_given_a_shared_cache():
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    def mistral(window):
        config = MistralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=window,
        )
        return MistralForCausalLM(config)

    assert supports_prefix_cache(mistral(None), GenerationConfig())
    assert not supports_prefix_cache(mistral(8), GenerationConfig())
    assert not supports_prefix_cache(mistral(None), GenerationConfig(cache_implementation="static"))


def test_plan_groups_prefers_the_longer_shared_prefix_per_task():
    header = list(range(100, 120))  # 20 tokens every prompt shares (a chat header)
    task_a = header + list(range(200, 240))  # + a 40-token definition
    task_b = header + list(range(300, 340))
    ids = [task_a + [1], task_b + [2], task_a + [3, 4], task_b + [5], task_a + [6]]
    assert plan_groups(ids) == [PrefixGroup(60, (0, 2, 4)), PrefixGroup(60, (1, 3))]
    # one prompt per task: only the header is shared
    assert plan_groups([task_a + [1], task_b + [2]]) == [PrefixGroup(20, (0, 1))]
    # a prompt that is the whole prefix keeps its last token to generate from
    assert plan_groups([task_a, task_a + [7]]) == [PrefixGroup(59, (0, 1))]
    assert plan_groups([task_a, task_a]) == [PrefixGroup(59, (0, 1))]
    # too short, or alone
    assert plan_groups([list(range(15)) + [1], list(range(15)) + [2]]) == []
    assert plan_groups([task_a]) == []
    # a group saving fewer tokens than min_saved is dropped: task_a's saves 2 x 60,
    # task_b's 1 x 60
    assert plan_groups(ids, min_saved=100) == [PrefixGroup(60, (0, 2, 4))]
    assert plan_groups(ids, min_saved=121) == []
