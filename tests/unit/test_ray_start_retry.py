"""A local Ray node that misses Ray's fixed 30 s start-up window is started once more."""

from __future__ import annotations

from typing import Any

import pytest

from tunelens.runs.executors import RayExecutor

TIMED_OUT = Exception(
    "The current node timed out during startup. This could happen because some of the "
    "raylet failed to startup or the GCS has become overloaded."
)


class FakeRay:
    """ray.init fails with each of ``errors`` in turn, then succeeds."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.inits: list[dict[str, Any]] = []
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_start_up_time_out_is_retried_once() -> None:
    ray = FakeRay(TIMED_OUT)
    assert RayExecutor(num_cpus=1)._init(ray) is True
    assert len(ray.inits) == 2 and ray.shutdowns == 1
    assert ray.inits[0] == ray.inits[1] and ray.inits[0]["address"] == "local"


def test_two_time_outs_say_what_happened() -> None:
    ray = FakeRay(TIMED_OUT, TIMED_OUT)
    with pytest.raises(RuntimeError, match="did not start within Ray's 30 s, twice"):
        RayExecutor(num_cpus=1)._init(ray)
    assert ray.shutdowns == 2


def test_other_errors_are_not_retried() -> None:
    ray = FakeRay(ValueError("bad num_cpus"))
    with pytest.raises(ValueError, match="bad num_cpus"):
        RayExecutor(num_cpus=1)._init(ray)
    assert len(ray.inits) == 1 and ray.shutdowns == 0
