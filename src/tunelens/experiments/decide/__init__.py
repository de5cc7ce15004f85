"""Decide for one task: prompt with examples (ICL) or tune, and is the tuning gain real?

``tunelens decide --task TASK --model MODEL [--costs COSTS] [--out DIR]`` splits
the task's labelled examples (:mod:`~tunelens.experiments.decide.split`), measures zero-shot,
ICL at several k, tuning at several n, the format-only controls and the
label-space guess on one test set (:mod:`~tunelens.experiments.decide.methods`), adds error
costs (:mod:`~tunelens.experiments.decide.costs`), compute
(:mod:`~tunelens.experiments.decide.compute`) and paired comparisons
(:mod:`~tunelens.experiments.decide.results`), and says what they
mean (:mod:`~tunelens.experiments.decide.verdict`) in DIR/decide.json and DIR/decide.html
(:mod:`~tunelens.experiments.decide.report`).

The package imports lazily: ``tunelens.experiments.decide.config`` does not pull in torch, so
the command line starts fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DecideConfig", "DecideOutcome", "make_config", "run_decide"]


def __getattr__(name: str) -> Any:
    if name in ("DecideConfig", "make_config"):
        from tunelens.experiments.decide import config

        return getattr(config, name)
    if name in ("DecideOutcome", "run_decide"):
        from tunelens.experiments.decide import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'tunelens.experiments.decide' has no attribute {name!r}")
