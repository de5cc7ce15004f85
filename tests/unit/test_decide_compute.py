"""Compute estimates per 1,000 items and tuning's one-off cost, against hand-computed numbers."""

from __future__ import annotations

import pytest

from tunelens.experiments.decide.compute import (
    ModelShape,
    break_even_items,
    compute_entry,
    forward_flops,
    inference_per_1000,
    pair_uses,
    training_flops,
)
from tunelens.experiments.decide.config import DecideConfig
from tunelens.models.tuning import TuningConfig, step_batches

SHAPE = ModelShape(non_embedding=1000, layers=2, width=10)


def test_forward_flops_by_hand():
    # 2 N T + L d T (T + 1) = 2*1000*5 + 2*10*5*6 = 10000 + 600
    assert forward_flops(5, SHAPE) == 10_600
    assert forward_flops(0, SHAPE) == 0


def test_inference_per_1000_items():
    out = inference_per_1000([4, 6], 1.0, SHAPE)
    # items of 5 and 7 tokens: (10600 + (14000 + 2*10*7*8 = 15120)) / 2 = 12860 per item
    assert out["prompt_tokens_per_item"] == 5
    assert out["prompt_tokens"] == 5000
    assert out["answer_tokens"] == 1000
    assert out["flops"] == pytest.approx(12_860_000)


def test_training_flops_count_every_use():
    out = training_flops([5, 7], [3, 1], SHAPE)
    assert out["tokens"] == 5 * 3 + 7 * 1
    assert out["flops"] == pytest.approx(3 * (10_600 * 3 + 15_120 * 1))


def test_pair_uses_follow_the_tuning_schedule():
    config = TuningConfig(epochs=3, batch_size=2, seed=0)
    steps = step_batches(5, config)
    assert pair_uses(5, steps) == [3, 3, 3, 3, 3]
    capped = TuningConfig(epochs=3, batch_size=2, max_steps=2, seed=0)
    assert sum(pair_uses(5, step_batches(5, capped))) == 4


def test_break_even():
    # 1e6 FLOPs once, saving 1000 per item: pays back after 1000 items
    assert break_even_items(1e6, 500.0, 1500.0) == pytest.approx(1000.0)
    assert break_even_items(1e6, 1500.0, 1500.0) is None


def test_compute_entry_shape():
    entry = compute_entry([4], 1.0, SHAPE, training={"tokens": 1.0, "flops": 2.0})
    assert set(entry) == {"per_1000_items", "training"}
    assert set(compute_entry([4], 1.0, SHAPE)) == {"per_1000_items"}


def test_config_defaults_match_the_issue():
    config = DecideConfig()
    assert config.k == [1, 2, 4, 8, 16]
    assert config.tune_sizes == [8, 32, 128, "all"]
    assert DecideConfig(k=[4, 1, 4], tune_sizes=["all", 32, 8]).k == [1, 4]
    assert DecideConfig(tune_sizes=["all", 32, 8]).tune_sizes == [8, 32, "all"]
