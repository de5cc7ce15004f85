"""Padding-free multi-task batches (collate_packed) against the padded batch they replace.

The reference is the padded batch through the model's own loss
(``labels=`` with prompt positions set to -100, transformers' shift and mean):
the packed batch must give the same loss and the same gradients, and a whole
multi-task tuning run the same adapter, for tiny Llama, GPT-2 and Qwen2.
"""

from __future__ import annotations

import random

import pytest
import torch
from tests.helpers.models import ANIMALS, LABELS, THINGS, prompt, wrap
from tests.helpers.numerics import assert_close_scaled

from tunelens.models.batching import (
    IGNORE_INDEX,
    collate_causal,
    collate_packed,
    encode_pairs,
    masked_lm_loss,
)
from tunelens.models.tuning import TuningConfig, multitask
from tunelens.models.tuning.multitask import multitask_tune

ARCHS = ("llama", "gpt2", "qwen2")


def mixed_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Pairs of very different lengths (1 to 12 words), as a multi-task batch mixes them."""
    rng = random.Random(seed)
    words = ANIMALS + THINGS
    return [
        (prompt(" ".join(rng.choices(words, k=rng.randint(1, 12)))), " " + rng.choice(LABELS))
        for _ in range(n)
    ]


def reference_loss(model, padded) -> torch.Tensor:
    """transformers' own causal LM loss on the padded batch (labels -100 off the targets)."""
    return model(
        input_ids=padded["input_ids"],
        attention_mask=padded["attention_mask"],
        labels=padded["labels"],
    ).loss


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_batch_gives_the_padded_loss_and_gradients(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    model = loaded.model
    encoded = encode_pairs(loaded.tokenizer, mixed_pairs(9), kind="causal")
    pad = loaded.tokenizer.pad_token_id or 0
    padded, packed = collate_causal(encoded, pad), collate_packed(encoded, pad)
    # fewer positions than the padded batch, every token once
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert packed["input_ids"].shape[0] < len(encoded)
    n_targets = int((padded["labels"] != IGNORE_INDEX).sum())
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == n_targets

    model.eval()  # gradients without dropout (GPT-2's would draw other masks per call)
    grads = []
    losses = []
    for compute in (
        lambda: reference_loss(model, padded),
        lambda: masked_lm_loss(model, packed, "causal", pad),
    ):
        model.zero_grad()
        loss = compute()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def mlp_widths(model, compute) -> dict[str, list[int]]:
    """Positions the first and the last block's MLP ran at while ``compute()`` ran."""
    from tunelens.models.blocks import blocks_of

    blocks = blocks_of(model)
    seen: dict[str, list[int]] = {"first": [], "last": []}
    handles = [  # registered before the loss's own hooks: they see the MLP's own output
        blocks[0].mlp.register_forward_hook(lambda m, i, o: seen["first"].append(o.shape[1])),
        blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen["last"].append(o.shape[1])),
    ]
    try:
        compute()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("arch", ARCHS)
def test_the_loss_runs_the_last_block_only_where_targets_are_predicted(tiny_model, arch):
    """The last block's MLP sees only the positions whose logits the loss reads (the
    equality with transformers' loss and gradients above holds with this cut)."""
    loaded = wrap(tiny_model(arch), arch)
    pad = loaded.tokenizer.pad_token_id or 0
    packed = collate_packed(encode_pairs(loaded.tokenizer, mixed_pairs(9), kind="causal"), pad)
    width = packed["input_ids"].shape[1]
    read = int((packed["labels"][:, 1:] != IGNORE_INDEX).any(0).sum())
    seen = mlp_widths(
        loaded.model, lambda: masked_lm_loss(loaded.model, packed, "causal", pad).backward()
    )
    assert read < width
    assert seen == {"first": [width], "last": [read]}


def test_activation_checkpointing_keeps_the_full_last_block(tiny_model):
    """Checkpointed blocks are recomputed in backward without the cut: none is made."""
    loaded = wrap(tiny_model("llama"), "llama")
    model = loaded.model
    pad = loaded.tokenizer.pad_token_id or 0
    encoded = encode_pairs(loaded.tokenizer, mixed_pairs(9), kind="causal")
    packed, padded = collate_packed(encoded, pad), collate_causal(encoded, pad)
    want = reference_loss(model, padded)
    # transformers 5 renamed it (the old name warns)
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    disable = getattr(
        model, "activation_checkpointing_disable", model.gradient_checkpointing_disable
    )
    enable()
    model.train()
    try:
        losses: list[torch.Tensor] = []

        def step() -> None:
            losses.append(masked_lm_loss(model, packed, "causal", pad))
            losses[-1].backward()

        seen = mlp_widths(model, step)
    finally:
        disable()
        model.eval()
    width = packed["input_ids"].shape[1]
    assert seen["last"][0] == width
    torch.testing.assert_close(losses[0].detach(), want.detach(), atol=1e-5, rtol=1e-5)


def test_rows_respect_the_capacity_and_keep_sequences_apart(tiny_model):
    loaded = wrap(tiny_model("llama"), "llama")
    encoded = encode_pairs(loaded.tokenizer, mixed_pairs(12, seed=1), kind="causal")
    lengths = [len(e.prompt_ids) + len(e.target_ids) for e in encoded]
    packed = collate_packed(encoded, 0, capacity=max(lengths) + 4)
    mask = packed["attention_mask"][:, 0]
    positions = packed["position_ids"]
    assert packed["input_ids"].shape[1] <= max(lengths) + 4
    for row in range(mask.shape[0]):
        # a block starts at position 0 after a token of another block (the padding block's
        # positions are all 0)
        starts = [
            t
            for t in range(positions.shape[1])
            if positions[row, t] == 0 and (t == 0 or positions[row, t - 1] != 0)
        ]
        for a, b in zip(starts, starts[1:], strict=False):
            # a token of one sequence sees nothing of the sequence before it
            assert not mask[row, b:, a:b].any()
            assert mask[row, b, b]


@pytest.mark.parametrize("arch", ARCHS)
def test_multitask_tuning_on_packed_batches_equals_padded(tiny_model, arch, monkeypatch):
    """A whole run: the same losses and adapter weights as the padded batches give."""
    from functools import partial

    from tunelens.models.batching import collate

    loaded = wrap(tiny_model(arch), arch)
    pairs = mixed_pairs(16, seed=2)
    config = TuningConfig(lora_r=4, learning_rate=1e-2, epochs=2, batch_size=8, seed=3)

    def lora_weights(tuned):
        return {n: p.detach().clone() for n, p in tuned.model.named_parameters() if "lora_" in n}

    packed_run = multitask_tune(loaded, pairs, config, progress=False)
    packed = (packed_run.losses, lora_weights(packed_run))
    packed_run.unload()
    pad = loaded.tokenizer.pad_token_id
    monkeypatch.setattr(
        multitask, "training_collate", lambda lm: partial(collate, pad_id=pad, kind=lm.kind)
    )
    padded_run = multitask_tune(loaded, pairs, config, progress=False)
    padded = (padded_run.losses, lora_weights(padded_run))
    padded_run.unload()
    assert len(packed[0]) == len(padded[0]) == 4
    assert_close_scaled(torch.tensor(packed[0]), torch.tensor(padded[0]), 1e-5)
    for name, weight in padded[1].items():
        assert_close_scaled(packed[1][name], weight, 1e-4)


def test_models_without_a_mask_taking_attention_are_padded(tiny_model):
    loaded = wrap(tiny_model("t5"), "t5")
    encoded = encode_pairs(loaded.tokenizer, mixed_pairs(4), kind="seq2seq")
    batch = multitask.training_collate(loaded)(encoded)
    assert batch["attention_mask"].dim() == 2 and "position_ids" not in batch
