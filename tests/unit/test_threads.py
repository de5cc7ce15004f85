"""The thread policy: one thread for small models, every core for large ones, env wins."""

from __future__ import annotations

import pytest

from tunelens.runs.threads import SMALL_MODEL_PARAMETERS, threads_for


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("TUNELENS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_small_models_run_on_one_thread_and_large_ones_on_every_core(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert threads_for(500_000) == 1
    assert threads_for(SMALL_MODEL_PARAMETERS - 1) == 1
    assert threads_for(SMALL_MODEL_PARAMETERS) == 4


def test_environment_variables_override_the_policy(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_for(500_000) == 3
    monkeypatch.setenv("TUNELENS_THREADS", "2")  # tunelens's own wins over OpenMP's
    assert threads_for(10**10) == 2
    monkeypatch.setenv("TUNELENS_THREADS", "zero")  # not a count: ignored
    assert threads_for(500_000) == 3
