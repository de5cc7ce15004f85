"""The instruction world: determinism, the split rule, and label spaces that need the definition."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from tunelens.tasks.world.generator import (
    definition_blind_upper_bound,
    draw_rule,
    generate_world,
    is_heldout,
)
from tunelens.tasks.world.lexicon import CATEGORIES, LABEL_WORDS, WORD_CATEGORY
from tunelens.tasks.world.rules import FAMILIES, Rule


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


def test_lexicon_is_large_enough_and_disjoint():
    assert len(CATEGORIES) >= 8
    assert all(len(words) >= 12 for words in CATEGORIES.values())
    assert not set(LABEL_WORDS) & set(WORD_CATEGORY)
    assert len(FAMILIES) >= 6


def test_same_seed_same_world_and_other_seed_differs(world):
    again = generate_world(0)
    assert [t.name for t in again.heldout] == [t.name for t in world.heldout]
    assert again.heldout == world.heldout and again.train == world.train
    other = generate_world(1)
    assert [t.definition for t in other.train] != [t.definition for t in world.train]


def test_split_signatures_are_disjoint(world):
    def signature(task):
        meta = task.metadata
        return Rule(meta["family"], tuple(meta["rule_categories"]), ()).signature

    train = {signature(t) for t in world.train}
    heldout = {signature(t) for t in world.heldout}
    assert not train & heldout
    assert all(is_heldout(s, 0) for s in heldout)
    assert not any(is_heldout(s, 0) for s in train)


def test_heldout_label_spaces_are_never_training_label_spaces(world):
    train_spaces = {t.labels for t in world.train}
    assert not train_spaces & {t.labels for t in world.heldout}


def test_every_heldout_label_space_is_shared_by_tasks_with_different_rules(world):
    by_space = defaultdict(list)
    for task in world.heldout:
        by_space[task.labels].append(task)
    assert len(world.heldout) >= 30
    for space, tasks in by_space.items():
        assert len(tasks) >= 2, space
        mappings = {tuple(t.metadata["rule_labels"]) for t in tasks}
        assert len(mappings) >= 2, f"tasks sharing {space} must follow different rules"


def test_definition_blind_methods_are_bounded_at_half(world):
    assert definition_blind_upper_bound(world.heldout) == pytest.approx(50.0)


def test_instances_follow_their_rule_and_are_label_balanced(world):
    for task in world.train + world.heldout:
        rule = Rule(
            task.metadata["family"],
            tuple(task.metadata["rule_categories"]),
            tuple(task.metadata["rule_labels"]),
        )
        counts = defaultdict(int)
        for inst in task.instances:
            assert rule.label_of(inst.input.split()) == inst.outputs[0]
            counts[inst.outputs[0]] += 1
        assert max(counts.values()) - min(counts.values()) <= 1
        assert len({i.input for i in task.instances}) == len(task.instances)


def test_definitions_state_every_label_and_the_categories(world):
    for task in world.heldout:
        for label in task.labels:
            assert f'"{label}"' in task.definition
        if task.metadata["family"] != "same_category":
            assert any(
                cat.split()[-1] in task.definition or cat in task.definition
                for cat in task.metadata["rule_categories"]
            )


def test_training_rules_never_draw_heldout_signatures():
    rng = random.Random(3)
    for _ in range(300):
        rule = draw_rule(rng, seed=0, heldout=False)
        assert not is_heldout(rule.signature, 0)


def test_exported_world_loads_through_the_superni_loaders(world, tmp_path):
    from tunelens.tasks.loaders import load_split, load_tasks
    from tunelens.tasks.world.export import export_world

    export_world(world, tmp_path)
    loaded = {t.name: t for t in load_tasks(tmp_path / "tasks")}
    assert set(loaded) == {t.name for t in world.train + world.heldout}
    for original in world.train + world.heldout:
        task = loaded[original.name]
        assert task.definition == original.definition
        assert task.labels == original.labels
        assert [i.outputs for i in task.instances] == [i.outputs for i in original.instances]
        assert len(task.positive_examples) == len(original.positive_examples)
    test_split = load_split(tmp_path, "default", "test")
    assert [t.name for t in test_split] == [t.name for t in world.heldout]
