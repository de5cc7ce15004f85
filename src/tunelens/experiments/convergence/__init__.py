"""Question 1: does ICL move hidden states where instruction tuning does? Layer by layer.

The package imports nothing heavy: its modules are ``spec`` (the section),
``experiment`` (the cells and their aggregation), ``plan``, ``results``,
``report`` and ``tidy``. Names of ``experiment`` are read through this package
lazily, so the command line and the spec load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.experiment"), name)
