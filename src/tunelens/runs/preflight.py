"""Checks that need the loaded tasks but no model: run after tasks load, before any model loads.

A spec can be valid on its own and still impossible for its tasks (``k: [64]``
on tasks of 20 instances). Such a spec fails here, with one line naming the
spec file and the dotted key, instead of after minutes of computing. What is
checked is each experiment's own ``preflight`` hook (this module names none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelens.api import Experiment, StudyInputs
from tunelens.errors import TunelensInputError

__all__ = ["located", "preflight"]


def located(error: TunelensInputError, source: str | None, key: str) -> TunelensInputError:
    """``error``'s message placed at ``source`` (the spec file) and the dotted ``key``, so a
    failure deep in task sampling reads as a fault of the spec key that caused it."""
    return TunelensInputError(error.message, source=source, where=key)


def preflight(
    sections: Sequence[tuple[Experiment, Any]], inputs: StudyInputs, source: str | None
) -> None:
    """Every section's task-dependent bounds; the first failure is a TunelensInputError.

    An experiment without the hook (a duck-typed one of the tests) is not checked.
    """
    for experiment, section in sections:
        check = getattr(experiment, "preflight", None)
        if callable(check):
            check(section, inputs, source)
