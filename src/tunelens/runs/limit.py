"""``--limit N``: a quick look at a setup on a few items before the long run.

One mechanism for every experiment (``run``, the study commands, ``decide``,
``world eval``): the cell loop (:func:`tunelens.runs.study.execute`) shrinks
each section with :func:`limit_section` before its cells are made, and adds
``limit`` to every cell's parameters, so a limited cell never shares a key (nor
a store file) with a full one. What N bounds is each experiment's own
``limit_section(section, n)`` hook (at most N anchors, evaluation instances,
queries or test items per task; see the experiments' ``plan`` modules); an
experiment without one runs unchanged. results.json (decide.json:
``config.limit``) records the limit, the report says the run is limited, and so
does the command's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from tunelens.api import Cell, Experiment

__all__ = ["LIMIT_KEY", "limit_cells", "limit_note", "limit_section"]

LIMIT_KEY = "limit"


def limit_section(experiment: Experiment, section: Any, n: int | None) -> Any:
    """``section`` bounded by ``n`` (None: unchanged) by the experiment's own hook; a
    duck-typed experiment without the hook (tests) runs unchanged."""
    if n is None:
        return section
    own = getattr(experiment, "limit_section", None)
    return own(section, n) if callable(own) else section


def limit_cells(cells: Iterable[Cell], n: int | None) -> list[Cell]:
    """The cells with ``limit`` in their parameters (so in their keys); None: unchanged."""
    if n is None:
        return list(cells)
    return [dataclasses.replace(c, params={**c.params, LIMIT_KEY: n}) for c in cells]


def limit_note(n: int) -> str:
    """The line a limited run prints and its report shows."""
    return (
        f"limited run (--limit {n}): at most {n} anchors / evaluation instances / test items "
        "per task; a quick look, not results to report"
    )
