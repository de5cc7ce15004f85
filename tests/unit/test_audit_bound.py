"""Under definition-only evaluation, a method that ignores the definition scores <= 50.0.

The world's held-out tasks come in twins with the same inputs and label space
and a deranged mapping, so without the definition (and with no examples in the
prompt) both twins must be answered alike.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tunelens.experiments.audit import (
    definition_blind_bound,
    eval_items,
    eval_prompts,
    run_baseline_cell,
    score,
)
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.tasks.sets import load_task_set

PER_TASK = AuditSpec().eval_instances_per_task


@pytest.fixture(scope="module")
def heldout():
    return list(load_task_set("world:heldout"))


def mean_task_em(items, predictions) -> float:
    per_task = score(items, predictions)["per_task"]
    return float(np.mean([v["em"] for v in per_task.values()]))


def test_the_default_evaluates_every_twin_input_so_the_bound_is_50(heldout):
    assert definition_blind_bound(heldout, PER_TASK) == pytest.approx(50.0)


def test_definition_only_prompts_hold_the_definition_and_no_example(heldout):
    items = eval_items(heldout, 3)
    for (task, _), prompt in zip(
        items, eval_prompts(items, 2, "tk", "definition_only"), strict=True
    ):
        assert task.definition in prompt
        assert "Positive Example" not in prompt
    with_examples = eval_prompts(items, 2, "tk", "definition_examples")
    assert all("Positive Example 2" in p for p in with_examples)


def test_definition_blind_methods_score_at_most_50(heldout):
    items = eval_items(heldout, PER_TASK)
    params = {"eval_instances_per_task": PER_TASK}
    scores = {}
    for which in ("random", "copy_input", "copy_demo"):
        result = run_baseline_cell(None, heldout, {**params, "baseline": which}, 0)
        ev = result["evaluations"]["any"]
        per_task = ev.get("expected_per_task", ev["per_task"])
        scores[which] = float(np.mean([v["em"] for v in per_task.values()]))
    for i in range(4):  # constant predictors: the i-th label of each space
        scores[f"constant {i}"] = mean_task_em(
            items, [task.labels[i % len(task.labels)] for task, _ in items]
        )

    def blind(inp: str, labels: tuple[str, ...]) -> str:  # any function of input and labels
        h = int(hashlib.sha256(inp.encode()).hexdigest(), 16)
        return labels[h % len(labels)]

    scores["hash of input"] = mean_task_em(items, [blind(i.input, t.labels) for t, i in items])
    for name, value in scores.items():
        assert value <= 50.0 + 1e-9, name
    assert scores["random"] < 50.0


def test_the_bound_is_reached_by_the_best_blind_method(heldout):
    from collections import Counter, defaultdict

    votes: dict[tuple, Counter] = defaultdict(Counter)
    for task in heldout:
        for inst in task.instances:
            votes[(task.labels, inst.input)][inst.outputs[0]] += 1
    items = eval_items(heldout, PER_TASK)
    best = [votes[(t.labels, i.input)].most_common(1)[0][0] for t, i in items]
    correct = sum(p == i.outputs[0] for p, (_, i) in zip(best, items, strict=True))
    assert 100.0 * correct / len(items) == pytest.approx(50.0)
