"""`tunelens.measures.flops` against an independent count: torch's FlopCounterMode on a tiny Llama.

FlopCounterMode counts every matrix product of a real forward (and backward)
pass, 2 FLOPs per multiply-accumulate. With eager attention the linear layers
show up as ``aten.mm``/``aten.addmm`` and the two attention products (QK^T and
softmax x V, over the full T x T square) as ``aten.bmm``, so each term of the
formula can be checked on its own.
"""

from __future__ import annotations

import pytest

from tunelens.measures.flops import (
    TRAINING_PASSES,
    ModelShape,
    forward_flops,
    forward_flops_per_token,
    training_flops,
)
from tunelens.runs.plan import count_parameters

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HIDDEN, LAYERS, HEADS, INTER, VOCAB, T = 64, 3, 4, 256, 96, 24


def _tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval(), config


def _count(fn) -> dict[str, int]:
    """FLOPs per aten op name (mm, addmm, bmm, ...) of ``fn()``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op).split(".")[1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def _shape(config, *, head: bool) -> ModelShape:
    non_embedding = count_parameters(config.to_dict())[0]
    return ModelShape(non_embedding, LAYERS, HIDDEN, head=VOCAB * HIDDEN if head else 0)


def test_by_hand():
    shape = ModelShape(non_embedding=1000, layers=2, width=10)
    assert forward_flops(5, shape) == 2 * 1000 * 5 + 2 * 10 * 5 * 6
    assert forward_flops(5, shape, attention=False) == 10_000
    # the causal sum of Kaplan's per-token cost, n_ctx = 1 .. T
    assert forward_flops(5, shape) == sum(forward_flops_per_token(shape, t) for t in range(1, 6))
    assert training_flops(5, shape) == 3 * forward_flops(5, shape)
    assert training_flops(5, shape, weights="frozen") == 2 * forward_flops(5, shape)
    assert forward_flops(0, shape) == 0
    with pytest.raises(ValueError):
        training_flops(5, shape, weights="some")  # type: ignore[arg-type]
    assert "head_parameters" not in shape.to_json()


def test_forward_matches_flop_counter():
    model, config = _tiny_llama()
    ids = torch.randint(0, VOCAB, (1, T))
    with torch.no_grad():
        counts = _count(lambda: model(ids))
    linear = counts.get("mm", 0) + counts.get("addmm", 0)
    attention = counts["bmm"]

    # Weights: 2 N per token; N from config.json also holds the RMSNorm weights,
    # which do no matrix product: (2 L + 1) d of N, under 0.5% here.
    with_head = _shape(config, head=True)
    assert forward_flops(T, with_head, attention=False) == pytest.approx(linear, rel=5e-3)
    assert forward_flops(T, with_head, attention=False) >= linear
    # Kaplan's C_forward leaves the LM head out: exactly its product less.
    kaplan = _shape(config, head=False)
    lm_head = 2 * T * VOCAB * HIDDEN
    assert forward_flops(T, kaplan, attention=False) == pytest.approx(linear - lm_head, rel=5e-3)

    # Attention: eager computes QK^T and softmax x V over the whole T x T square,
    # 4 L d T^2; the formula counts the QK logits causally, L d T (T + 1).
    assert attention == 4 * LAYERS * HIDDEN * T * T
    context_term = forward_flops(T, kaplan) - forward_flops(T, kaplan, attention=False)
    assert context_term == pytest.approx(attention * (T + 1) / (4 * T))

    # Stated tolerance for the whole pass (LM head counted): the formula's
    # causal QK-only attention term undercounts the dense products by
    # (3T - 1)/4T of them, here about 3% of the total; it must stay within 5%.
    total = linear + attention
    assert forward_flops(T, with_head) == pytest.approx(total, rel=0.05)


def test_training_passes_match_flop_counter():
    model, config = _tiny_llama()
    ids = torch.randint(0, VOCAB, (1, T))
    shape = _shape(config, head=True)

    def step() -> None:
        model(ids, labels=ids).loss.backward()

    full = _count(step)
    full_linear = full.get("mm", 0) + full.get("addmm", 0)
    assert full_linear == pytest.approx(
        training_flops(T, shape, attention=False), rel=5e-3
    )  # forward + gradients of activations and of weights: 3 x forward

    # Frozen base (as under LoRA): only the activation gradients, 2 x forward.
    # Embeddings that require grad keep the backward pass running to the first layer.
    for p in model.parameters():
        p.requires_grad_(False)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)

    def frozen_step() -> None:
        model(inputs_embeds=embeds, labels=ids).loss.backward()

    frozen = _count(frozen_step)
    frozen_linear = frozen.get("mm", 0) + frozen.get("addmm", 0)
    assert frozen_linear == pytest.approx(
        training_flops(T, shape, weights="frozen", attention=False), rel=5e-3
    )
    assert TRAINING_PASSES == {"full": 3.0, "frozen": 2.0}
