"""A cell: one independent unit of work, addressed by the content it depends on.

A cell's key hashes its experiment, that experiment's code version, its
parameters, its seed and the *content digests* of its inputs (every task it
reads, the model it loads). So an edited task file, a retrained model at the
same path or a code change that alters results gives a new key and the cell is
computed again, while an unchanged cell is found in the store and skipped.

``data`` carries the loaded inputs (e.g. the tasks) to the cell runner; it is
neither hashed nor stored (its digest in ``inputs`` stands for it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunelens.io import digest_json

__all__ = ["Cell", "digest_json"]


@dataclass(frozen=True)
class Cell:
    """One unit of work. ``params`` is the JSON-able spec slice the cell depends on."""

    experiment: str
    name: str  # human-readable, e.g. "world k=8 flip=0.0 seed=1"
    params: dict[str, Any] = field(hash=False)
    seed: int = 0
    inputs: dict[str, str] = field(default_factory=dict, hash=False)  # role -> content digest
    code_version: str = "1"
    data: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The content address: equal for equal work, different when any input changes."""
        return digest_json(
            {
                "experiment": self.experiment,
                "code": self.code_version,
                "params": self.params,
                "seed": self.seed,
                "inputs": self.inputs,
            }
        )
