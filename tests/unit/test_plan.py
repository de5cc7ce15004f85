"""`tunelens.runs.plan`: parameter counts from configs, token estimates, FLOPs and time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelens.api import Cell
from tunelens.errors import TunelensInputError
from tunelens.runs.plan import (
    KNOWN_ARCHITECTURES,
    audit_tokens,
    convergence_tokens,
    count_parameters,
    known_architecture,
    model_size,
    peak_memory,
    plan_study,
)
from tunelens.spec import ConvergenceSpec, Spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5"])
def test_counts_match_real_models(tiny_model, arch, tmp_path):
    model, _ = tiny_model(arch)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    size = model_size(str(tmp_path))
    assert size.total == sum(p.numel() for p in model.parameters())
    assert 0 < size.non_embedding < size.total
    assert size.source.startswith("config.json at")


def test_known_architectures_match_published_sizes():
    # Parameter counts of the Hugging Face checkpoints.
    assert count_parameters(KNOWN_ARCHITECTURES["llama-2-7b"])[1] == 6_738_415_616
    assert count_parameters(KNOWN_ARCHITECTURES["llama-2-13b"])[1] == 13_015_864_320
    assert count_parameters(KNOWN_ARCHITECTURES["t5-large-lm-adapt"])[1] == 783_150_080
    assert count_parameters(KNOWN_ARCHITECTURES["gpt2"])[1] == 124_439_808
    assert known_architecture("models/Llama-2-7b-hf") == "llama-2-7b"
    assert known_architecture("/x/Llama-2-13b-chat-hf/") == "llama-2-13b"
    assert known_architecture("google/t5-large-lm-adapt") == "t5-large-lm-adapt"
    assert known_architecture("models/my-model") is None
    with pytest.raises(TunelensInputError, match="cannot size the model"):
        model_size("models/my-model")


def test_token_estimates_follow_the_spec():
    params = {
        "tasks": "data/absent.json",
        "k": 8,
        "n_pairs": 30,
        "anchors_per_set": 1,
        "definition": False,
        "tuning": {"epochs": 10, "batch_size": 8},
    }
    tokens = convergence_tokens(None, Cell("convergence", "c", params))
    # 30 tuned sets x 10 epochs x 8 demonstrations x 200 tokens
    assert tokens["backward"] == 30 * 10 * 8 * 200
    assert tokens["forward"] == 30 * (200 + 9 * 200 + 200)
    doubled = convergence_tokens(None, Cell("convergence", "c", {**params, "k": 16}))
    assert doubled["backward"] == 2 * tokens["backward"]
    capped = convergence_tokens(
        None,
        Cell(
            "convergence",
            "c",
            {**params, "tuning": {"epochs": 10, "batch_size": 8, "max_steps": 2}},
        ),
    )
    assert capped["backward"] == 30 * 2 * 8 * 200
    assert audit_tokens(None, Cell("audit", "b", {"baseline": "random"})) == {
        "forward": 0,
        "backward": 0,
    }


def test_peak_memory_full_tuning_needs_optimizer_states():
    size = model_size("models/Llama-2-7b-hf")
    infer = peak_memory(size, "bfloat16", training=False, full=False, batch=1, seq=1)
    lora = peak_memory(size, "bfloat16", training=True, full=False, batch=8, seq=256)
    full = peak_memory(size, "bfloat16", training=True, full=True, batch=8, seq=256)
    assert 12 * 2**30 < infer < 16 * 2**30
    assert infer < lora < full
    assert full > 16 * size.total


def test_plan_llama_spec_totals():
    from tunelens.spec import load_spec

    spec = load_spec(REPO / "examples/specs/duan2023_llama2_7b_convergence.yaml")
    plan = plan_study(spec, gpu="h100", mfu=0.4)
    (conv,) = plan.experiments
    assert conv.cells == 3 * 2 * 2 * 2 * 2
    n = plan.model_sizes["models/Llama-2-7b-hf"]["non_embedding"]
    assert plan.flops == pytest.approx(2 * n * plan.forward_tokens + 6 * n * plan.backward_tokens)
    assert plan.seconds == pytest.approx(plan.flops / (989e12 * 0.4))
    assert json.loads(json.dumps(plan.to_json()))["total"]["cells"] == conv.cells


def test_plan_uses_an_experiments_own_estimator():
    class Custom:
        name = "convergence"

        def cells(self, section, inputs=None):
            return [Cell("convergence", f"c{i}", {"model": "world"}, i) for i in range(3)]

        def estimate_tokens(self, section, cell):
            return {"forward": 1000, "backward": 10}

    spec = Spec(convergence=ConvergenceSpec())
    plan = plan_study(spec, experiments={"convergence": Custom()}, peak_flops=1e12, mfu=0.5)
    assert plan.cells == 3 and plan.forward_tokens == 3000 and plan.backward_tokens == 30
    with pytest.raises(TunelensInputError, match="MFU"):
        plan_study(spec, experiments={"convergence": Custom()}, peak_flops=1e12, mfu=0)
