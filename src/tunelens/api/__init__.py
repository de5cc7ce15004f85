"""The contracts between experiments and the run machinery: cells, experiments, the registry.

Everything an experiment needs to plug into ``tunelens run``, ``tunelens
report``, the local and Ray executors and ``tunelens plan`` is named here.
"""

from __future__ import annotations

from tunelens.api.cell import Cell
from tunelens.api.experiment import Experiment, ReportPart, RunContext, StudyInputs
from tunelens.api.registry import (
    add_experiment,
    get_experiments,
    register_experiment,
    remove_experiment,
)

__all__ = [
    "Cell",
    "Experiment",
    "ReportPart",
    "RunContext",
    "StudyInputs",
    "add_experiment",
    "get_experiments",
    "register_experiment",
    "remove_experiment",
]
