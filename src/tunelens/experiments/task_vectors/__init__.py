"""Task vectors (Hendel, Geva & Globerson 2023): does the in-context state carry the task?

The last-token state of a few-shot prompt whose query is a dummy, averaged over
dummies, is patched after block L into zero-shot forwards of *other* queries;
the layer is chosen on a dev split and reported on a test split, beside
zero-shot and ICL accuracy, with the same vector taken from the model tuned on
the same demonstrations (IT) and from a randomly initialised copy.

The package imports nothing heavy: ``spec`` (the section), ``sets`` (the seeded
draws), ``experiment`` (cells and their computation), ``aggregate``, ``plan``,
``results``, ``report`` and ``tidy``. Names of ``experiment`` are read through
this package lazily, so the command line and the spec load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.experiment"), name)
