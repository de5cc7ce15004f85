"""The contracts between experiments and the run machinery: cells, experiments, the registry.

Everything an experiment needs to plug into ``tunelens run``, ``tunelens
report``, the local and Ray executors and ``tunelens plan`` is named here.
"""

from __future__ import annotations

from tunelens.api.cell import Cell
from tunelens.api.experiment import Experiment, RunContext, StudyInputs
from tunelens.api.registry import get_experiments, register_experiment

__all__ = [
    "Cell",
    "Experiment",
    "RunContext",
    "StudyInputs",
    "get_experiments",
    "register_experiment",
]
