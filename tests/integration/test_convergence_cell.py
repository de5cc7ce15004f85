"""A convergence cell on the world model: batched per-set tuning equals sequential PEFT runs."""

from __future__ import annotations

import numpy as np
import pytest

import tunelens.models.tuning as tuning
from tunelens.experiments.convergence import run_convergence_cell
from tunelens.models.loading import load_model
from tunelens.spec import TuningSpec
from tunelens.tasks.world.generator import generate_world

PARAMS = {
    "control": "none",
    "n_pairs": 4,
    "anchors_per_set": 1,
    "k": 2,
    "relevance": "same",
    "flip_fraction": 0.0,
    "template": "plain",
    "definition": False,
    "model": "world",
    "tuning": TuningSpec(epochs=3, batch_size=2).model_dump(),
}


def sequential_sets(loaded, sets, config, **_):
    """The reference: one plain tune_on_pairs per set, adapters read back."""
    states = []
    for pairs in sets:
        tuned = tuning.tune_on_pairs(loaded, pairs, config)
        states.append(tuned.adapter_state())
        tuned.unload()
    return states


@pytest.fixture(scope="module")
def tasks():
    return generate_world(0).heldout[:6]


def test_batched_tuning_cell_equals_sequential_runs(tasks, monkeypatch):
    loaded = load_model("world")
    batched = run_convergence_cell(loaded, tasks, PARAMS, seed=3)
    monkeypatch.setattr(tuning, "tune_many_sets", sequential_sets)
    reference = run_convergence_cell(loaded, tasks, PARAMS, seed=3)
    assert batched["n_pairs"] == 4 and batched["tasks"] == reference["tasks"]
    for name in ("icl_it", "anchor_icl", "anchor_it"):
        np.testing.assert_allclose(batched["cos"][name], reference["cos"][name], atol=1e-4)
    assert batched["correct"] == reference["correct"]
    # Tuning moved the model: the IT states differ from the anchor's somewhere.
    assert np.min(batched["cos"]["anchor_it"]) < 0.9999


def test_cell_with_patching_behaviour_and_calibrated_measures(tasks):
    loaded = load_model("world")
    params = {**PARAMS, "n_pairs": 5, "patching": True, "patching_layers": []}
    result = run_convergence_cell(loaded, tasks, params, seed=1)
    n, n_layers = 5, result["n_layers"]
    patch, behaviour = result["patching"], result["behaviour"]
    assert patch["layers"] == list(range(n_layers))
    last = n_layers - 1
    # The ICL state patched after the last block gives the ICL distribution exactly ...
    np.testing.assert_allclose(patch["icl"]["kl_to_icl"][last], 0.0, atol=1e-6)
    assert patch["icl"]["correct"][last] == behaviour["label_correct"]["icl"]
    # ... the IT state the IT distribution (LoRA leaves the final norm and head alone) ...
    np.testing.assert_allclose(patch["it"]["kl_to_icl"][last], behaviour["kl_icl_it"], atol=1e-5)
    # ... and layer 0 (the shared last token's embedding) changes nothing.
    np.testing.assert_allclose(patch["icl"]["kl_to_icl"][0], behaviour["kl_icl_anchor"], atol=1e-5)
    for measure in ("cos_centered", "cos_standardized", "floor", "floor_raw"):
        assert np.asarray(result[measure]["icl_it"], dtype=float).shape == (n, n_layers)
    assert len(result["sets"]) == n and result["adapted"]["weights"] == ["q", "v"]
    assert all(0 <= x <= 1 for x in behaviour["agree"])
    assert min(behaviour["kl_icl_it"]) >= -1e-9
