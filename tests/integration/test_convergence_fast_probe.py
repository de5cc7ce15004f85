"""The batched IT probe of a convergence cell equals probing one PEFT-wrapped set at a time.

``run_convergence_cell`` probes every tuned set in one batched-LoRA forward and
one generate (one adapter per row); ``batched_probe=False`` is the per-set
reference. Hidden states, logits and predictions must agree, and so must the
whole cell result apart from float noise. The label scores are compared too: the
batched probe scores every label continuation with the adapter stack lined up
with the rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.helpers.numerics import assert_close_scaled

import tunelens.experiments.convergence.experiment as convergence
from tunelens.experiments.convergence import run_convergence_cell
from tunelens.models.loading import load_model
from tunelens.spec import TuningSpec
from tunelens.tasks.world.generator import generate_world

PARAMS = {
    "control": "none",
    "n_pairs": 6,
    "anchors_per_set": 2,
    "k": 2,
    "relevance": "same",
    "flip_fraction": 0.0,
    "template": "plain",
    "definition": False,
    "model": "world",
    "tuning": TuningSpec(epochs=3, batch_size=2, learning_rate=5e-3).model_dump(),
    "patching": True,
    "patching_layers": [],
}


@pytest.fixture(scope="module")
def tasks():
    return generate_world(0).heldout[:6]


def assert_close(a: Any, b: Any, path: str = "") -> None:
    """Equal JSON trees, floats within 1e-4 (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is b, path
        else:
            assert_close_scaled(a, b, 1e-4, msg=path, equal_nan=True)
    else:
        assert a == b, path


def run_both(loaded, tasks, params, monkeypatch):
    """The cell both ways; the IT readings of each (states, logits, block states, label
    scores, predictions)."""
    import tunelens.models.hidden_states as hidden_states
    import tunelens.models.predict as predict
    import tunelens.models.scoring as scoring

    fast_seen: list[tuple] = []
    real_probe = convergence._probe_batched

    def probe(*args, **kwargs):
        fast_seen.append(out := real_probe(*args, **kwargs))
        return out

    monkeypatch.setattr(convergence, "_probe_batched", probe)
    fast = run_convergence_cell(loaded, tasks, params, seed=3)
    assert len(fast_seen) == 1  # one batched probe for every set

    # The reference probes PEFT-wrapped copies (model is not the base): record those calls.
    seen: dict[str, list] = {"h": [], "fw": [], "pred": []}
    wraps = [
        (hidden_states, "capture_last_token_states", "h"),
        (scoring, "score_label_continuations", "fw"),
        (predict, "generate_predictions", "pred"),
    ]
    for module, name, key in wraps:
        real = getattr(module, name)

        def spy(probe_loaded, *args, _real=real, _key=key, **kwargs):
            out = _real(probe_loaded, *args, **kwargs)
            if probe_loaded.model is not loaded.model:
                seen[_key].append(out)
            return out

        monkeypatch.setattr(module, name, spy)
    reference = run_convergence_cell(loaded, tasks, params, seed=3, batched_probe=False)
    assert len(fast_seen) == 1  # the reference took the per-set path
    # Sets own consecutive rows, probed in set order: concatenated, they are in row order.
    ref_it = (
        np.concatenate([h.numpy() for h in seen["h"]]),
        np.concatenate([r.logits.numpy() for r in seen["fw"]]),
        np.concatenate([r.states.numpy() for r in seen["fw"]]),
        np.concatenate([np.concatenate(r.summed) for r in seen["fw"]]),
        [p for preds in seen["pred"] for p in preds],
    )
    hidden, scores, preds = fast_seen[0]
    fast_it = (
        hidden,
        scores.logits.numpy(),
        scores.states.numpy(),
        np.concatenate(scores.summed),
        preds,
    )
    return fast, reference, fast_it, ref_it


def check(loaded, tasks, params, monkeypatch):
    fast, reference, fast_it, ref_it = run_both(loaded, tasks, params, monkeypatch)
    n = fast["n_pairs"]
    for got, want in zip(fast_it[:3], ref_it[:3], strict=True):
        assert got.shape == want.shape and got.shape[0] == n
        assert_close_scaled(got, want, 1e-4)
    assert fast_it[3].shape == ref_it[3].shape and fast_it[3].shape[0] >= n
    np.testing.assert_allclose(fast_it[3], ref_it[3], rtol=1e-4, atol=1e-4)  # label scores
    assert fast_it[4] == ref_it[4]  # identical predictions
    assert fast["predictions"] == reference["predictions"]
    assert_close(fast, reference)
    return fast


# With the definition the prompts differ in length, so the batch is not in input order.
# PROBE_ROWS 2: the rows run in chunks of two, each with its own adapter stack.
@pytest.mark.parametrize(
    ("anchors_per_set", "definition", "probe_rows"), [(1, False, 64), (2, True, 2)]
)
def test_world_model_cell_batched_probe_equals_per_set(
    tasks, monkeypatch, anchors_per_set, definition, probe_rows
):
    monkeypatch.setattr(convergence, "PROBE_ROWS", probe_rows)
    loaded = load_model("world")
    params = {**PARAMS, "anchors_per_set": anchors_per_set, "n_pairs": 5, "definition": definition}
    fast = check(loaded, tasks, params, monkeypatch)
    assert np.min(fast["cos"]["anchor_it"]) < 0.9999  # the adapters moved the states


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "t5"])
def test_tiny_architectures_batched_probe_equals_per_set(tasks, monkeypatch, tmp_path, arch):
    from tests.helpers.models import save_tiny_model

    loaded = load_model(str(save_tiny_model(arch, tmp_path / arch)))
    params = {**PARAMS, "model": arch, "n_pairs": 5, "definition": True}
    fast = check(loaded, tasks, params, monkeypatch)
    assert np.min(fast["cos"]["anchor_it"]) < 0.9999
