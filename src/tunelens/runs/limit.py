"""``--limit N``: a quick look at a setup on a few items before the long run.

One mechanism for every experiment (``run``, ``convergence``, ``audit``,
``decide``, ``world eval``): the cell loop (:func:`tunelens.runs.study.execute`)
shrinks each section with :func:`limit_section` before its cells are made, and
adds ``limit`` to every cell's parameters, so a limited cell never shares a key
(nor a store file) with a full one. What N bounds, per experiment:

==============  ===============================================================
convergence     (demonstration set, anchor) pairs per seed: ``min(n_pairs, N)``,
                at least 2 (the statistics across anchors need two)
audit           held-out instances scored per task and training instances per
                task (``full`` and larger sizes become N; equal sizes merge)
world_eval      queries per task and k
decide          test items (the first N of the stratified test set, so label
                proportions stay as even as N allows)
==============  ===============================================================

An experiment may define ``limit_section(section, n)`` itself (the hook);
others run unchanged. results.json (decide.json: ``config.limit``) records the
limit, the report says the run is limited, and so does the command's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from tunelens.api import Cell, Experiment

__all__ = ["LIMIT_KEY", "limit_cells", "limit_note", "limit_section"]

LIMIT_KEY = "limit"


def _convergence(section: Any, n: int) -> Any:
    return section.model_copy(update={"n_pairs": max(2, min(section.n_pairs, n))})


def _audit(section: Any, n: int) -> Any:
    sizes: list[Any] = []
    for size in section.instances_per_task:
        capped = n if size == "full" else min(int(size), n)
        if capped not in sizes:
            sizes.append(capped)
    return section.model_copy(
        update={
            "eval_instances_per_task": min(section.eval_instances_per_task, n),
            "instances_per_task": sizes,
        }
    )


def _world_eval(section: Any, n: int) -> Any:
    return section.model_copy(update={"queries_per_task": min(section.queries_per_task, n)})


def _decide(section: Any, n: int) -> Any:
    if section.config.limit == n:
        return section
    config = section.config.model_copy(update={"limit": n})
    return dataclasses.replace(section, config=config, _plan=None)


RULES: dict[str, Callable[[Any, int], Any]] = {
    "convergence": _convergence,
    "audit": _audit,
    "world_eval": _world_eval,
    "decide": _decide,
}


def limit_section(experiment: Experiment, section: Any, n: int | None) -> Any:
    """``section`` bounded by ``n`` (None: unchanged); the experiment's own hook first."""
    if n is None:
        return section
    own = getattr(experiment, "limit_section", None)
    if callable(own):
        return own(section, n)
    rule = RULES.get(experiment.name)
    return rule(section, n) if rule is not None else section


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
