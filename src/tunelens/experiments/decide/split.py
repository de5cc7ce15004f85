"""The seeded, label-stratified split of a task's examples into test set and two pools.

``decide`` measures every method on one test set and draws what each method
learns from two disjoint pools: the **demonstration pool** (ICL prompts take its
first k examples) and the **tuning pool** (tuning on n takes its first n). The
three parts are stratified by label: each holds the labels in the proportions
of the whole task, up to rounding, with the rounding done by largest remainders
(:func:`allocate`). Within a pool the order is stratified too
(:func:`stratified_order`), so that every prefix (the k demonstrations, the n
tuning examples) is as close to the task's label proportions as a prefix of
that length can be, and a smaller prefix is part of a larger one: the learning
curves add examples instead of drawing new sets.

A label is an instance's first reference output. Everything depends only on
the instances and the seed. The allocation and the stratified order belong to
the one family of samplers in :mod:`tunelens.tasks.sampling`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from tunelens.errors import TunelensInputError
from tunelens.tasks.sampling import allocate, stratified_order
from tunelens.tasks.types import Instance


def label_of(instance: Instance) -> str:
    """The label an instance is stratified by: its first reference output."""
    return instance.outputs[0]


@dataclass(frozen=True)
class Split:
    """Test set, demonstration pool and tuning pool: disjoint, stratified by label."""

    test: tuple[Instance, ...]
    demo_pool: tuple[Instance, ...]
    tuning_pool: tuple[Instance, ...]
    seed: int

    def sizes(self) -> dict[str, int]:
        return {
            "test": len(self.test),
            "demo_pool": len(self.demo_pool),
            "tuning_pool": len(self.tuning_pool),
        }

    def per_label(self) -> dict[str, dict[str, int]]:
        """label -> {test, demo_pool, tuning_pool} counts."""
        labels = sorted(
            {label_of(i) for part in (self.test, self.demo_pool, self.tuning_pool) for i in part}
        )
        return {
            label: {
                name: sum(1 for i in part if label_of(i) == label)
                for name, part in (
                    ("test", self.test),
                    ("demo_pool", self.demo_pool),
                    ("tuning_pool", self.tuning_pool),
                )
            }
            for label in labels
        }


def resolve_test_size(test_size: float, n: int) -> int:
    """A fraction (0 < x < 1) of ``n``, rounded, at least 1; or a count (a whole number >= 1)."""
    if 0 < test_size < 1:
        return max(1, round(test_size * n))
    if test_size >= 1 and float(test_size).is_integer():
        return int(test_size)
    raise TunelensInputError(
        f"test size {test_size:g} must be a fraction between 0 and 1 or a whole number of examples",
        where="--test-size",
    )


def stratified_split(
    instances: Sequence[Instance], *, test_size: float, demo_size: int, seed: int
) -> Split:
    """Split ``instances`` into test set, demonstration pool and tuning pool (the rest).

    ``test_size`` is a fraction of all instances or a count; ``demo_size`` a
    count. The test set is taken first, then the demonstration pool from what
    is left, each allocated over labels by :func:`allocate`; each label's
    instances are shuffled once (seeded) and dealt in that order.
    """
    n = len(instances)
    n_test = resolve_test_size(test_size, n)
    if demo_size < 0:
        raise TunelensInputError(
            f"demonstration pool size must be >= 0, got {demo_size}", where="--demo-size"
        )
    if n_test + demo_size > n:
        raise TunelensInputError(
            f"the task has {n} examples: too few for a test set of {n_test} and a "
            f"demonstration pool of {demo_size}; lower --test-size or --demo-size",
            where="split",
        )
    rng = random.Random(f"decide-split|{seed}")
    groups: dict[str, list[Instance]] = {}
    for instance in instances:
        groups.setdefault(label_of(instance), []).append(instance)
    for label in sorted(groups):
        rng.shuffle(groups[label])
    counts = {label: len(items) for label, items in groups.items()}
    test_alloc = allocate(counts, n_test)
    rest = {label: counts[label] - test_alloc[label] for label in counts}
    demo_alloc = allocate(rest, demo_size)
    test, demo, tune = {}, {}, {}
    for label, items in groups.items():
        a, b = test_alloc[label], test_alloc[label] + demo_alloc[label]
        test[label], demo[label], tune[label] = items[:a], items[a:b], items[b:]
    order_rng = random.Random(f"decide-order|{seed}")
    return Split(
        test=tuple(stratified_order(test, order_rng)),
        demo_pool=tuple(stratified_order(demo, order_rng)),
        tuning_pool=tuple(stratified_order(tune, order_rng)),
        seed=seed,
    )


def shared_inputs(split: Split) -> list[str]:
    """Warnings for test inputs that also sit in a pool (the same text given twice in the task):
    a method that learns from that pool has seen the test item, so its score is flattered."""
    test = {i.input for i in split.test}
    lines = []
    for name, pool in (("tuning pool", split.tuning_pool), ("demonstration pool", split.demo_pool)):
        shared = sorted({i.input for i in pool} & test)
        if shared:
            shown = ", ".join(repr(text[:40]) for text in shared[:3])
            more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
            lines.append(
                f"{len(shared)} test input(s) are also in the {name} ({shown}{more}): "
                "scores of methods that learn from it are flattered; remove the duplicates"
            )
    return lines
