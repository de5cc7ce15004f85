"""Seeded samplers of demonstrations, anchors and instance subsets: one family for every experiment.

Every sampler is pure: its draw depends only on its arguments and its seed (or
on a passed ``random.Random``, whose state the caller owns), so a cell's inputs
are reproducible and cacheable. Demonstrations are :class:`Example` objects made
from an instance's input and first reference output (:func:`as_examples`).

**Convergence** (:func:`sample_demo_sets`) uses a *nested* design, so that a
sweep over k adds demonstrations instead of drawing new sets:

- the generator is seeded with ``(seed, relevance)`` only, never with k;
- the eligible tasks are put in one random order; set j uses the (j mod n)-th;
- each set draws one permutation of its task's instances: the anchors are the
  first ``anchors_per_set``, the demonstrations the following instances whose
  input is no anchor's input, and a set with k demonstrations takes the first k;
- with relevance ``other`` the demonstrations come from another eligible task
  (chosen at random, independently of k): one permutation of its instances,
  without any input of the anchor's task
  (:func:`tunelens.tasks.variants.irrelevant_examples`), of which the first k are taken.

Every random call consumes the same randomness whatever k is, so for one seed
the tasks and anchors are identical for every k, and the demonstrations for k
are a prefix of those for any larger k. Tasks too small for k are handled so
that task choice never depends on k either: pass the sweep's largest k as
``k_max`` and the tasks with fewer than ``anchors_per_set + k_max`` instances
are left out for every k (asking for a k above ``k_max`` is an error); without
``k_max`` every task must be large enough for k, and a task that is not raises
:class:`~tunelens.errors.TunelensInputError` naming the task and k (a task is
never dropped silently for one k and kept for another).

**World evaluation** (:func:`sample_queries_with_demos`): query q of a task is
its instance q (cycling), with k demonstrations drawn from the task's other
instances, from one generator shared over the tasks of one k. (These draws
are those the shipped world model's ``reference_eval.json`` was recorded with.)

**decide** orders its demonstration and tuning pools once, stratified by label
(:func:`allocate`, :func:`stratified_order`, used by ``decide.split``); ICL with
k demonstrations and tuning on n examples take a prefix (:func:`first_examples`),
so they are nested too.

**Audit** (:func:`sample_instances`): a task's training instances, all of them
or n drawn without replacement from a generator shared over the tasks.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tunelens.errors import TunelensInputError
from tunelens.tasks.types import Example, Instance, Task
from tunelens.tasks.variants import irrelevant_examples

RELEVANCE = ("same", "other")
T = TypeVar("T")


@dataclass(frozen=True)
class DemoSet:
    """k demonstrations and the anchors probed with them (no demo has an anchor's input)."""

    task: Task
    demos: tuple[Example, ...]
    anchors: tuple[Instance, ...]


def as_example(instance: Instance) -> Example:
    """A demonstration from an instance: its input and first reference output."""
    return Example(instance.input, instance.outputs[0])


def as_examples(instances: Sequence[Instance]) -> list[Example]:
    return [as_example(i) for i in instances]


def first_examples(pool: Sequence[Instance], n: int, *, what: str = "pool") -> list[Example]:
    """The first ``n`` instances of an ordered pool, as demonstrations (a prefix: nested in n)."""
    if n < 0 or n > len(pool):
        raise TunelensInputError(f"the {what} holds {len(pool)} examples, {n} were asked for")
    return as_examples(pool[:n])


def sample_demo_sets(
    tasks: Sequence[Task],
    *,
    n_pairs: int,
    anchors_per_set: int,
    k: int,
    relevance: str,
    seed: int,
    k_max: int | None = None,
) -> list[DemoSet]:
    """Seeded demonstration sets for convergence, nested across k (see the module docstring).

    ``ceil(n_pairs / anchors_per_set)`` sets; with relevance ``other`` the
    demonstrations come from another task and share no input with the anchor's task.
    """
    if relevance not in RELEVANCE:
        raise TunelensInputError(f"unknown relevance {relevance!r}; use one of {RELEVANCE}")
    if k < 0 or anchors_per_set < 1 or n_pairs < 1:
        raise TunelensInputError(
            f"k={k}, anchors_per_set={anchors_per_set}, n_pairs={n_pairs}: "
            "need k >= 0 and at least one anchor and one pair"
        )
    if k_max is not None and k > k_max:
        raise TunelensInputError(f"k={k} is larger than the sweep's largest k ({k_max})")
    need = anchors_per_set + (k if k_max is None else k_max)
    if not tasks:
        raise TunelensInputError("no tasks to draw demonstration sets from")
    if k_max is None:
        small = [t for t in tasks if len(t.instances) < need]
        if small:
            raise TunelensInputError(
                f"task {small[0].name!r} has {len(small[0].instances)} instances; "
                f"k={k} with {anchors_per_set} anchor(s) per set needs {need}"
            )
        usable = list(tasks)
    else:
        usable = [t for t in tasks if len(t.instances) >= need]
        if not usable:
            raise TunelensInputError(
                f"no task has the {need} instances that k={k_max} "
                f"with {anchors_per_set} anchor(s) per set needs"
            )
    if relevance == "other" and len(usable) < 2:
        raise TunelensInputError("relevance 'other' needs at least two usable tasks")
    rng = random.Random(f"convergence|{seed}|{relevance}")
    order = rng.sample(usable, len(usable))
    sets = []
    for j in range(-(-n_pairs // anchors_per_set)):
        task = order[j % len(order)]
        pool = rng.sample(list(task.instances), len(task.instances))
        anchors = tuple(pool[:anchors_per_set])
        if relevance == "other":
            source = rng.choice([t for t in usable if t.name != task.name])
            drawn = irrelevant_examples(task, source, None, rng, positive_examples=False)
        else:
            source, anchor_inputs = task, {a.input for a in anchors}
            drawn = as_examples([i for i in pool[anchors_per_set:] if i.input not in anchor_inputs])
        if len(drawn) < k:
            raise TunelensInputError(
                f"task {source.name!r} has {len(drawn)} usable demonstrations for task "
                f"{task.name!r}'s anchors; k={k} were asked for"
            )
        sets.append(DemoSet(task, tuple(drawn[:k]), anchors))
    return sets


def sample_queries_with_demos(
    task: Task, k: int, queries: int, rng: random.Random
) -> list[tuple[Instance, list[Example]]]:
    """``queries`` (query, k demonstrations) pairs; demonstrations from the task's other instances.

    Query q is instance ``q mod n``; its demonstrations are a uniform draw of k
    of the other instances (by id), from ``rng``.
    """
    pool = list(task.instances)
    if k > len(pool) - 1:
        raise TunelensInputError(
            f"task {task.name!r} has {len(pool)} instances: too few for queries with k={k} "
            "demonstrations from its other instances"
        )
    out = []
    for q in range(queries):
        query = pool[q % len(pool)]
        others = [i for i in pool if i.id != query.id]
        out.append((query, as_examples(rng.sample(others, k))))
    return out


def sample_instances(instances: Sequence[T], n: int | str, rng: random.Random) -> list[T]:
    """All instances (``n == "full"``), or ``min(n, len)`` of them drawn from ``rng``."""
    instances = list(instances)
    if n == "full":
        return instances
    return rng.sample(instances, min(int(n), len(instances)))


def allocate(counts: Mapping[str, int], n: int) -> dict[str, int]:
    """Split ``n`` over labels in proportion to ``counts`` (largest-remainder rounding).

    Each label gets ``floor(n * c / total)``, and the items left over go one
    each to the labels with the largest remainders (ties: label order). Exact
    integer arithmetic; no label gets more than its count. ``n`` must be
    between 0 and the total.
    """
    total = sum(counts.values())
    if n < 0 or n > total:
        raise ValueError(f"cannot allocate {n} of {total} items")
    if total == 0:
        return {label: 0 for label in counts}
    shares = {label: divmod(n * count, total) for label, count in counts.items()}
    out = {label: q for label, (q, _) in shares.items()}
    left = n - sum(out.values())
    by_remainder = sorted(counts, key=lambda label: (-shares[label][1], label))
    for label in by_remainder[:left]:
        out[label] += 1
    return out


def stratified_order(groups: Mapping[str, Sequence[T]], rng: random.Random) -> list[T]:
    """Interleave label groups so that every prefix keeps the proportions.

    Item i of a group of size m sits at position (i + 1/2) / m of the unit
    interval; items are taken in that order (ties broken at random, seeded),
    which spreads each label evenly over the sequence.
    """
    keyed = []
    for label in sorted(groups):
        items = groups[label]
        for i, item in enumerate(items):
            keyed.append(((2 * i + 1) / (2 * len(items)), rng.random(), label, item))
    keyed.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in keyed]
