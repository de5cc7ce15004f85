"""The experiments a study can run: a table of lazy entries, entry points, and registration.

An entry is ``"module:Class"``, imported on the first :func:`get_experiments`,
so the command line, the report and ``tunelens plan`` start without an
experiment's heavier dependencies. Three sources, in this order (a study's
sections run in it):

- :data:`SHIPPED`, the experiments tunelens ships;
- the Python entry-point group :data:`ENTRY_POINT_GROUP` (``tunelens.experiments``),
  so another installed package adds an experiment without editing tunelens
  (``[project.entry-points."tunelens.experiments"] mine = "pkg.mod:MyExperiment"``);
- :func:`add_experiment` (``"module:Class"`` or the class itself) and the
  ``@register_experiment`` class decorator, at run time.

The engine (``tunelens.runs``), the report, the spec and the commands ask this
registry and never name an experiment.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, TypeVar

from tunelens.errors import TunelensInputError

if TYPE_CHECKING:
    from tunelens.api.experiment import Experiment

__all__ = [
    "ENTRY_POINT_GROUP",
    "SHIPPED",
    "add_experiment",
    "get_experiments",
    "register_experiment",
    "remove_experiment",
]

SHIPPED: dict[str, str] = {
    "convergence": "tunelens.experiments.convergence.experiment:ConvergenceExperiment",
    "audit": "tunelens.experiments.audit.experiment:AuditExperiment",
    "world_eval": "tunelens.experiments.world_eval.experiment:WorldEvalExperiment",
    "decide": "tunelens.experiments.decide.experiment:DecideExperiment",
    "task_vectors": "tunelens.experiments.task_vectors.experiment:TaskVectorsExperiment",
    "function_vectors": "tunelens.experiments.function_vectors.experiment:FunctionVectorsExperiment",  # noqa: E501
}
"""The shipped experiments: name -> ``"module:Class"``."""

ENTRY_POINT_GROUP = "tunelens.experiments"

_ENTRIES: dict[str, str | type[Experiment]] = {}  # added at run time, after the others
_LOADED: dict[str, Experiment] = {}

E = TypeVar("E", bound="type[Experiment]")


def _load(name: str, target: str | type[Experiment]) -> Experiment:
    """One instance of the class ``target`` names; an entry that does not load is an input
    error naming the entry."""
    if not isinstance(target, str):
        return target()
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise TunelensInputError(
            f"experiment {name!r}: cannot load {target!r} ({error})", where=ENTRY_POINT_GROUP
        ) from None
    if getattr(cls, "name", None) != name:
        raise TunelensInputError(
            f"experiment entry {name!r} names a class whose name is {getattr(cls, 'name', None)!r}",
            where=ENTRY_POINT_GROUP,
        )
    return cls()


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _table() -> dict[str, str | type[Experiment]]:
    """Every entry, in run order: shipped, entry points, then added at run time."""
    table: dict[str, str | type[Experiment]] = dict(SHIPPED)
    for name, target in _entry_points().items():
        table.setdefault(name, target)  # a plug-in cannot replace a shipped experiment
    table.update(_ENTRIES)
    return table


def get_experiments() -> dict[str, Experiment]:
    """Name -> experiment instance, in run order (each entry imported once)."""
    experiments: dict[str, Experiment] = {}
    for name, target in _table().items():
        if name not in _LOADED:
            _LOADED[name] = _load(name, target)
        experiments[name] = _LOADED[name]
    return experiments


def add_experiment(name: str, target: str | type[Experiment]) -> None:
    """Register an experiment under ``name``: ``"module:Class"`` (imported when first asked
    for) or the class itself. Adding the same target again is a no-op; another target under
    a taken name is a ValueError."""
    current = _table().get(name)
    if current is not None and current != target:
        raise ValueError(f"two experiments are named {name!r}")
    _ENTRIES[name] = target


def remove_experiment(name: str) -> None:
    """Forget an experiment added at run time (tests; shipped entries stay)."""
    _ENTRIES.pop(name, None)
    if name not in SHIPPED:
        _LOADED.pop(name, None)


def register_experiment(cls: E) -> E:
    """Class decorator: register ``cls`` under ``cls.name`` (a shipped entry's own class is
    already in the table; importing its module again changes nothing)."""
    name = cls.name
    shipped = SHIPPED.get(name)
    if shipped == f"{cls.__module__}:{cls.__qualname__}":
        return cls
    existing = _LOADED.get(name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"two experiments are named {name!r}")
    _ENTRIES[name] = cls
    _LOADED[name] = cls()
    return cls
