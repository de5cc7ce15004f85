"""Convergence and decide capture their shared-prefix prompts in packed rows, with plain states.

Each call of ``capture_packed`` is checked, on the prompts the experiment
built, against the padded per-batch path (itself equal to one forward per
prompt, tests/integration/test_hidden_states.py) and against how many
tokens the packed rows computed: fewer than the prompts hold.
"""

from __future__ import annotations

import pytest
from tests.helpers.numerics import assert_close_scaled

import tunelens.models.hidden_states as hs
from tunelens.models.loading import load_model
from tunelens.models.packing import pack_rows
from tunelens.models.paths import world_model_dir
from tunelens.spec import TuningSpec
from tunelens.tasks.world.generator import generate_world

pytestmark = pytest.mark.skipif(
    not (world_model_dir() / "config.json").is_file(),
    reason="the embedded world model is not installed",
)


def checked_capture(monkeypatch) -> list[tuple[int, int]]:
    """Wrap capture_packed: compare with the padded path; record (prompt tokens, row tokens)."""
    real = hs.capture_packed
    seen: list[tuple[int, int]] = []

    def spy(loaded, prompts, **kwargs):
        got = real(loaded, prompts, **kwargs)
        want = hs.capture_last_token_states(loaded, list(prompts))
        assert_close_scaled(got, want, 1e-4)
        ids = loaded.tokenizer(list(prompts))["input_ids"]
        packed = sum(
            len(r.ids) for r in pack_rows(ids, hidden_size=loaded.model.config.hidden_size)
        )
        seen.append((sum(map(len, ids)), packed))
        return got

    monkeypatch.setattr(hs, "capture_packed", spy)
    return seen


def test_convergence_anchors_sharing_a_set(monkeypatch):
    from tunelens.experiments.convergence import run_convergence_cell

    seen = checked_capture(monkeypatch)
    params = {
        "control": "none",
        "n_pairs": 4,
        "anchors_per_set": 2,  # two anchors per demonstration set: one shared ICL prefix
        "k": 2,
        "relevance": "same",
        "flip_fraction": 0.0,
        "template": "plain",
        "definition": True,
        "model": "world",
        "tuning": TuningSpec(epochs=1, batch_size=2).model_dump(),
    }
    result = run_convergence_cell(
        load_model("world"), generate_world(0).heldout[:4], params, seed=0
    )
    assert result["n_pairs"] == 4
    assert len(seen) == 2  # anchor prompts, ICL prompts
    assert all(packed < total for total, packed in seen)


def test_decide_similarity_shares_the_demonstrations(monkeypatch):
    from tunelens.experiments.decide.config import make_config
    from tunelens.experiments.decide.methods import run_method, similarity_method
    from tunelens.experiments.decide.split import stratified_split

    seen = checked_capture(monkeypatch)
    task = generate_world(0).heldout[0]
    config = make_config(
        k=[2],
        tune_sizes=[4],
        test_size=8,
        demo_size=4,
        similarity_items=6,
        tuning=TuningSpec(epochs=1, batch_size=4),
    )
    split = stratified_split(task.instances, test_size=8, demo_size=4, seed=config.seed)
    method = similarity_method(task, split, config, "world", 2)
    result = run_method(method, load_model("world"), task, split, config)
    assert result["n_items"] == 6
    assert len(seen) == 3  # anchor, ICL, tuned-model anchor
    total, packed = seen[1]
    assert packed < total  # the demonstrations once, not once per item
