"""How many threads a cell's torch work uses: one policy, set where models are loaded.

On a CPU, a model of world-model size (well under a million parameters) gains
nothing from more threads and OpenMP's spinning workers burn the other cores
(issue 16 measured 35-48x more CPU time for the same captures with two
spinning threads than with one). So small models run on one thread and large
ones on every core. The usual environment variables win: ``TUNELENS_THREADS``,
else ``OMP_NUM_THREADS``. One thread per small-model cell is also what a Ray
task (one CPU, ``OMP_NUM_THREADS=1``) and a local worker process use, so local
runs (any number of workers) and Ray runs of small models compute the same
floats and write the same bytes.

The local executor divides the usable cores by the threads a cell uses to
decide how many cells run at once (:func:`threads_for_model` reads a model's
size from its weights' headers, before any model loads).
"""

from __future__ import annotations

import json
import math
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "SMALL_MODEL_PARAMETERS",
    "apply_thread_policy",
    "threads_for",
    "threads_for_model",
    "usable_cores",
]

SMALL_MODEL_PARAMETERS = 100_000_000


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _environment_threads() -> int | None:
    for variable in ("TUNELENS_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def threads_for(parameters: int) -> int:
    """Threads for a model of ``parameters`` parameters under the environment's settings."""
    fixed = _environment_threads()
    if fixed is not None:
        return fixed
    if parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return usable_cores()


def threads_for_model(name_or_path: str | None) -> int:
    """:func:`threads_for` a model named as a cell names it ('world', a directory), unloaded.

    ``None`` (a cell without a model) counts as small. A model whose size cannot
    be read from its safetensors headers counts as large (every core).
    """
    fixed = _environment_threads()
    if fixed is not None:
        return fixed
    if name_or_path is None:
        return threads_for(0)
    try:
        parameters = _weights_parameters(str(name_or_path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        parameters = SMALL_MODEL_PARAMETERS
    return threads_for(parameters)


@lru_cache(maxsize=32)
def _weights_parameters(name_or_path: str) -> int:
    """Parameters in a model directory's ``*.safetensors`` files, from their headers alone."""
    from tunelens.models.paths import is_world_model, world_model_dir

    directory = (
        world_model_dir(name_or_path)
        if is_world_model(name_or_path)
        else Path(name_or_path).expanduser()
    )
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no safetensors weights in {directory}")
    total = 0
    for path in files:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError(f"implausible safetensors header in {path}")
            header = json.loads(handle.read(length))
        total += sum(
            math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__"
        )
    return total


def apply_thread_policy(loaded: Any) -> int:
    """Set torch's intra-op threads for ``loaded`` (a LoadedModel); returns the count."""
    import torch

    model = getattr(loaded, "model", None)
    parameters = sum(p.numel() for p in model.parameters()) if model is not None else 0
    threads = threads_for(parameters)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
