"""Convergence tuning factors: methods x ranks x target sets, all-linear, what LoRA adapts."""

from __future__ import annotations

import pytest
from tests.helpers.models import demo_sets, wrap
from typer.testing import CliRunner

from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.models.tuning.targets import describe_targets, resolve_target_modules
from tunelens.spec import TuningSpec


def test_tuning_variants_sweep_lora_factors_and_full_once():
    spec = ConvergenceSpec(
        tuning_methods=["lora", "full"],
        lora_ranks=[4, 8],
        target_module_sets=[["q_proj", "v_proj"], ["all-linear"]],
    )
    variants = spec.tuning_variants()
    assert len(variants) == 5
    lora = [(v.lora_r, tuple(v.target_modules)) for v in variants if v.method == "lora"]
    assert lora == [
        (4, ("q_proj", "v_proj")),
        (4, ("all-linear",)),
        (8, ("q_proj", "v_proj")),
        (8, ("all-linear",)),
    ]
    assert [v.method for v in variants].count("full") == 1
    assert ConvergenceSpec().tuning_variants() == [TuningSpec()]


def test_bad_sweep_values_are_rejected():
    with pytest.raises(ValueError):
        ConvergenceSpec(lora_ranks=[0])
    with pytest.raises(ValueError):
        ConvergenceSpec(target_module_sets=[[]])
    with pytest.raises(ValueError):
        ConvergenceSpec(tuning_methods=["qlora"])


def test_all_linear_resolves_every_block_linear_but_the_head(tiny_model):
    llama = wrap(tiny_model("llama"), "llama").model
    assert sorted(resolve_target_modules(llama, ["all-linear"])) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    gpt2 = wrap(tiny_model("gpt2"), "gpt2").model
    assert sorted(resolve_target_modules(gpt2, ["all-linear"])) == ["c_attn", "c_fc", "c_proj"]


def test_gpt2_default_targets_say_q_k_v_together(tiny_model):
    gpt2 = wrap(tiny_model("gpt2"), "gpt2").model
    described = describe_targets(gpt2, ["q_proj", "v_proj"])
    assert described["modules"] == ["c_attn"]
    assert described["weights"] == ["q, k, v together (GPT-2's fused c_attn)"]
    assert described["n_modules"] == 2
    llama = wrap(tiny_model("llama"), "llama").model
    assert describe_targets(llama, ["q_proj", "v_proj"])["weights"] == ["q", "v"]


def test_batched_lora_on_all_linear(tiny_model):
    from tunelens.models.tuning import tune_many_sets

    loaded = wrap(tiny_model("llama"), "llama")
    config = TuningSpec(target_modules=["all-linear"], epochs=1, batch_size=2, lora_r=2)
    states = tune_many_sets(loaded, demo_sets(2, 2), config)
    # 7 linear layers per block, 2 blocks, A and B each
    assert len(states) == 2 and len(states[0]) == 7 * 2 * 2


def test_convergence_command_has_the_sweep_and_patching_options():
    from tunelens.cli import app

    result = CliRunner().invoke(app, ["convergence", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--tuning-methods",
        "--lora-ranks",
        "--target-module-sets",
        "--patching",
        "--patching-layers",
    ):
        assert option in result.output
