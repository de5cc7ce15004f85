"""The decide split: largest-remainder allocation, stratification, nesting, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tunelens.errors import TunelensInputError
from tunelens.experiments.decide.split import label_of, resolve_test_size, stratified_split
from tunelens.tasks.sampling import allocate, stratified_order
from tunelens.tasks.types import Instance


def instances(counts: dict[str, int]) -> list[Instance]:
    out = []
    for label, n in counts.items():
        out += [Instance(f"{label}-{i}", f"x {label} {i}", (label,)) for i in range(n)]
    return out


@pytest.mark.parametrize(
    "counts,n,expected",
    [
        # 10 of 20 in 3:1 proportions: 7.5 / 2.5 -> remainders tie at .5 -> label order breaks it
        ({"a": 15, "b": 5}, 10, {"a": 8, "b": 2}),
        # 7 of 10 = 5:3:2 -> 3.5, 2.1, 1.4: floors 3, 2, 1 (6), one left -> a (remainder .5)
        ({"a": 5, "b": 3, "c": 2}, 7, {"a": 4, "b": 2, "c": 1}),
        # 3 of 9 over 3 equal labels: exact
        ({"a": 3, "b": 3, "c": 3}, 3, {"a": 1, "b": 1, "c": 1}),
        # 1 of 100 with a rare label: the majority label takes it
        ({"rare": 1, "common": 99}, 1, {"rare": 0, "common": 1}),
        ({"a": 2, "b": 2}, 0, {"a": 0, "b": 0}),
        ({"a": 2, "b": 3}, 5, {"a": 2, "b": 3}),
    ],
)
def test_allocate_hand_computed(counts, n, expected):
    assert allocate(counts, n) == expected
    assert sum(allocate(counts, n).values()) == n


def test_allocate_never_exceeds_a_count_and_rejects_impossible_sizes():
    rng = random.Random(1)
    for _ in range(200):
        counts = {f"l{i}": rng.randint(0, 9) for i in range(rng.randint(1, 5))}
        total = sum(counts.values())
        n = rng.randint(0, total)
        out = allocate(counts, n)
        assert sum(out.values()) == n
        assert all(0 <= out[k] <= counts[k] for k in counts)
        # within one of the exact proportional share
        if total:
            assert all(abs(out[k] - n * counts[k] / total) < 1 for k in counts)
    with pytest.raises(ValueError):
        allocate({"a": 2}, 3)


def test_resolve_test_size():
    assert resolve_test_size(0.3, 100) == 30
    assert resolve_test_size(0.01, 10) == 1  # at least one item
    assert resolve_test_size(25, 100) == 25
    with pytest.raises(TunelensInputError, match="fraction"):
        resolve_test_size(2.5, 100)


def test_split_is_disjoint_complete_and_stratified():
    data = instances({"yes": 60, "no": 30, "maybe": 10})
    split = stratified_split(data, test_size=0.2, demo_size=10, seed=3)
    ids = [i.id for part in (split.test, split.demo_pool, split.tuning_pool) for i in part]
    assert sorted(ids) == sorted(i.id for i in data)  # every example exactly once
    assert split.sizes() == {"test": 20, "demo_pool": 10, "tuning_pool": 70}
    assert Counter(map(label_of, split.test)) == {"yes": 12, "no": 6, "maybe": 2}
    assert Counter(map(label_of, split.demo_pool)) == {"yes": 6, "no": 3, "maybe": 1}
    assert Counter(map(label_of, split.tuning_pool)) == {"yes": 42, "no": 21, "maybe": 7}
    assert split.per_label()["maybe"] == {"test": 2, "demo_pool": 1, "tuning_pool": 7}


def test_split_is_seeded():
    data = instances({"a": 20, "b": 20})
    one = stratified_split(data, test_size=10, demo_size=4, seed=0)
    again = stratified_split(data, test_size=10, demo_size=4, seed=0)
    other = stratified_split(data, test_size=10, demo_size=4, seed=1)
    assert one == again
    assert [i.id for i in one.test] != [i.id for i in other.test]


def test_pool_prefixes_keep_the_proportions():
    data = instances({"a": 40, "b": 20, "c": 20})
    pool = stratified_split(data, test_size=0.25, demo_size=0, seed=0).tuning_pool
    for n in (4, 8, 20, 40):
        counts = Counter(map(label_of, pool[:n]))
        for label, share in (("a", 0.5), ("b", 0.25), ("c", 0.25)):
            assert abs(counts[label] - share * n) <= 1, (n, counts)
    # two labels of equal size alternate, so k=2 demonstrations show both
    demos = stratified_split(
        instances({"x": 10, "y": 10}), test_size=4, demo_size=8, seed=5
    ).demo_pool
    assert {label_of(i) for i in demos[:2]} == {"x", "y"}


def test_stratified_order_spreads_a_minority_label():
    groups = {
        "a": [Instance(f"a{i}", "", ("a",)) for i in range(6)],
        "b": [Instance(f"b{i}", "", ("b",)) for i in range(2)],
    }
    order = [label_of(i) for i in stratified_order(groups, random.Random(0))]
    assert order.count("b") == 2
    assert "b" in order[:4] and "b" in order[4:]


def test_too_few_examples_is_an_input_error():
    with pytest.raises(TunelensInputError, match="too few"):
        stratified_split(instances({"a": 3, "b": 3}), test_size=4, demo_size=4, seed=0)
