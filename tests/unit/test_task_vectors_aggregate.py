"""Task vectors without a model: the seeded draws, the layer chosen on dev only, the readings.

Aggregation is checked on planted cells whose hits are written here, so every
number the test expects is a hand count over those lists.
"""

from __future__ import annotations

import numpy as np
import pytest

from tunelens.api import Cell
from tunelens.experiments.task_vectors.aggregate import aggregate_task_vectors
from tunelens.experiments.task_vectors.plan import limit_section
from tunelens.experiments.task_vectors.sets import draw_sets, unusable_reason
from tunelens.experiments.task_vectors.spec import TaskVectorsSpec
from tunelens.tasks.types import Instance, Task


def _task(n: int = 30, labels: tuple[str, ...] | None = ("no", "yes"), name: str = "t") -> Task:
    instances = tuple(
        Instance(f"{name}-{i}", f"word{i}", ("yes" if i % 2 else "no",)) for i in range(n)
    )
    return Task(name, "Answer yes or no.", instances, labels=labels)


def test_dev_and_test_queries_are_disjoint_and_no_set_sees_its_query():
    sets = draw_sets(_task(), k=5, dummy_queries=2, dev_sets=10, test_sets=12, seed=3)
    test = [s for s in sets if s.split == "test"]
    dev = [s for s in sets if s.split == "dev"]
    assert (len(test), len(dev)) == (12, 10)
    assert not {s.query.input for s in test} & {s.query.input for s in dev}
    for s in sets:
        seen = [d.input for d in s.demos] + [d.input for d in s.dummies]
        assert len(s.demos) == 5 and len(s.dummies) == 2
        assert s.query.input not in seen and len(set(seen)) == len(seen)


def test_test_sets_do_not_change_with_the_dev_split_size_and_seeds_differ():
    def test_sets(dev: int, seed: int = 3) -> list:
        sets = draw_sets(_task(), k=5, dummy_queries=2, dev_sets=dev, test_sets=8, seed=seed)
        return [s for s in sets if s.split == "test"]

    assert test_sets(2) == test_sets(10)
    assert test_sets(2) != test_sets(2, seed=4)


def test_tasks_that_cannot_be_drawn_from_say_why():
    settings = {"k": 5, "dummy_queries": 2, "dev_sets": 10, "test_sets": 10}
    assert unusable_reason(_task(), **settings) is None
    assert "label space" in str(unusable_reason(_task(labels=None), **settings))
    assert "need 20" in str(unusable_reason(_task(n=15), **settings))
    few = {**settings, "dev_sets": 1, "test_sets": 1}
    assert "need 8" in str(unusable_reason(_task(n=6), **few))


def test_limit_bounds_both_splits():
    section = limit_section(TaskVectorsSpec(), 3)
    assert (section.dev_sets, section.test_sets) == (3, 3)


# ---------------------------------------------------------------- planted aggregation

LAYERS = [0, 1, 2, 3]


def _cell(task: str, seed: int, patched: dict, correct: dict, splits: list[str]) -> tuple:
    params = {"model": "m", "control": "none", "k": 5, "dummy_queries": 2}
    result = {
        "task": task,
        "splits": splits,
        "layers": LAYERS,
        "n_layers": 4,
        "correct": correct,
        "patched": patched,
        "forwards": {"zero_shot": len(splits), "total": len(splits)},
    }
    return Cell("task_vectors", f"{task} {seed}", params, seed), result


def _planted() -> list[tuple]:
    """Two tasks, 4 test + 4 dev rows each. Dev is best at layer 1 (pooled); test would be best
    at layer 3, which a choice on test would pick. Task b alone prefers layer 2 on dev."""
    splits = ["test"] * 4 + ["dev"] * 4
    a = {  # per layer: 4 test hits, then 4 dev hits
        "icl": [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
        ]
    }
    b = {
        "icl": [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 1, 0, 0],
            [1, 1, 1, 0, 1, 1, 1, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
        ]
    }
    zero = [0, 0, 0, 0, 0, 0, 0, 0]
    icl = [1, 1, 1, 1, 1, 1, 1, 1]
    return [
        _cell("a", 0, a, {"zero_shot": zero, "icl": icl}, splits),
        _cell("b", 0, b, {"zero_shot": zero, "icl": icl}, splits),
    ]


def test_the_best_layer_is_chosen_on_dev_and_read_on_test():
    (entry,) = aggregate_task_vectors(_planted())
    block = entry["sources"]["icl"]
    # dev hits per layer, both tasks pooled: 0, 6, 3, 0 of 8 -> layer 1
    assert [row["dev"]["mean"] for row in block["layers"]] == [0.0, 75.0, 37.5, 0.0]
    assert block["best_layer"] == 1
    # test at layer 1: task a 1 of 4, task b 2 of 4 -> 3 of 8 (not layer 3's 8 of 8)
    assert block["best"]["test"]["mean"] == pytest.approx(37.5)
    assert block["best"]["minus_zero_shot"]["mean"] == pytest.approx(37.5)
    assert block["best"]["minus_icl"]["mean"] == pytest.approx(-62.5)
    assert block["best"]["share_of_icl_gain"]["mean"] == pytest.approx(0.375)
    # each task at its own dev layer: a -> 1 (4 of 4 dev), b -> 2 (3 of 4 dev)
    layers = {row["task"]: row["layer"] for row in block["per_task"]}
    assert layers == {"a": 1, "b": 2}
    assert block["per_task_best"]["mean"] == pytest.approx(100.0 * (1 + 3) / 8)
    assert entry["accuracy"]["icl"]["mean"] == 100.0 and entry["n_test"] == 8


def test_a_planted_layer_that_wins_on_test_only_is_never_chosen():
    cells = _planted()
    for _, result in cells:  # make layer 3 perfect on test and worst on dev
        result["patched"]["icl"][3] = [1, 1, 1, 1, 0, 0, 0, 0]
    (entry,) = aggregate_task_vectors(cells)
    assert entry["sources"]["icl"]["best_layer"] != 3


def test_the_share_of_the_icl_gain_is_undecided_without_an_icl_gain():
    cells = _planted()
    for _, result in cells:
        result["correct"]["icl"] = list(result["correct"]["zero_shot"])
    (entry,) = aggregate_task_vectors(cells)
    share = entry["sources"]["icl"]["best"]["share_of_icl_gain"]
    assert share["mean"] is None and "not above 0" in share["undecided"]


def test_the_transfer_verdict_reads_the_paired_interval():
    cells = _planted()
    for _, result in cells:  # layer 1 right on every row, zero-shot wrong on every row
        result["patched"]["icl"][1] = [1] * 8
    (entry,) = aggregate_task_vectors(cells)
    block = entry["sources"]["icl"]
    assert block["transfer"]["verdict"] == "above zero-shot"
    low, high = block["best"]["minus_zero_shot"]["ci"]
    assert low > 0 and np.isclose(high, 100.0)


def test_skipped_tasks_are_listed_once():
    cells = _planted()
    cells.append(
        (
            Cell("task_vectors", "c", {"model": "m", "control": "none"}, 0),
            {"task": "c", "skipped": "why"},
        )
    )
    (entry,) = aggregate_task_vectors(cells)
    assert entry["skipped"] == [{"task": "c", "reason": "why"}]
    assert entry["tasks"] == ["a", "b"]
