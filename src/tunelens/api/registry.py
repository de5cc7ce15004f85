"""The experiments a study can run, registered by decorator (as lm-evaluation-harness does).

``@register_experiment`` on an :class:`~tunelens.api.experiment.Experiment`
subclass adds one instance under its ``name``. Experiment modules are
imported lazily (on the first :func:`get_experiments`), so the CLI, the report
and ``tunelens plan`` start without their heavier dependencies. Adding an
experiment is one module plus its name in ``EXPERIMENT_MODULES``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tunelens.api.experiment import Experiment

__all__ = ["EXPERIMENT_MODULES", "get_experiments", "register_experiment"]

# Imported in this order; a study's sections run in the order of registration.
EXPERIMENT_MODULES = (
    "tunelens.experiments.convergence",
    "tunelens.experiments.audit",
    "tunelens.experiments.world_eval",
    "tunelens.experiments.decide.experiment",
)

_REGISTRY: dict[str, Experiment] = {}

E = TypeVar("E", bound="type[Experiment]")


def register_experiment(cls: E) -> E:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    name = cls.name
    existing = _REGISTRY.get(name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"two experiments are named {name!r}")
    _REGISTRY[name] = cls()
    return cls


def get_experiments() -> dict[str, Experiment]:
    """Name -> experiment, in registration order."""
    for module in EXPERIMENT_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)
