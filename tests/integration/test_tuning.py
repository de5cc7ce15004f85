"""Tuning on tiny random Llama / GPT-2 / T5: loss, determinism, reversibility, batched sets."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import (
    demo_sets,
    has_lora_layers,
    logits_of,
    memorisable_pairs,
    prompt,
    wrap,
)
from tests.helpers.numerics import assert_close_scaled

from tunelens.errors import TunelensInputError
from tunelens.models.batching import masked_lm_loss
from tunelens.models.tuning import (
    TuningConfig,
    TuningDivergedError,
    attach_lora,
    multitask_tune,
    resolve_target_modules,
    tune_many_sets,
    tune_on_pairs,
)

ARCHS = ("llama", "gpt2", "t5")
PROBE = prompt("the small cat")


def fast(**changes) -> TuningConfig:
    """Small settings that train in well under a second on a tiny model."""
    return TuningConfig(**{"epochs": 3, "batch_size": 2, "learning_rate": 1e-2} | changes)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_tuning_memorises_a_small_set(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    tuned = tune_on_pairs(
        loaded, memorisable_pairs(), fast(epochs=40, batch_size=4, learning_rate=3e-2)
    )
    try:
        assert tuned.steps == 40
        assert tuned.losses[-1] < 0.3 * tuned.losses[0]
    finally:
        tuned.unload()


def test_our_loss_is_the_transformers_loss_on_target_tokens(tiny_model):
    from tunelens.models.batching import collate, encode_pairs

    loaded = wrap(tiny_model("llama"), "llama")
    encoded = encode_pairs(loaded.tokenizer, memorisable_pairs(), kind="causal")
    batch = collate(encoded, loaded.tokenizer.pad_token_id, "causal")
    with torch.no_grad():
        ours = masked_lm_loss(loaded.model, batch, "causal", loaded.tokenizer.pad_token_id)
        theirs = loaded.model(**batch).loss
    torch.testing.assert_close(ours, theirs)


def test_same_seed_same_adapter_other_seed_other_adapter(tiny_model):
    loaded = wrap(tiny_model("llama"), "llama")
    states = []
    for seed in (0, 0, 1):
        tuned = tune_on_pairs(loaded, memorisable_pairs(), fast(seed=seed))
        states.append(tuned.adapter_state())
        tuned.unload()
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_toggles_and_unload_restores_the_base_bit_for_bit(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    base_model = loaded.model
    before = logits_of(loaded, PROBE)
    flags = {n: p.requires_grad for n, p in base_model.named_parameters()}
    tuned = tune_on_pairs(loaded, memorisable_pairs(), fast())
    tuned_logits = logits_of(loaded, PROBE, tuned.model)
    assert not torch.allclose(tuned_logits, before)
    with tuned.adapter_disabled() as base:
        assert torch.equal(logits_of(loaded, PROBE, base.model), before)
    assert torch.equal(logits_of(loaded, PROBE, tuned.as_loaded().model), tuned_logits)
    restored = tuned.unload()
    assert restored.model is base_model and not has_lora_layers(base_model)
    assert torch.equal(logits_of(loaded, PROBE), before)
    assert {n: p.requires_grad for n, p in base_model.named_parameters()} == flags
    assert not base_model.training
    tuned.unload()  # a second unload is harmless
    with pytest.raises(RuntimeError):
        tuned.as_loaded()


def test_full_fine_tuning_is_reversible(tiny_model):
    loaded = wrap(tiny_model("gpt2"), "gpt2")
    before = logits_of(loaded, PROBE)
    tuned = tune_on_pairs(
        loaded, memorisable_pairs(), fast(method="full", learning_rate=1e-3, epochs=2)
    )
    after = logits_of(loaded, PROBE)
    assert not torch.allclose(after, before)
    with tuned.adapter_disabled():
        assert torch.equal(logits_of(loaded, PROBE), before)
    assert torch.equal(logits_of(loaded, PROBE), after)
    tuned.unload()
    assert torch.equal(logits_of(loaded, PROBE), before)
    assert all(p.grad is None for p in loaded.model.parameters())


@pytest.mark.parametrize(
    ("arch", "targets"), [("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn"]), ("t5", ["q", "v"])]
)
def test_default_targets_fall_back_per_architecture(tiny_model, arch, targets):
    loaded = wrap(tiny_model(arch), arch)
    assert resolve_target_modules(loaded.model, TuningConfig().target_modules) == targets
    with pytest.raises(TunelensInputError, match="target_modules"):
        resolve_target_modules(loaded.model, ["no_such_module"])


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_sets_equal_sequential_runs(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    # Three sets of 5 (uneven last batch) and one of 3: two lockstep groups.
    sets = demo_sets(3, 5, seed=1) + demo_sets(1, 3, seed=2)
    seeds = [3, 4, 5, 6]
    config = fast(lr_schedule="linear", weight_decay=0.01, max_grad_norm=0.05)
    before = logits_of(loaded, PROBE)
    batched = tune_many_sets(loaded, sets, config, seeds=seeds, sets_per_batch=2)
    assert torch.equal(logits_of(loaded, PROBE), before) and not has_lora_layers(loaded.model)
    for pairs, seed, state in zip(sets, seeds, batched, strict=True):
        tuned = tune_on_pairs(loaded, pairs, config.model_copy(update={"seed": seed}))
        try:
            sequential = tuned.adapter_state()
            assert state.keys() == sequential.keys()
            for key in state:
                assert_close_scaled(state[key], sequential[key], 1e-4)
            assert any(state[k].abs().sum() > 0 for k in state if "lora_B" in k)
        finally:
            tuned.unload()
    # A batched adapter loaded into the model gives the sequential run's outputs.
    probe = attach_lora(loaded, config, state=batched[0])
    try:
        tuned_logits = logits_of(loaded, PROBE, probe.model)
        probe.load_adapter_state(batched[1])
        assert not torch.allclose(logits_of(loaded, PROBE, probe.model), tuned_logits)
    finally:
        probe.unload()
    assert torch.equal(logits_of(loaded, PROBE), before)


def test_a_huge_learning_rate_diverges_at_its_first_update_on_any_cpu(tiny_model):
    # AdamW's first update moves every weight by exactly the learning rate (m / sqrt(v) is
    # the gradient's sign), so after step 1 the adapter norm is >= 1e30 (inf in float32 on
    # some CPUs, finite on others): the parameter-norm rule stops it at step 1 either way.
    loaded = wrap(tiny_model("llama"), "llama")
    before = logits_of(loaded, PROBE)
    config = fast(learning_rate=1e30, epochs=5)
    with pytest.raises(TuningDivergedError) as caught:
        tune_on_pairs(loaded, memorisable_pairs(), config)
    assert (caught.value.step, caught.value.what) == (1, "trainable-parameter norm")
    assert "at step 1" in str(caught.value) and "1e+30" in str(caught.value)
    assert isinstance(caught.value, TunelensInputError)
    assert not has_lora_layers(loaded.model)  # the failed adapter was removed
    assert torch.equal(logits_of(loaded, PROBE), before)
    with pytest.raises(TuningDivergedError) as caught:
        tune_many_sets(loaded, [memorisable_pairs()] * 2, config)
    assert (caught.value.step, caught.value.set_index) == (1, 0)
    assert caught.value.what == "trainable-parameter norm"
    assert torch.equal(logits_of(loaded, PROBE), before)
    with pytest.raises(TuningDivergedError) as caught:
        multitask_tune(loaded, memorisable_pairs(), config, progress=False)
    assert (caught.value.step, caught.value.what) == (1, "trainable-parameter norm")
    assert not has_lora_layers(loaded.model)


def test_the_divergence_rule_catches_finite_blow_ups():
    from tunelens.models.tuning.loop import GROWTH_LIMIT, DivergenceGuard

    vocabulary = 1000  # uniform output: ln 1000 = 6.91 nats
    # limit 1 + 0.75 (6.91 - 1) = 5.43 on the mean of the last 3 steps: single-batch
    # spikes (5.9, then 6.9 once) pass, a sustained near-uniform output does not
    trained = DivergenceGuard(fast(), vocabulary, set_index=3)
    for step, loss in enumerate([1.0, 2.5, 5.9, 0.8, 0.9, 6.9], start=1):
        trained.loss(step, loss)
    with pytest.raises(TuningDivergedError, match="set 3 is 6.9 at step 8") as caught:
        for step in (7, 8):
            trained.loss(step, 6.9)  # near-uniform output from a model that knew the targets
    assert "first 1" in str(caught.value) and "last 3 steps" in str(caught.value)
    # with the run's length known, only the model that comes out is judged: a run that
    # spikes to worse than uniform and recovers passes; one that ends destroyed does not
    recovered = DivergenceGuard(fast(), vocabulary, total_steps=10)
    for step, loss in enumerate([1.9, 1.9, 1.9, 1.7, 10.1, 7.8, 3.4, 1.8, 1.3, 0.9], start=1):
        recovered.loss(step, loss)
    destroyed = DivergenceGuard(fast(), vocabulary, total_steps=4)
    for step, loss in enumerate([1.0, 6.9, 6.9], start=1):
        destroyed.loss(step, loss)
    with pytest.raises(TuningDivergedError, match="is 6.9 at step 4"):
        destroyed.loss(4, 6.9)
    random_start = DivergenceGuard(fast(), vocabulary)
    random_start.loss(1, 5.0)
    random_start.loss(2, 13.8)  # a random model may wobble, up to 1/V of uniform's chance
    random_start.loss(3, 13.9)
    with pytest.raises(TuningDivergedError, match="is 14 at step 4"):
        random_start.loss(4, 14.3)  # mean (13.8 + 13.9 + 14.3) / 3 > 5 + 6.91 + ...
    norms = DivergenceGuard(fast(), vocabulary)
    norms.param_norm(0, 2.0)
    norms.param_norm(1, 2.0 * GROWTH_LIMIT)
    with pytest.raises(TuningDivergedError, match="trainable-parameter norm"):
        norms.param_norm(2, 2.0 * GROWTH_LIMIT * 1.01)
    norms.grad_norm(1, 0.0)  # a zero first gradient (LoRA B = 0) sets no reference
    norms.grad_norm(2, 0.5)
    norms.grad_norm(3, 0.5 * GROWTH_LIMIT)
    for bad in (0.5 * GROWTH_LIMIT * 1.01, float("inf"), float("nan")):
        with pytest.raises(TuningDivergedError, match="gradient norm"):
            norms.grad_norm(4, bad)


def test_a_poisoned_weight_diverges_at_step_one(tiny_model):
    loaded = wrap(tiny_model("llama"), "llama")
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(TuningDivergedError) as caught:
        tune_on_pairs(loaded, memorisable_pairs(), fast())
    assert caught.value.step == 1
    with pytest.raises(TuningDivergedError, match="set 0 is nan at step 1"):
        tune_many_sets(loaded, [memorisable_pairs()] * 2, fast())


def test_a_prompt_longer_than_the_context_is_an_input_error(tiny_model):
    loaded = wrap(tiny_model("gpt2"), "gpt2")  # n_positions 128
    long_pair = (prompt("the cat " * 80), " yes")
    with pytest.raises(TunelensInputError, match="context of 128"):
        tune_on_pairs(loaded, [*memorisable_pairs(), long_pair], fast())
    assert not has_lora_layers(loaded.model)


@pytest.mark.parametrize(
    ("arch", "method"), [("llama", "lora"), ("t5", "lora"), ("gpt2", "full"), ("t5", "full")]
)
def test_multitask_tune_runs_and_checkpoints(tiny_model, tmp_path, arch, method):
    loaded = wrap(tiny_model(arch), arch)
    before = logits_of(loaded, PROBE)
    pairs = [p for s in demo_sets(3, 4) for p in s]
    config = fast(
        method=method,
        learning_rate=1e-2 if method == "lora" else 1e-3,
        epochs=2,
        batch_size=4,
        save_steps=2,
    )
    tuned = multitask_tune(loaded, pairs, config, progress=True, checkpoint_dir=tmp_path)
    try:
        assert tuned.steps == 6
        assert not torch.allclose(logits_of(loaded, PROBE, tuned.as_loaded().model), before)
        final = tmp_path / "final"
        if method == "lora":
            assert (final / "adapter_model.safetensors").is_file()
            assert (final / "adapter_config.json").is_file()
        else:
            assert (final / "model.safetensors").is_file()
            assert (final / "tokenizer.json").is_file()
        assert (tmp_path / "step-2").is_dir() and (tmp_path / "step-4").is_dir()
    finally:
        tuned.unload()
    assert torch.equal(logits_of(loaded, PROBE), before)


def test_multitask_tune_is_deterministic_and_full_checkpoints_load_back(tiny_model, tmp_path):
    from tunelens.models.loading import load_model

    loaded = wrap(tiny_model("llama"), "llama")
    pairs = [p for s in demo_sets(2, 4) for p in s]
    config = fast(method="full", learning_rate=1e-3, epochs=2, batch_size=3)
    runs = []
    for attempt in range(2):
        tuned = multitask_tune(
            loaded, pairs, config, progress=False, checkpoint_dir=tmp_path / str(attempt)
        )
        runs.append((tuned.losses, logits_of(loaded, PROBE, tuned.model)))
        tuned.unload()
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    reloaded = load_model(str(tmp_path / "0" / "final"))
    torch.testing.assert_close(logits_of(reloaded, PROBE), runs[0][1])
