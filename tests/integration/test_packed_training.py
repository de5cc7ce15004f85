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
    torch.testing.assert_close(torch.tensor(packed[0]), torch.tensor(padded[0]), atol=1e-5, rtol=0)
    for name, weight in padded[1].items():
        torch.testing.assert_close(packed[1][name], weight, atol=1e-4, rtol=0)


def test_models_without_a_mask_taking_attention_are_padded(tiny_model):
    loaded = wrap(tiny_model("t5"), "t5")
    encoded = encode_pairs(loaded.tokenizer, mixed_pairs(4), kind="seq2seq")
    batch = multitask.training_collate(loaded)(encoded)
    assert batch["attention_mask"].dim() == 2 and "position_ids" not in batch
