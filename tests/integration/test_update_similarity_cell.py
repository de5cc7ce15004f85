"""SimAOU of a convergence cell equals a manual computation from plain forwards.

The reference runs each prompt alone (no packing, no padding, no batched LoRA) through
a freshly loaded tiny Llama, with this test's own hooks on every block's ``o_proj``
(the attention output) and ``output_hidden_states`` (the residual stream); the IT
forwards load each set's saved adapter with PEFT. SimAOU is then computed here:
each last-token vector scaled to unit length, the zero-shot one subtracted, cosine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tunelens.experiments.convergence.experiment as convergence
from tunelens.experiments.convergence import run_convergence_cell
from tunelens.models.loading import load_model
from tunelens.spec import TuningSpec
from tunelens.tasks.world.generator import generate_world

PARAMS = {
    "control": "none",
    "n_pairs": 5,
    "anchors_per_set": 1,
    "k": 2,
    "relevance": "same",
    "flip_fraction": 0.0,
    "template": "plain",
    "definition": True,
    "model": "llama",
    "tuning": TuningSpec(epochs=3, batch_size=2, learning_rate=5e-3).model_dump(),
}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.helpers.models import save_tiny_model

    return save_tiny_model("llama", tmp_path_factory.mktemp("llama") / "llama")


def _plain_reads(model, tokenizer, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """(attention outputs [blocks, hidden], residual stream [layers, hidden]) at the last
    token of ``prompt`` run alone, read by this test's own hooks on each o_proj."""
    layers = model.model.layers
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_hook(
            lambda m, a, out, b=b: seen.__setitem__(b, out[0, -1].detach().clone())
        )
        for b, layer in enumerate(layers)
    ]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    attention = torch.stack([seen[b] for b in range(len(layers))]).double().numpy()
    residual = torch.stack([h[0, -1] for h in states]).double().numpy()
    return attention, residual


def _manual_simaou(zs: np.ndarray, icl: np.ndarray, it: np.ndarray) -> np.ndarray:
    out = np.full(zs.shape[0], np.nan)
    for layer in range(zs.shape[0]):
        z = zs[layer] / np.linalg.norm(zs[layer])
        u = icl[layer] / np.linalg.norm(icl[layer]) - z
        v = it[layer] / np.linalg.norm(it[layer]) - z
        if np.linalg.norm(u) > 1e-9 and np.linalg.norm(v) > 1e-9:
            out[layer] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return out


def _as_array(rows: list) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)  # null -> NaN


def test_simaou_equals_plain_forwards_with_hooks(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tasks = generate_world(0).heldout[:6]
    loaded = load_model(str(tiny_llama))
    adapters = tmp_path / "adapters"
    result = run_convergence_cell(loaded, tasks, PARAMS, seed=3, adapters_dir=str(adapters))
    prompts = convergence._cell_prompts(loaded, tasks, PARAMS, 3)
    tokenizer = loaded.tokenizer
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    updates = result["update_similarity"]
    got_attention = _as_array(updates["attention"]["sim"])
    got_residual = _as_array(updates["residual"]["sim"])
    assert got_attention.shape == got_residual.shape == (5, 3)  # 2 blocks + embeddings
    for i, (anchor, icl, owner) in enumerate(
        zip(prompts.anchor, prompts.icl, prompts.owners, strict=True)
    ):
        zs_a, zs_r = _plain_reads(base, tokenizer, anchor)
        icl_a, icl_r = _plain_reads(base, tokenizer, icl)
        fresh = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
        tuned = PeftModel.from_pretrained(fresh, adapters / f"set-{owner}").eval()
        it_a, it_r = _plain_reads(tuned.get_base_model(), tokenizer, anchor)
        assert np.abs(it_a - zs_a).max() > 1e-3  # tuning moved the attention outputs
        want_attention = _manual_simaou(zs_a, icl_a, it_a)
        want_residual = _manual_simaou(zs_r, icl_r, it_r)
        assert np.isnan(got_attention[i, 0]) and np.isnan(got_residual[i, 0])
        np.testing.assert_allclose(got_attention[i, 1:], want_attention, atol=1e-4)
        np.testing.assert_allclose(got_residual[i, 1:], want_residual[1:], atol=1e-4)


def test_batched_and_per_set_probes_give_the_same_simaou(tiny_llama):
    tasks = generate_world(0).heldout[:6]
    loaded = load_model(str(tiny_llama))
    fast = run_convergence_cell(loaded, tasks, PARAMS, seed=5)["update_similarity"]
    slow = run_convergence_cell(loaded, tasks, PARAMS, seed=5, batched_probe=False)[
        "update_similarity"
    ]
    for series in ("attention", "residual"):
        for key in ("sim", "floor"):
            np.testing.assert_allclose(
                _as_array(fast[series][key]), _as_array(slow[series][key]), atol=1e-3
            )
