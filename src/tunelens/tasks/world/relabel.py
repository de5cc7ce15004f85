"""Held-out world tasks with label words never used as labels in training.

``tunelens world eval --labels novel`` asks whether in-context learning reads
the label from the demonstrations or recalls it from training: every label
word of a task is replaced, in its instances, examples, definition and label
space, by one of ``NOVEL_LABEL_WORDS``. The replacement depends on the label
space only, so the two twins of a held-out group (same label space, deranged
mapping) keep sharing a label space and the definition-blind bound is unchanged.
"""

from __future__ import annotations

import hashlib
import random
import re

from tunelens.tasks.types import Example, Instance, Task
from tunelens.tasks.world.lexicon import NOVEL_LABEL_WORDS

__all__ = ["LABEL_MODES", "novel_label_map", "relabel_tasks", "with_novel_labels"]

LABEL_MODES = ("original", "novel")


def novel_label_map(labels: tuple[str, ...]) -> dict[str, str]:
    """Old label word -> novel word, a pure function of the (sorted) label space."""
    key = hashlib.sha256("|".join(sorted(labels)).encode()).hexdigest()
    chosen = random.Random(int(key[:16], 16)).sample(NOVEL_LABEL_WORDS, len(labels))
    return dict(zip(sorted(labels), chosen, strict=True))


def with_novel_labels(task: Task) -> Task:
    """The task with every label word swapped for a novel word (see the module docstring)."""
    if not task.labels:
        raise ValueError(f"task {task.name!r} has no label space to replace")
    mapping = novel_label_map(task.labels)

    def swap(word: str) -> str:
        return mapping.get(word, word)

    pattern = re.compile(r'"(' + "|".join(re.escape(w) for w in mapping) + r')"')
    definition = pattern.sub(lambda m: f'"{mapping[m.group(1)]}"', task.definition)
    explanation = re.compile(r"\b(" + "|".join(re.escape(w) for w in mapping) + r")\b")

    def example(e: Example) -> Example:
        return Example(
            e.input, swap(e.output), explanation.sub(lambda m: swap(m.group(1)), e.explanation)
        )

    metadata = dict(task.metadata)
    if "rule_labels" in metadata:
        metadata["rule_labels"] = [swap(w) for w in metadata["rule_labels"]]
    metadata["labels_mode"] = "novel"
    return task.with_changes(
        definition=definition,
        instances=tuple(
            Instance(i.id, i.input, tuple(swap(o) for o in i.outputs)) for i in task.instances
        ),
        positive_examples=tuple(example(e) for e in task.positive_examples),
        negative_examples=tuple(example(e) for e in task.negative_examples),
        labels=tuple(sorted(mapping.values())),
        metadata=metadata,
    )


def relabel_tasks(tasks: list[Task], mode: str) -> list[Task]:
    """``mode`` "original" returns the tasks; "novel" swaps their label words."""
    if mode not in LABEL_MODES:
        raise ValueError(f"labels mode must be one of {LABEL_MODES}, got {mode!r}")
    return list(tasks) if mode == "original" else [with_novel_labels(t) for t in tasks]
