"""A seeded generator of instruction-world tasks in the Super-NaturalInstructions shape.

Split rule: a rule's *signature* (family, set of categories) is held out when a
seeded hash puts it in the held-out quarter. Training tasks (and the world
model's training text) use only training signatures and never a held-out
label space; held-out tasks use only held-out signatures. Held-out tasks come
in groups of two that share one label space but map it differently (the second
task's labels are a derangement of the first's), so the label space alone
cannot solve them: see ``definition_blind_upper_bound``.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from tunelens.tasks.types import Example, Instance, Task
from tunelens.tasks.world.lexicon import CATEGORIES, LABEL_WORDS
from tunelens.tasks.world.rules import FAMILIES, Rule

HELDOUT_SHARE = 0.25
# How often each family occurs in training text and among the fixed tasks. The
# one-word family dominates: it is the one in which in-context learning emerges
# first (see the world model's training log).
FAMILY_WEIGHTS: dict[str, float] = {
    "word_category": 0.5,
    "first_word": 0.12,
    "last_word": 0.12,
    "contains": 0.1,
    "majority": 0.08,
    "same_category": 0.08,
}
HELDOUT_GROUPS_PER_FAMILY: dict[str, int] = {
    "word_category": 8,
    "first_word": 3,
    "last_word": 3,
    "contains": 2,
    "majority": 2,
    "same_category": 2,
}


def _n_categories(family: str, rng: random.Random) -> int:
    if family == "word_category":
        return rng.choice((2, 2, 3, 4))
    return {"majority": 2}.get(family, 3)


def is_heldout(signature: tuple[str, tuple[str, ...]], seed: int) -> bool:
    """Whether a rule signature belongs to the held-out split (seeded, stable)."""
    key = f"{seed}|{signature[0]}|{','.join(signature[1])}".encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16) / 0xFFFFFFFF < HELDOUT_SHARE


def n_labels(family: str, n_categories: int) -> int:
    return n_categories if family == "word_category" else 2


def draw_rule(
    rng: random.Random,
    *,
    seed: int,
    heldout: bool,
    family: str | None = None,
    forbidden_label_sets: frozenset[frozenset[str]] = frozenset(),
) -> Rule:
    """A random rule of the given split, with label words drawn from the pool."""
    if family is None:
        family = rng.choices(list(FAMILY_WEIGHTS), weights=list(FAMILY_WEIGHTS.values()))[0]
    while True:
        cats = tuple(rng.sample(sorted(CATEGORIES), _n_categories(family, rng)))
        rule = Rule(family, cats, ())
        if is_heldout(rule.signature, seed) != heldout:
            continue
        labels = tuple(rng.sample(LABEL_WORDS, n_labels(family, len(cats))))
        if frozenset(labels) in forbidden_label_sets:
            continue
        return Rule(family, cats, labels)


def _derangement(labels: tuple[str, ...], rng: random.Random) -> tuple[str, ...]:
    perms = [
        p
        for p in itertools.permutations(labels)
        if all(a != b for a, b in zip(p, labels, strict=True))
    ]
    return rng.choice(perms)


@dataclass(frozen=True)
class World:
    """The fixed task lists: training tasks and held-out tasks."""

    seed: int
    train: list[Task]
    heldout: list[Task]


def rule_to_task(
    rule: Rule,
    name: str,
    rng: random.Random,
    *,
    n_instances: int,
    template: int,
    inputs: list[str] | None = None,
) -> Task:
    """A Super-NaturalInstructions-shaped task whose instances are balanced over labels.

    With ``inputs`` the instances reuse those inputs (a held-out twin is the same
    inputs under a different mapping).
    """
    instances: list[Instance] = []
    if inputs is not None:
        for text in inputs:
            label = rule.label_of(text.split())
            instances.append(Instance(f"{name}-{len(instances)}", text, (label,)))
    seen: set[tuple[str, ...]] = set()
    labels = list(rule.labels)
    attempts = 0
    while inputs is None and len(instances) < n_instances and attempts < n_instances * 50:
        label = labels[len(instances) % len(labels)]
        words = tuple(rule.sample_input(rng, label))
        attempts += 1
        if words in seen:
            continue
        seen.add(words)
        instances.append(Instance(f"{name}-{len(instances)}", " ".join(words), (label,)))
    rng.shuffle(instances)
    positive = [
        Example(" ".join(rule.sample_input(rng, label)), label, f"The rule gives {label}.")
        for label in labels
    ]
    wrong_input = rule.sample_input(rng, labels[0])
    negative = [
        Example(" ".join(wrong_input), labels[1], f"The rule gives {labels[0]}, not {labels[1]}.")
    ]
    return Task(
        name=name,
        definition=rule.definition(template),
        instances=tuple(instances),
        positive_examples=tuple(positive),
        negative_examples=tuple(negative),
        categories=(f"World {rule.family.replace('_', ' ')}",),
        source="tunelens instruction world",
        labels=tuple(sorted(rule.labels)),
        metadata={
            "family": rule.family,
            "rule_categories": list(rule.categories),
            "rule_labels": list(rule.labels),
        },
    )


def generate_world(seed: int = 0, *, n_train: int = 60, n_instances: int = 60) -> World:
    """The embedded world: ``n_train`` training tasks and 40 held-out tasks in 20 groups."""
    rng = random.Random(seed)
    heldout: list[Task] = []
    heldout_label_sets: set[frozenset[str]] = set()
    group = 0
    for family, n_groups in HELDOUT_GROUPS_PER_FAMILY.items():
        signatures: set[tuple] = set()
        for _ in range(n_groups):
            while True:
                rule = draw_rule(
                    rng,
                    seed=seed,
                    heldout=True,
                    family=family,
                    forbidden_label_sets=frozenset(heldout_label_sets),
                )
                if rule.signature not in signatures or len(signatures) > 50:
                    break
            signatures.add(rule.signature)
            heldout_label_sets.add(frozenset(rule.labels))
            twin = Rule(rule.family, rule.categories, _derangement(rule.labels, rng))
            inputs: list[str] | None = None
            for member, r in enumerate((rule, twin)):
                name = f"world_heldout_{group:02d}{'ab'[member]}_{family}"
                task = rule_to_task(
                    r, name, rng, n_instances=n_instances, template=rng.randrange(3), inputs=inputs
                )
                inputs = sorted(i.input for i in task.instances)
                heldout.append(task)
            group += 1
    forbidden = frozenset(heldout_label_sets)
    train = [
        rule_to_task(
            draw_rule(rng, seed=seed, heldout=False, forbidden_label_sets=forbidden),
            f"world_train_{i:03d}",
            rng,
            n_instances=n_instances,
            template=rng.randrange(3),
        )
        for i in range(n_train)
    ]
    for i, task in enumerate(train):
        train[i] = task.with_changes(name=f"{task.name}_{task.metadata['family']}")
    return World(seed=seed, train=train, heldout=heldout)


def definition_blind_upper_bound(tasks: list[Task]) -> float:
    """Best accuracy (0-100) of any method that sees input and label space but not the definition.

    Such a method must answer the same for the same (label space, input) in every
    task; the best it can do is the majority label over the tasks that share them.
    """
    votes: dict[tuple, Counter] = defaultdict(Counter)
    for task in tasks:
        for inst in task.instances:
            votes[(task.labels, inst.input)][inst.outputs[0]] += 1
    best = sum(c.most_common(1)[0][1] for c in votes.values())
    total = sum(sum(c.values()) for c in votes.values())
    return 100.0 * best / total


__all__ = [
    "FAMILIES",
    "World",
    "definition_blind_upper_bound",
    "draw_rule",
    "generate_world",
    "is_heldout",
    "rule_to_task",
]
