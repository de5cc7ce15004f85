"""Activation patching on tiny random Llama, GPT-2, Qwen2 and T5 configs built in code.

References are independent of the hooks under test: the patched forward is
compared with a forward through a model whose block is *replaced* by a wrapper
module that swaps the state, and recorded states with ``output_hidden_states``.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import prompt, wrap
from tests.helpers.numerics import scaled

from tunelens.models.patching import (
    block_modules,
    label_token_ids,
    last_token_forward,
    n_patch_layers,
)

CAUSAL = ("llama", "gpt2", "qwen2")
ANCHORS = [prompt("the cat"), prompt("a big red dog runs"), prompt("small fish")]
ICL = [
    prompt("the dog") + " yes\n" + prompt("a pear") + " no\n" + p for p in ANCHORS
]  # demonstrations + the same anchor


class SwapOutput(torch.nn.Module):
    """Runs ``inner`` and replaces its hidden output at position ``pos`` of each row."""

    def __init__(
        self, inner: torch.nn.Module, new: torch.Tensor, pos: torch.Tensor, on_input=False
    ):
        super().__init__()
        self.inner, self.new, self.pos, self.on_input = inner, new, pos, on_input

    def _swap(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        for row in range(hidden.shape[0]):
            hidden[row, int(self.pos[row])] = self.new[row]
        return hidden

    def forward(self, hidden, *args, **kwargs):
        if self.on_input:
            return self.inner(self._swap(hidden), *args, **kwargs)
        out = self.inner(hidden, *args, **kwargs)
        if isinstance(out, tuple):
            return (self._swap(out[0]), *out[1:])
        return self._swap(out)


def _block_list(model: torch.nn.Module) -> torch.nn.ModuleList:
    for attr in ("model.layers", "transformer.h"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise AssertionError("unknown architecture")


def manual_patched_logits(loaded, text: str, layer: int, state: torch.Tensor) -> torch.Tensor:
    """One prompt, unpadded: replace block ``layer``'s output (layer 0: block 0's input)."""
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    pos = torch.tensor([ids.shape[1] - 1])
    blocks = _block_list(loaded.model)
    index = max(layer - 1, 0)
    original = blocks[index]
    blocks[index] = SwapOutput(original, state[None], pos, on_input=layer == 0)
    try:
        with torch.no_grad():
            return loaded.model(input_ids=ids).logits[0, -1]
    finally:
        blocks[index] = original


@pytest.mark.parametrize("arch", CAUSAL)
def test_states_are_the_residual_stream_and_logits_the_model_s(arch, tiny_model):
    loaded = wrap(tiny_model(arch), arch)
    got = last_token_forward(loaded, ANCHORS)
    assert got.states.shape[1] == n_patch_layers(loaded) == 3
    for i, text in enumerate(ANCHORS):
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = loaded.model(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(got.logits[i], out.logits[0, -1], atol=1e-5, rtol=1e-5)
        for layer in range(len(out.hidden_states) - 1):  # the last entry is after the final norm
            torch.testing.assert_close(
                got.states[i, layer], out.hidden_states[layer][0, -1], atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("arch", CAUSAL)
def test_self_patch_leaves_logits_unchanged(arch, tiny_model):
    loaded = wrap(tiny_model(arch), arch)
    plain = last_token_forward(loaded, ANCHORS)
    for layer in range(n_patch_layers(loaded)):
        patched = last_token_forward(loaded, ANCHORS, patch_layer=layer, patch_states=plain.states)
        assert (patched.logits - plain.logits).abs().max() < scaled(1e-5, plain.logits)


@pytest.mark.parametrize("arch", CAUSAL)
def test_patch_equals_manual_forward_that_swaps_the_state(arch, tiny_model):
    loaded = wrap(tiny_model(arch), arch)
    source = last_token_forward(loaded, ICL).states
    for layer in range(n_patch_layers(loaded)):
        patched = last_token_forward(loaded, ANCHORS, patch_layer=layer, patch_states=source)
        for i, text in enumerate(ANCHORS):
            expected = manual_patched_logits(loaded, text, layer, source[i, layer])
            torch.testing.assert_close(patched.logits[i], expected, atol=1e-5, rtol=1e-5)
        if layer > 0:  # patching changed something
            assert (patched.logits - last_token_forward(loaded, ANCHORS).logits).abs().max() > 1e-4


@pytest.mark.parametrize("arch", CAUSAL)
def test_icl_state_at_last_layer_reproduces_icl_distribution(arch, tiny_model):
    loaded = wrap(tiny_model(arch), arch)
    icl = last_token_forward(loaded, ICL)
    last = n_patch_layers(loaded) - 1
    patched = last_token_forward(loaded, ANCHORS, patch_layer=last, patch_states=icl.states)
    torch.testing.assert_close(
        torch.softmax(patched.logits, -1), torch.softmax(icl.logits, -1), atol=1e-6, rtol=1e-5
    )


def test_patching_through_a_lora_wrapper(tiny_model):
    from tests.helpers.models import memorisable_pairs

    from tunelens.models.tuning import tune_on_pairs
    from tunelens.spec import TuningSpec

    loaded = wrap(tiny_model("llama"), "llama")
    tuned = tune_on_pairs(loaded, memorisable_pairs(), TuningSpec(epochs=2, batch_size=4))
    try:
        probe = tuned.as_loaded()
        assert len(block_modules(probe)) == 2
        own = last_token_forward(probe, ANCHORS)
        again = last_token_forward(probe, ANCHORS, patch_layer=1, patch_states=own.states)
        assert (again.logits - own.logits).abs().max() < scaled(1e-5, own.logits)
    finally:
        tuned.unload()


def test_encoder_decoder_patches_the_encoder_last_token(tiny_model):
    loaded = wrap(tiny_model("t5"), "t5")
    plain = last_token_forward(loaded, ANCHORS)
    assert plain.states.shape[1] == 3  # embeddings + 2 encoder blocks
    for layer in range(3):
        same = last_token_forward(loaded, ANCHORS, patch_layer=layer, patch_states=plain.states)
        assert (same.logits - plain.logits).abs().max() < scaled(1e-5, plain.logits)
    icl = last_token_forward(loaded, ICL)
    moved = last_token_forward(loaded, ANCHORS, patch_layer=1, patch_states=icl.states)
    assert (moved.logits - plain.logits).abs().max() > 1e-5


def test_label_token_ids_are_first_tokens_of_targets(tiny_model):
    loaded = wrap(tiny_model("llama"), "llama")
    ids = label_token_ids(loaded.tokenizer, ["yes", "no", "yes"])
    vocab = loaded.tokenizer.get_vocab()
    assert ids == [vocab["yes"], vocab["no"]]


@pytest.fixture(scope="module")
def matrix_models(tmp_path_factory):
    from tests.helpers.models import MATRIX_ARCHITECTURES, save_tiny_model

    root = tmp_path_factory.mktemp("patching-matrix")
    for arch in MATRIX_ARCHITECTURES:
        save_tiny_model(arch, root / arch)
    return root


@pytest.mark.parametrize(
    "arch", ["llama", "mistral", "qwen2", "gemma", "phi", "phi3", "gpt2", "t5", "bart"]
)
def test_patching_on_the_architecture_matrix(matrix_models, arch):
    """Hooks find the blocks of every architecture loaded from disk: self-patch is exact,
    and (decoder-only) the ICL state at the last layer gives the ICL logits."""
    from tunelens.models.loading import load_model

    loaded = load_model(str(matrix_models / arch))
    anchors = ["Input : the cat sat\nOutput :", "Input : a dog\nOutput :"]
    icl_prompts = ["Input : red\nOutput : yes\n" + a for a in anchors]
    plain = last_token_forward(loaded, anchors)
    icl = last_token_forward(loaded, icl_prompts)
    n = n_patch_layers(loaded)
    assert n == 3
    for layer in range(n):
        same = last_token_forward(loaded, anchors, patch_layer=layer, patch_states=plain.states)
        assert (same.logits - plain.logits).abs().max() < scaled(1e-5, plain.logits)
    if loaded.kind == "causal":
        last = last_token_forward(loaded, anchors, patch_layer=n - 1, patch_states=icl.states)
        assert (last.logits - icl.logits).abs().max() < scaled(1e-5, icl.logits)
