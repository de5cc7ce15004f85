"""How many threads a cell's torch work uses: one policy, set where models are loaded.

On a CPU, a model of world-model size (well under a million parameters) gains
nothing from more threads and OpenMP's spinning workers burn the other cores
(issue 16 measured 35-48x more CPU time for the same captures with two
spinning threads than with one). So small models run on one thread and large
ones on every core. The usual environment variables win: ``TUNELENS_THREADS``,
else ``OMP_NUM_THREADS``. One thread per small-model cell is also what a Ray
task (one CPU, ``OMP_NUM_THREADS=1``) uses, so local and Ray runs of small
models compute the same floats and write the same bytes.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["SMALL_MODEL_PARAMETERS", "apply_thread_policy", "threads_for"]

SMALL_MODEL_PARAMETERS = 100_000_000


def threads_for(parameters: int) -> int:
    """Threads for a model of ``parameters`` parameters under the environment's settings."""
    for variable in ("TUNELENS_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    if parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def apply_thread_policy(loaded: Any) -> int:
    """Set torch's intra-op threads for ``loaded`` (a LoadedModel); returns the count."""
    import torch

    model = getattr(loaded, "model", None)
    parameters = sum(p.numel() for p in model.parameters()) if model is not None else 0
    threads = threads_for(parameters)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
