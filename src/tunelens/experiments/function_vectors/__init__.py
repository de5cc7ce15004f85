"""Function vectors (Todd et al., ICLR 2024): which attention heads carry the task, and does
their summed output, added to a zero-shot forward, do what the demonstrations do?

The package imports nothing heavy: ``spec`` (the section), ``experiment`` (the
cells and the hooks), ``measure`` (what a cell computes on the model),
``aggregate`` (cells to results), ``plan``, ``results``, ``report`` and
``tidy``. Names of ``experiment`` are read through this package lazily, so the
command line and the spec load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.experiment"), name)
