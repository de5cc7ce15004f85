"""models/attention.py: each block's attention output projection and its head layout.

References are the models' own forwards observed with this test's hooks: the
projection's output is what the attention adds to the residual stream (block
input + attention + MLP = block output), and on a one-token prompt each head's
slice of the projection input is that head's value vector (softmax over one
position is 1).
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import tiny_config

from tunelens.models.attention import (
    AttentionProjection,
    UnsupportedAttentionError,
    attention_projections,
)

EXPECTED_NAMES = {
    "llama": "model.layers.{}.self_attn.o_proj",
    "mistral": "model.layers.{}.self_attn.o_proj",
    "qwen2": "model.layers.{}.self_attn.o_proj",
    "gemma": "model.layers.{}.self_attn.o_proj",
    "phi": "model.layers.{}.self_attn.dense",
    "phi3": "model.layers.{}.self_attn.o_proj",
    "gpt2": "transformer.h.{}.attn.c_proj",
}


def _causal(arch: str, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, 64)).eval()


@pytest.mark.parametrize("arch", sorted(EXPECTED_NAMES))
def test_finds_the_output_projection_with_its_heads(arch: str) -> None:
    model = _causal(arch)
    found = attention_projections(model)
    assert [p.block for p in found] == [0, 1]
    assert [p.name for p in found] == [EXPECTED_NAMES[arch].format(i) for i in (0, 1)]
    modules = dict(model.named_modules())
    for projection in found:
        assert projection.projection is modules[projection.name]
        assert (projection.n_heads, projection.head_dim) == (4, 8)


@pytest.mark.parametrize("arch", sorted(EXPECTED_NAMES))
def test_projection_output_is_what_attention_adds_to_the_residual(arch: str) -> None:
    """Block 0: h1 - h0 - mlp_out equals the projection's output (hooks of this test)."""
    model = _causal(arch)
    projection = attention_projections(model)[0]
    block = projection.attention
    while not hasattr(block, "mlp"):  # climb from the attention to its block
        block = next(m for m in model.modules() if block in list(m.children()))
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        projection.projection.register_forward_hook(lambda m, a, o: seen.update(attn=o)),
        block.mlp.register_forward_hook(lambda m, a, o: seen.update(mlp=o)),
    ]
    ids = torch.tensor([[5, 9, 11, 7, 20]])
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    added = states[1] - states[0] - seen["mlp"]
    torch.testing.assert_close(added, seen["attn"], atol=1e-5, rtol=1e-4)


def _values_one_token(arch: str, model: torch.nn.Module, block: int) -> torch.Tensor:
    """[n_heads, head_dim] value vectors each query head reads, from this test's own hooks."""
    seen: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        layer = model.transformer.h[block].attn.c_attn
        hook = layer.register_forward_hook(lambda m, a, o: seen.update(v=o[0, 0, 64:96]))
        n_kv = 4
    else:
        layer = model.model.layers[block].self_attn.v_proj
        hook = layer.register_forward_hook(lambda m, a, o: seen.update(v=o[0, 0]))
        n_kv = 2
    with torch.no_grad():
        model(input_ids=torch.tensor([[7]]))
    hook.remove()
    values = seen["v"].reshape(n_kv, 8)
    return values.repeat_interleave(4 // n_kv, dim=0)  # grouped-query: head h reads kv h // g


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_split_heads_slices_each_heads_output(arch: str) -> None:
    model = _causal(arch, seed=3)
    for projection in attention_projections(model):
        seen: dict[str, torch.Tensor] = {}
        hook = projection.projection.register_forward_pre_hook(
            lambda m, a, seen=seen: seen.update(x=a[0].detach())
        )
        with torch.no_grad():
            model(input_ids=torch.tensor([[7]]))
        hook.remove()
        heads = projection.split_heads(seen["x"])[0, 0]
        expected = _values_one_token(arch, model, projection.block)
        torch.testing.assert_close(heads, expected, atol=1e-5, rtol=1e-4)


def test_split_heads_refuses_a_wrong_width(tiny_model) -> None:
    model, _ = tiny_model("llama")
    projection: AttentionProjection = attention_projections(model)[0]
    with pytest.raises(ValueError, match="4 x 8"):
        projection.split_heads(torch.zeros(2, 31))


def test_t5_decoder_and_encoder_self_attention(tiny_model) -> None:
    model, _ = tiny_model("t5")
    decoder = attention_projections(model)
    encoder = attention_projections(model, encoder=True)
    assert [p.name for p in decoder] == [
        f"decoder.block.{i}.layer.0.SelfAttention.o" for i in (0, 1)
    ]
    assert [p.name for p in encoder] == [
        f"encoder.block.{i}.layer.0.SelfAttention.o" for i in (0, 1)
    ]


class _Config:
    num_hidden_layers = 2
    hidden_size = 8
    num_attention_heads = 2


class _NoAttention(torch.nn.Module):
    """Blocks that are plain linear layers: nothing to locate."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])


class _FusedAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 3  # 3 heads cannot tile an 8-wide projection input
        self.q_proj, self.o_proj = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _FusedAttention()


class _BadHeads(_NoAttention):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block() for _ in range(2)])


def test_unsupported_architectures_raise_a_clear_error() -> None:
    with pytest.raises(UnsupportedAttentionError, match="block 0 .*no self-attention"):
        attention_projections(_NoAttention())
    with pytest.raises(UnsupportedAttentionError, match="block 0: .*o_proj takes 8 features"):
        attention_projections(_BadHeads())
    assert issubclass(UnsupportedAttentionError, ValueError)


def test_under_a_lora_adapter_the_wrapped_modules_are_returned(tiny_model) -> None:
    peft = pytest.importorskip("peft")
    model, _ = tiny_model("llama")
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=2, target_modules=["o_proj", "q_proj"], lora_alpha=4)
    )
    found = attention_projections(wrapped)
    modules = dict(wrapped.named_modules())
    assert all(modules[p.name] is p.projection for p in found)
    assert all(
        type(p.projection).__name__ == "Linear" and hasattr(p.projection, "lora_A") for p in found
    )
