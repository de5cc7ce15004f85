"""Batches that fit (issue 26.7): an out-of-memory error halves the batch and retries.

No GPU is needed: the error is injected (``torch.OutOfMemoryError`` above a size,
as CUDA raises it) and the CPU is let in among the devices that back off.
"""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers.models import demo_sets, wrap
from tests.helpers.numerics import assert_close_scaled

import tunelens.models.memory as memory
import tunelens.models.tuning.many_sets as many_sets
from tunelens.models.tuning import TuningConfig, tune_many_sets

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)"


def test_retry_halving_halves_until_the_batch_fits_on_an_accelerator():
    memory.used_batch_sizes(reset=True)
    tried = []

    def forward(n: int) -> str:
        tried.append(n)
        if n > 5:
            raise torch.OutOfMemoryError(OOM)
        return f"ran {n}"

    assert memory.retry_halving(forward, 32, "cuda", "probe") == ("ran 4", 4)
    assert tried == [32, 16, 8, 4]
    assert memory.used_batch_sizes()["probe"] == {"requested": 32, "used": [4]}
    with pytest.raises(torch.OutOfMemoryError):  # on the CPU it is not retried
        memory.retry_halving(forward, 32, "cpu", "probe")
    with pytest.raises(torch.OutOfMemoryError):  # nor once a single row does not fit
        memory.retry_halving(lambda n: forward(n + 5), 4, "mps", "probe")
    with pytest.raises(ValueError):  # other errors are not out-of-memory errors
        memory.retry_halving(lambda n: int("x"), 8, "cuda", "probe")
    # Accelerate's test recognises the message of a plain RuntimeError too
    assert memory.is_out_of_memory(RuntimeError("CUDA error: out of memory."))


@pytest.fixture
def oom_above(monkeypatch):
    """Lockstep training raises OOM for blocks of more than ``n`` sets, on this CPU."""
    monkeypatch.setattr(memory, "BACKOFF_DEVICES", {"cpu", "cuda", "mps"})
    real = many_sets._train_lockstep
    seen: list[int] = []

    def install(n: int) -> list[int]:
        def fake(loaded, names, encoded, *args, **kwargs):
            seen.append(len(encoded))
            if len(encoded) > n:
                raise torch.OutOfMemoryError(OOM)
            return real(loaded, names, encoded, *args, **kwargs)

        monkeypatch.setattr(many_sets, "_train_lockstep", fake)
        return seen

    return install


def test_batched_tuning_that_runs_out_of_memory_gives_the_same_adapters(tiny_model, oom_above):
    loaded = wrap(tiny_model("llama"), "llama")
    sets = demo_sets(5, 4)
    config = TuningConfig(epochs=2, batch_size=2)
    want_losses: list[list[float]] = []
    want = tune_many_sets(loaded, sets, config, seeds=range(5), losses=want_losses)
    memory.used_batch_sizes(reset=True)
    seen = oom_above(2)
    got_losses: list[list[float]] = []
    got = tune_many_sets(loaded, sets, config, seeds=range(5), sets_per_batch=5, losses=got_losses)
    assert seen == [5, 2, 2, 1]  # halved once, then kept: 2 + 2 + the last 1
    assert memory.used_batch_sizes()["tuning: sets per forward"]["used"] == [2, 1]
    for ours, theirs in zip(got, want, strict=True):
        for key in theirs:
            assert_close_scaled(ours[key], theirs[key], 1e-4)
    assert_close_scaled(torch.tensor(got_losses), torch.tensor(want_losses), 1e-5)


def test_the_batch_sizes_used_go_into_the_manifest(tmp_path, oom_above):
    from tests.helpers.cli import invoke

    oom_above(1)
    out = tmp_path / "out"
    args = ["--k", "1", "--n-pairs", "2", "--seeds", "0", "--controls", "none", "--epochs", "1"]
    result = invoke("convergence", *args, "--out", out, "--no-progress")
    assert result.code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["batch_sizes"]["tuning: sets per forward"] == {"requested": 2, "used": [1]}
