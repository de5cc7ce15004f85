"""Rule families of the instruction world.

A rule maps a short sequence of world words to one label of its label space.
Each family knows how to draw inputs balanced over its labels and how to state
itself in English (several paraphrase templates), so a definition carries the
rule and a model that reads it could solve a task it has never seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelens.tasks.world.lexicon import CATEGORIES, CATEGORY_NOUN, WORD_CATEGORY

FAMILIES: tuple[str, ...] = (
    "word_category",  # one word; its category decides among 2-4 labels
    "first_word",  # three words; is the first word of category C?
    "last_word",  # three words; is the last word of category C?
    "contains",  # three words; does any word belong to category C?
    "majority",  # three words from C1 and C2; are there more C1 than C2?
    "same_category",  # two words; do both belong to the same category?
)

SEQUENCE_LENGTH = {
    "word_category": 1,
    "first_word": 3,
    "last_word": 3,
    "contains": 3,
    "majority": 3,
    "same_category": 2,
}


@dataclass(frozen=True)
class Rule:
    """One rule: a family, the categories it involves, and its labels in order.

    For ``word_category`` label i belongs to category i. For the binary families
    labels are (label when the condition holds, label when it does not); the
    categories are (target, *distractors) or, for ``majority``, (more, fewer).
    """

    family: str
    categories: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def signature(self) -> tuple[str, tuple[str, ...]]:
        """What the train / held-out split is decided on: family and category set."""
        return (self.family, tuple(sorted(self.categories)))

    def label_of(self, words: list[str]) -> str:
        cats = [WORD_CATEGORY[w] for w in words]
        f, c = self.family, self.categories
        if f == "word_category":
            return self.labels[c.index(cats[0])]
        if f == "first_word":
            holds = cats[0] == c[0]
        elif f == "last_word":
            holds = cats[-1] == c[0]
        elif f == "contains":
            holds = c[0] in cats
        elif f == "majority":
            holds = cats.count(c[0]) > cats.count(c[1])
        elif f == "same_category":
            holds = len(set(cats)) == 1
        else:
            raise ValueError(f"unknown rule family {f!r}")
        return self.labels[0] if holds else self.labels[1]

    def sample_input(
        self, rng: random.Random, label: str, lexicon: dict[str, tuple[str, ...]] | None = None
    ) -> list[str]:
        """Rejection-sample an input whose label is ``label``.

        ``lexicon`` restricts the words of each category (default: all of them).
        """
        for _ in range(1000):
            words = self._draw(rng, label, lexicon or CATEGORIES)
            if self.label_of(words) == label:
                return words
        raise RuntimeError(f"cannot draw an input with label {label!r} for {self}")

    def _draw(
        self, rng: random.Random, label: str, lexicon: dict[str, tuple[str, ...]]
    ) -> list[str]:
        f, c = self.family, self.categories
        n = SEQUENCE_LENGTH[f]
        if f == "word_category":
            return [rng.choice(lexicon[c[self.labels.index(label)]])]
        if f == "same_category":
            if label == self.labels[0]:
                cat = rng.choice(c)
                return rng.sample(lexicon[cat], 2)
            a, b = rng.sample(c, 2)
            return [rng.choice(lexicon[a]), rng.choice(lexicon[b])]
        return [rng.choice(lexicon[rng.choice(c)]) for _ in range(n)]

    def definition(self, template: int) -> str:
        """The rule in English, in one of three paraphrases."""
        f, c, lab = self.family, self.categories, [f'"{x}"' for x in self.labels]
        one = {k: v[0] for k, v in CATEGORY_NOUN.items()}
        many = {k: v[1] for k, v in CATEGORY_NOUN.items()}
        t = template % 3
        if f == "word_category":
            parts = [f"{one[cat]} answer {label}" for cat, label in zip(c, lab, strict=True)]
            if t == 0:
                return "If the word is " + ", if it is ".join(parts) + "."
            if t == 1:
                return (
                    "Name the kind of the word: for "
                    + ", for ".join(
                        f"{one[cat]} say {label}" for cat, label in zip(c, lab, strict=True)
                    )
                    + "."
                )
            return (
                "Each word is "
                + " or ".join(one[x] for x in c)
                + ". Answer "
                + ", ".join(f"{label} for {one[cat]}" for cat, label in zip(c, lab, strict=True))
                + "."
            )
        condition = {
            "first_word": f"the first word is {one[c[0]]}",
            "last_word": f"the last word is {one[c[0]]}",
            "contains": f"any word is {one[c[0]]}",
            "majority": f"there are more {many[c[0]]} than {many[c[1]]}",
            "same_category": "both words are of the same kind",
        }[f]
        if t == 0:
            return f"If {condition}, answer {lab[0]}, otherwise answer {lab[1]}."
        if t == 1:
            return f"Answer {lab[0]} when {condition} and {lab[1]} when not."
        return f"Read the words. Say {lab[0]} if {condition}. Else say {lab[1]}."
