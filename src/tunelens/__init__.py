"""tunelens: measure what in-context learning and instruction tuning do to a model.

The public API is :data:`__all__`. Everything but the text metrics loads on
first use (``tunelens.run_study`` imports the run machinery then), so
``import tunelens`` stays fast and pulls in neither torch nor scipy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from tunelens.measures.text import exact_match, rouge_l  # noqa: E402

# public name -> the module that defines it
_LAZY = {
    "Cell": "tunelens.api",
    "Experiment": "tunelens.api",
    "RunContext": "tunelens.api",
    "StudyInputs": "tunelens.api",
    "get_experiments": "tunelens.api",
    "register_experiment": "tunelens.api",
    "Spec": "tunelens.spec",
    "default_spec": "tunelens.spec",
    "load_spec": "tunelens.spec",
    "TuningConfig": "tunelens.models.tuning.config",
    "run_study": "tunelens.runs.study",
    "run_decide": "tunelens.experiments.decide.runner",
    "load_model": "tunelens.models.loading",
    "load_task_set": "tunelens.tasks.sets",
    "build_any_report": "tunelens.report",
    "TunelensInputError": "tunelens.errors",
}

__all__ = [
    "Cell",
    "Experiment",
    "RunContext",
    "Spec",
    "StudyInputs",
    "TunelensInputError",
    "TuningConfig",
    "__version__",
    "build_any_report",
    "default_spec",
    "exact_match",
    "get_experiments",
    "load_model",
    "load_spec",
    "load_task_set",
    "register_experiment",
    "rouge_l",
    "run_decide",
    "run_study",
]

if TYPE_CHECKING:
    from tunelens.api import (
        Cell,
        Experiment,
        RunContext,
        StudyInputs,
        get_experiments,
        register_experiment,
    )
    from tunelens.errors import TunelensInputError
    from tunelens.experiments.decide.runner import run_decide
    from tunelens.models.loading import load_model
    from tunelens.models.tuning.config import TuningConfig
    from tunelens.report import build_any_report
    from tunelens.runs.study import run_study
    from tunelens.spec import Spec, default_spec, load_spec
    from tunelens.tasks.sets import load_task_set


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tunelens' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
