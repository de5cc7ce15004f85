"""``train_encoding: mixed``: Tk-Instruct's --tk_instruct collator in the audit's training pairs.

Its collator draws, per instance, one of: instruction only, examples only, instruction +
2 positive examples (+ negatives, + explanations, which world tasks lack). The
encodings are read off the rendered prompts here, not off the code's own styles.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tunelens.experiments.audit import AuditExperiment
from tunelens.experiments.audit.experiment import training_pairs
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.tasks.sets import load_task_set


def encoding_of(prompt: str) -> str:
    definition = prompt.startswith("Definition:")
    examples = "Positive Example 1 -" in prompt
    return {
        (True, False): "definition only",
        (False, True): "examples only",
        (True, True): "definition + examples",
        (False, False): "input only",
    }[(definition, examples)]


@pytest.fixture(scope="module")
def train_tasks():
    return load_task_set("world:train")


def pairs(tasks, definition: str, examples: str, mixed: bool) -> list[tuple[str, str]]:
    return training_pairs(
        tasks,
        definition=definition,
        examples=examples,
        instances_per_task=5,
        n_positive=2,
        seed=0,
        mixed=mixed,
    )


def test_mixed_draws_the_three_encodings_about_equally(train_tasks) -> None:
    drawn = Counter(encoding_of(p) for p, _ in pairs(train_tasks, "original", "original", True))
    assert set(drawn) == {"definition only", "examples only", "definition + examples"}
    total = sum(drawn.values())
    assert total == 5 * len(train_tasks)
    for count in drawn.values():  # 300 draws: each share within 1/3 +/- 0.1
        assert abs(count / total - 1 / 3) < 0.1


def test_mixed_draws_the_same_instances_as_fixed(train_tasks) -> None:
    fixed = pairs(train_tasks, "original", "original", False)
    mixed = pairs(train_tasks, "original", "original", True)
    assert {encoding_of(p) for p, _ in fixed} == {"definition + examples"}
    assert [t for _, t in mixed] == [t for _, t in fixed]
    # the query (the prompt's last input) is the same instance in both
    assert [p.rsplit("Input:", 1)[1] for p, _ in mixed] == [
        p.rsplit("Input:", 1)[1] for p, _ in fixed
    ]


@pytest.mark.parametrize(
    ("definition", "examples", "allowed"),
    [
        ("none", "original", {"examples only"}),
        ("original", "none", {"definition only"}),
        ("none", "none", {"input only"}),
        ("simplified", "delusive", {"definition only", "examples only", "definition + examples"}),
    ],
)
def test_mixed_keeps_to_what_the_condition_has(train_tasks, definition, examples, allowed) -> None:
    drawn = {encoding_of(p) for p, _ in pairs(train_tasks, definition, examples, True)}
    assert drawn == allowed


def test_fixed_cells_keep_their_identity_and_mixed_cells_differ() -> None:
    from tunelens.api import StudyInputs
    from tunelens.spec import Spec

    inputs = StudyInputs(Spec())
    fixed = AuditExperiment().cells(AuditSpec(model="world"), inputs)
    mixed = AuditExperiment().cells(AuditSpec(model="world", train_encoding="mixed"), inputs)
    grid = [c for c in fixed if "baseline" not in c.params]
    assert grid and all("train_encoding" not in c.params for c in grid)
    keys = {c.name: c.key for c in fixed}
    for cell in mixed:
        if "baseline" in cell.params:
            assert cell.key == keys[cell.name]  # baselines are not tuned: shared
        else:
            assert cell.params["train_encoding"] == "mixed" and cell.key != keys[cell.name]
