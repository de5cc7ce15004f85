"""The task model shared by every loader, variant, prompt and experiment.

Types are frozen dataclasses: variants return new tasks instead of mutating,
so a cell's inputs can be hashed and cached safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Example:
    """A demonstration: an input, its output and an optional explanation."""

    input: str
    output: str
    explanation: str = ""


@dataclass(frozen=True)
class Instance:
    """An evaluation item with one or more acceptable reference outputs."""

    id: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """One task in the Super-NaturalInstructions sense.

    ``labels`` is the output label space (sorted) for classification-like tasks
    and ``None`` where outputs are free text; loaders derive it from the
    instances (see ``tunelens.tasks.labels.derive_label_space``).
    """

    name: str
    definition: str
    instances: tuple[Instance, ...]
    positive_examples: tuple[Example, ...] = ()
    negative_examples: tuple[Example, ...] = ()
    categories: tuple[str, ...] = ()
    source: str = ""
    labels: tuple[str, ...] | None = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    def with_changes(self, **changes) -> Task:
        """A copy with some fields replaced (tasks are immutable)."""
        return replace(self, **changes)
