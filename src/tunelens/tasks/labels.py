"""Decide whether a task is classification-like and, if so, what its label space is.

The audit's key baseline is a guess over a task's output space, and the
*simplified* and *delusive* variants need that space, so it has to be derived
the same way for every loader. SuperNI does not mark classification tasks, so
the space is read off the reference outputs of the instances.

The rule (every reference output of every instance counts as a candidate label):

1. No outputs, or more than ``MAX_LABELS`` (50) distinct outputs: free text.
2. The labels repeat: there are at least ``MIN_MEAN_REPEATS`` (2) instances per
   distinct output on average (``n_instances >= 2 * n_distinct``). A
   classification task reuses a few answers; a free-text task rarely does.
3. Otherwise, when a ``definition`` is given and every distinct output is
   named in it as a whole word or phrase (case-insensitive): classification.
   This catches tasks with many labels and few instances, where each label is
   seen about once but the definition enumerates them (SuperNI task1394 lists
   its 47 domains and its 22 instances use 22 of them).
4. Otherwise free text.

Positive examples do not contribute: the space is what the instances use
(task843 defines "negative" but its kept instances never use it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

MAX_LABELS = 50
MIN_MEAN_REPEATS = 2


def _named_in(label: str, definition: str) -> bool:
    """True if ``label`` occurs in ``definition`` as a whole word or phrase."""
    if not label.strip():
        return False
    pattern = r"(?<!\w)" + re.escape(label.strip()) + r"(?!\w)"
    return re.search(pattern, definition, flags=re.IGNORECASE) is not None


def derive_label_space(
    outputs_per_instance: Iterable[Sequence[str]],
    *,
    definition: str = "",
    max_labels: int = MAX_LABELS,
) -> tuple[str, ...] | None:
    """The sorted label space of a classification-like task, or ``None`` for free text.

    ``outputs_per_instance`` holds, for each instance, its reference outputs.
    See the module docstring for the rule.
    """
    per_instance = [tuple(outputs) for outputs in outputs_per_instance]
    distinct = {output for outputs in per_instance for output in outputs}
    if not distinct or len(distinct) > max_labels:
        return None
    if len(per_instance) >= MIN_MEAN_REPEATS * len(distinct):
        return tuple(sorted(distinct))
    if definition and all(_named_in(label, definition) for label in distinct):
        return tuple(sorted(distinct))
    return None
