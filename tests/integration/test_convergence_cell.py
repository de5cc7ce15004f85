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
