"""Label spaces of real SuperNI tasks: task190 names three labels, its subset keeps two."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelens.experiments.audit import eval_items, expected_guess_scores
from tunelens.tasks.labels import describe_label_space
from tunelens.tasks.loaders import load_superni_task

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "superni"
TASK190 = ROOT / "tasks" / "test" / "task190_snli_classification.json"
TASK843 = ROOT / "tasks" / "train" / "task843_financial_phrasebank_classification.json"


@pytest.mark.skipif(
    not TASK190.is_file(),
    reason=f"the shared SuperNI subset is absent ({TASK190} not found)",
)
def test_task190_has_the_three_labels_its_definition_names():
    task = load_superni_task(TASK190)
    used = {o for inst in task.instances for o in inst.outputs}
    assert used == {"C", "N"}  # the subset never uses "E"
    assert task.labels == ("C", "E", "N")
    space = describe_label_space(task)
    assert space.source == "definition" and space.unseen == ("E",)
    guess = expected_guess_scores(eval_items([task], 100))
    assert round(guess[task.name]["em"], 1) == 33.3


@pytest.mark.skipif(not TASK843.is_file(), reason=f"{TASK843} not found")
def test_task843_keeps_negative_so_simplified_definitions_state_it():
    from tunelens.tasks.variants import simplified_definition

    task = load_superni_task(TASK843)
    assert task.labels == ("negative", "neutral", "positive")
    assert "negative" in simplified_definition(task).definition
