"""Float comparisons whose tolerance scales with the values compared (issue 26.4).

Float rounding in a sum grows with its largest terms, not with its result, and
CPUs differ in how they sum (AVX-512 / AMX kernels take another order than AVX2).
Hidden states with rogue dimensions reach ~10^3 (the world model), so a fixed
``atol=1e-4`` asks them for 1e-7 relative, below float32 precision, while values
of order 1 are fine with it. ``scaled(tol, values)`` is ``tol`` per unit of the
largest |value| compared (never less than ``tol``): unchanged for values of order
1, proportionate for large ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def scaled(tol: float, *values: Any) -> float:
    """``tol`` times the largest finite |value| in ``values`` (at least 1)."""
    largest = 1.0
    for value in values:
        array = np.abs(_array(value))
        finite = array[np.isfinite(array)]
        if finite.size:
            largest = max(largest, float(finite.max()))
    return tol * largest


def assert_close_scaled(
    actual: Any, expected: Any, tol: float, *, msg: str | None = None, equal_nan: bool = False
) -> None:
    """``|actual - expected| <= scaled(tol, expected)`` elementwise (shapes and dtypes equal)."""
    atol = scaled(tol, expected)
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        torch.testing.assert_close(
            actual, expected, atol=atol, rtol=0, equal_nan=equal_nan, msg=msg
        )
    else:
        np.testing.assert_allclose(
            actual, expected, atol=atol, rtol=0, equal_nan=equal_nan, err_msg=msg or ""
        )
