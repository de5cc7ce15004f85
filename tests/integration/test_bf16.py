"""bf16 as the papers ran it (issue 26.5), on CPU with the embedded world model.

The base model in bfloat16, LoRA adapters in float32 on it (PEFT's
``autocast_adapter_dtype``; the batched path keeps them float32 too), hidden
states within bf16 rounding of float32's, and a default-sized convergence cell
without a NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunelens.models.loading import load_model
from tunelens.models.paths import world_model_dir
from tunelens.tasks.world.generator import generate_world

pytestmark = pytest.mark.skipif(
    not (world_model_dir() / "config.json").is_file(),
    reason="the embedded world model is not installed",
)

BF16_EPS = 2.0**-8  # bfloat16 keeps 8 significant bits


@pytest.fixture(scope="module")
def models():
    return load_model("world"), load_model("world", dtype="bfloat16")


@pytest.fixture(scope="module")
def pairs():
    task = generate_world(0).heldout[0]
    return [(f"Input: {i.input}\nOutput:", f" {i.outputs[0]}") for i in task.instances[:8]]


def test_bf16_states_are_float32_states_within_bf16_rounding(models):
    from tunelens.models.hidden_states import capture_last_token_states

    full, half = models
    assert next(half.model.parameters()).dtype == torch.bfloat16
    prompts = [f"Input: {i.input}\nOutput:" for i in generate_world(0).heldout[1].instances[:6]]
    want = capture_last_token_states(full, prompts)
    got = capture_last_token_states(half, prompts).float()
    assert torch.isfinite(got).all()
    # Per prompt and layer: the error relative to the state's own size. bf16 rounds each
    # weight and activation by up to 2^-9; over the blocks that adds up to a few percent,
    # never to the size of the state.
    error = (got - want).norm(dim=-1) / want.norm(dim=-1)
    assert float(error.max()) < 12 * BF16_EPS, error.max(dim=0).values
    assert float(error[:, 0].max()) < BF16_EPS  # the embeddings: one rounding
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert float(cosine.min()) > 0.99


def test_lora_adapters_train_in_float32_on_a_bf16_base(models, pairs):
    from tunelens.models.tuning import TuningConfig, attach_lora, tune_many_sets, tune_on_pairs

    _, half = models
    config = TuningConfig(epochs=4, batch_size=4)
    tuned = tune_on_pairs(half, pairs, config)
    try:
        lora = {n: p for n, p in tuned.model.named_parameters() if "lora_" in n}
        assert lora and all(p.dtype == torch.float32 for p in lora.values())
        assert all(p.requires_grad for p in lora.values())
        base = [p for n, p in tuned.model.named_parameters() if "lora_" not in n]
        assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in base)
        assert all(math.isfinite(x) for x in tuned.losses)
        assert tuned.losses[-1] < 0.5 * tuned.losses[0]
        sequential_losses = list(tuned.losses)
    finally:
        tuned.unload()
    losses: list[list[float]] = []
    (batched,) = tune_many_sets(half, [pairs], config, losses=losses)
    assert all(t.dtype == torch.float32 for t in batched.values())
    # Batched and sequential runs round the bf16 base's activations differently; AdamW
    # turns that into different weights where gradients are near zero, but the runs agree
    # on what they do: the same losses up to bf16 rounding.
    got, want = np.array(losses[0]), np.array(sequential_losses)
    assert np.abs(got - want).max() <= 0.05 * want.max(), (got, want)
    probe = attach_lora(half, config, state=batched)
    try:
        adapters = [p for n, p in probe.model.named_parameters() if "lora_" in n]
        assert adapters and all(p.dtype == torch.float32 for p in adapters)
    finally:
        probe.unload()


def test_a_default_sized_convergence_cell_in_bf16_has_no_nan(models):
    from tunelens.experiments.convergence import run_convergence_cell
    from tunelens.experiments.convergence.spec import ConvergenceSpec

    full, half = models
    section = ConvergenceSpec()  # the defaults: 30 pairs, k = 8, 10 epochs, patching on
    tasks = generate_world(0).heldout
    params = {
        "model": "world",
        "dtype": "bfloat16",
        "device": "cpu",
        "tasks": section.tasks,
        "n_pairs": section.n_pairs,
        "anchors_per_set": section.anchors_per_set,
        "template": section.template,
        "k": section.k[0],
        "k_max": max(section.k),
        "flip_fraction": section.flip_fraction[0],
        "relevance": section.relevance[0],
        "definition": section.definition[0],
        "control": "none",
        "tuning": section.tuning.model_dump(),
        "patching": True,
        "patching_layers": section.patching_layers,
    }
    result = run_convergence_cell(half, tasks, params, seed=0)
    assert result["n_pairs"] == section.n_pairs
    reference = run_convergence_cell(full, tasks, {**params, "dtype": "float32"}, seed=0)
    # No NaN that float32 does not have too (a centred cosine of the embeddings layer is
    # undefined in both: every prompt ends in the same token).
    nans = _nan_paths(result)
    assert nans <= _nan_paths(reference), sorted(nans - _nan_paths(reference))[:5]
    cos = np.asarray(result["cos"]["icl_it"], dtype=float)
    assert cos.size and np.isfinite(cos[:, 1:]).all()


def _nan_paths(result) -> set[str]:
    nans: set[str] = set()

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            nans.add(path)

    walk(result, "")
    return nans
