"""The experiments a study can run, by spec section name.

Imports are lazy (inside :func:`get_experiments`) so that the run machinery,
the report and ``tunelens plan`` load without the experiments' heavier
dependencies, and so that a broken experiment module fails only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunelens.experiments.base import Experiment


def get_experiments() -> dict[str, Experiment]:
    """Section name -> experiment, in the order their sections run."""
    from tunelens.experiments.audit import AuditExperiment
    from tunelens.experiments.convergence import ConvergenceExperiment

    return {"convergence": ConvergenceExperiment(), "audit": AuditExperiment()}


def __getattr__(name: str) -> object:
    """``EXPERIMENTS`` is built on first access, so importing this module stays cheap."""
    if name == "EXPERIMENTS":
        return get_experiments()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
