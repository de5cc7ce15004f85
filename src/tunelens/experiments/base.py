"""What every experiment provides to the run machinery: cells, a cell runner, an aggregator.

A *cell* is one independent unit of work, e.g. (experiment, task set, condition,
seed). Its key is a hash of its content and the code version, so the store can
skip finished cells on a re-run and never mixes results of different code.
Cell results are plain JSON; aggregation reads only them (never a model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

CODE_VERSION = "2"  # bump when a change alters cell results; old cells are then recomputed


@dataclass(frozen=True)
class Cell:
    """One unit of work. ``params`` is the JSON-able spec slice the cell depends on."""

    experiment: str
    name: str  # human-readable, e.g. "k=8,flip=0.0,seed=1"
    params: dict[str, Any] = field(hash=False)
    seed: int = 0

    @property
    def key(self) -> str:
        payload = json.dumps(
            {
                "experiment": self.experiment,
                "params": self.params,
                "seed": self.seed,
                "code": CODE_VERSION,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


@dataclass
class RunContext:
    """What a cell runner may use: cached models and a way to report progress."""

    load_model: Callable[..., Any]  # (name, dtype=..., device=...) -> LoadedModel, cached
    progress: Callable[[str, int, int], None] = lambda label, done, total: None
    device: str = "cpu"
    dtype: str = "float32"


class Experiment(Protocol):
    """The contract between an experiment and ``tunelens.runs``."""

    name: str

    def cells(self, section: Any) -> list[Cell]:
        """Every cell of this experiment's spec section, in a deterministic order."""

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        """Compute one cell; the result must be JSON-serialisable and deterministic."""

    def aggregate(self, section: Any, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
        """The experiment's keys of results.json (e.g. {"convergence": [...]}) from cell results."""
