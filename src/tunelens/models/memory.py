"""Batches that fit: on an accelerator, an out-of-memory error halves the batch and retries.

Accelerate's ``find_executable_batch_size`` idea (its OOM test included,
``should_reduce_batch_size``), in one place for tunelens's own loops: the work
is retried with half the rows until it fits or a single row does not. Only on
CUDA and MPS (:data:`BACKOFF_DEVICES`): there the allocator fails cleanly and
frees the memory on retry, while a CPU out of memory usually ends the process.
Each site's sizes that ran are recorded (:func:`used_batch_sizes`) and go into
the run's ``manifest.json``; a retried batch computes what the full one would
(rows of a batch are independent), so results do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

__all__ = ["BACKOFF_DEVICES", "is_out_of_memory", "retry_halving", "used_batch_sizes"]

BACKOFF_DEVICES = {"cuda", "mps"}
_T = TypeVar("_T")
_USED: dict[str, dict[str, Any]] = {}


def is_out_of_memory(error: BaseException) -> bool:
    """An accelerator (or allocator) out-of-memory error, as Accelerate recognises them."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, Exception) and should_reduce_batch_size(error)


def _clear(device: torch.device) -> None:
    clear_device_cache(garbage_collection=True)


def retry_halving(
    run: Callable[[int], _T], size: int, device: torch.device | str, site: str
) -> tuple[_T, int]:
    """``(run(n), n)`` for the first n of size, size // 2, ... that does not run out of memory.

    Off :data:`BACKOFF_DEVICES` the error propagates unchanged, as it does once
    a batch of one does not fit.
    """
    device = torch.device(device)
    n = max(1, size)
    while True:
        try:
            result = run(n)
        except Exception as error:
            if device.type not in BACKOFF_DEVICES or n == 1 or not is_out_of_memory(error):
                raise
            _clear(device)
            n //= 2
            continue
        record(site, size, n)
        return result, n


def record(site: str, requested: int, used: int) -> None:
    """Note that ``site`` ran a batch of ``used`` where ``requested`` was asked for."""
    entry = _USED.setdefault(site, {"requested": requested, "used": []})
    entry["requested"] = max(entry["requested"], requested)
    if used not in entry["used"]:
        entry["used"] = sorted([*entry["used"], used], reverse=True)


def used_batch_sizes(*, reset: bool = False) -> dict[str, dict[str, Any]]:
    """Every site's largest requested size and the sizes that ran, in this process."""
    snapshot = {site: {**entry, "used": list(entry["used"])} for site, entry in _USED.items()}
    if reset:
        _USED.clear()
    return snapshot
