"""`tunelens.runs.plan`: parameter counts from configs, token estimates, FLOPs and time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelens.api import Cell
from tunelens.errors import TunelensInputError
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.runs.costs import CPU_COSTS, ModelFacts, TokenCounter, Work, cell_seconds
from tunelens.runs.plan import (
    KNOWN_ARCHITECTURES,
    count_parameters,
    estimate_work,
    known_architecture,
    measure_cpu_flops,
    model_size,
    peak_memory,
    plan_study,
)
from tunelens.spec import Spec

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


def test_work_estimates_follow_the_spec_for_absent_tasks():
    params = {
        "tasks": "data/absent.json",
        "k": 8,
        "n_pairs": 30,
        "anchors_per_set": 1,
        "definition": False,
        "template": "plain",
        "control": "none",
        "tuning": {"epochs": 10, "batch_size": 8},
    }
    size = model_size("models/Llama-2-7b-hf")
    counter = TokenCounter(None)
    work = estimate_work(Cell("convergence", "c", params), counter, size)
    # 30 tuned sets x 10 epochs x 8 demonstrations x 200 tokens, all in one lockstep run
    assert work.lockstep_tokens == 30 * 10 * 8 * 200
    assert work.lockstep_steps == 10 and work.lockstep_runs == 1
    # anchor (200) and ICL (9 x 200) prompts: states + last-token forward each, and the
    # tuned anchors' states + last-token forward in the batched probe
    assert work.forward_tokens == 2 * 30 * (200 + 9 * 200) + 2 * 30 * 200
    doubled = estimate_work(Cell("convergence", "c", {**params, "k": 16}), counter, size)
    assert doubled.lockstep_tokens == 2 * work.lockstep_tokens
    capped = estimate_work(
        Cell(
            "convergence",
            "c",
            {**params, "tuning": {"epochs": 10, "batch_size": 8, "max_steps": 2}},
        ),
        counter,
        size,
    )
    assert capped.lockstep_tokens == 30 * 2 * 8 * 200 and capped.lockstep_steps == 2
    guess = estimate_work(Cell("audit", "b", {"baseline": "random"}), counter, size)
    assert guess.all_forward_tokens == 0 and guess.all_training_tokens == 0


def test_work_of_world_cells_is_counted_from_their_prompts():
    from tunelens.experiments.audit import eval_items
    from tunelens.tasks.sets import load_task_set

    heldout = load_task_set("world:heldout")
    size = model_size("world")
    params = {
        "baseline": "untuned",
        "test": "world:heldout",
        "eval_instances_per_task": 100,
        "eval_encodings": ["definition_only", "definition_examples"],
        "n_positive": 2,
        "template": "tk",
        "max_new_tokens": 4,
    }
    cell = Cell("audit", "u", params, data={"test": heldout})
    work = estimate_work(cell, TokenCounter(None), size)
    assert work.exact
    assert work.samples == 2 * len(eval_items(heldout, 100))
    assert work.generate_calls >= 2 and work.decode_steps == 4 * work.generate_calls


def test_an_audit_cells_training_targets_are_its_pairs_outputs():
    """The trained tokens of a grid cell split into targets (each pair's output and EOS,
    counted here at 4 characters per token) and the prompts before them."""
    from tunelens.experiments.audit import training_pairs
    from tunelens.tasks.sets import load_task_set

    train, test = load_task_set("world:train"), load_task_set("world:heldout")
    params = {
        "test": "world:heldout",
        "eval_instances_per_task": 2,
        "n_positive": 2,
        "template": "tk",
        "definition": "original",
        "examples": "original",
        "instances_per_task": 3,
        "tuning": {"epochs": 2, "batch_size": 16},
    }
    cell = Cell("audit", "g", params, seed=0, data={"train": train, "test": test})
    work = estimate_work(cell, TokenCounter(None), model_size("world"))
    pairs = training_pairs(
        train,
        definition="original",
        examples="original",
        instances_per_task=3,
        n_positive=2,
        seed=0,
        template="tk",
    )
    assert len(pairs) < 512  # every pair is counted, none sampled
    outputs = sum(max(1, -(-len(b) // 4)) + 1 for _, b in pairs)
    assert work.training_targets == pytest.approx(2 * outputs, abs=2)
    assert 0 < work.training_targets < work.training_tokens / 3


def test_cell_seconds_add_up_and_the_efficiency_curve_interpolates():
    facts = ModelFacts(non_embedding=10**6, total=5 * 10**5, hidden=96, layers=3)
    work = Work(
        forward_tokens=1000,
        generate_tokens=500,
        lockstep_tokens=300,
        forward_calls=4,
        generate_calls=2,
        decode_steps=8,
        lockstep_steps=3,
        samples=10,
    )
    seconds = cell_seconds("convergence", work, facts, CPU_COSTS, peak_flops=1e11)
    assert seconds.total == pytest.approx(seconds.overhead + seconds.weights + seconds.compute)
    assert sum(seconds.parts.values()) == pytest.approx(seconds.total)
    assert seconds.weights == 0  # 2 MB of weights: below the cache bound
    forced = cell_seconds("convergence", work, facts, CPU_COSTS, peak_flops=1e11, efficiency=1.0)
    assert forced.compute == pytest.approx((2e6 * 1500 + 4e6 * 300) / 1e11)
    low, high = CPU_COSTS.efficiency["forward"][0], CPU_COSTS.efficiency["forward"][-1]
    assert CPU_COSTS.efficiency_at(1, "forward") == low[1]
    assert CPU_COSTS.efficiency_at(10**6, "forward") == high[1]
    assert low[1] <= CPU_COSTS.efficiency_at(200, "forward") <= high[1]


def test_cpu_peak_is_measured_in_cpu_time_and_restores_the_threads():
    import torch

    before = torch.get_num_threads()
    peak = measure_cpu_flops(1, n=256, repeats=2)
    assert peak > 1e8 and torch.get_num_threads() == before


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
    # LoRA: 4N per trained token (frozen base weights need no weight gradients)
    assert plan.flops == pytest.approx(2 * n * plan.forward_tokens + 4 * n * plan.backward_tokens)
    # the time also prices the LM head (131M weights of 6.7B) on trained and new tokens
    assert plan.flops / (989e12 * 0.4) < plan.time.compute < 1.05 * plan.flops / (989e12 * 0.4)
    assert plan.seconds == pytest.approx(plan.time.total)
    assert plan.seconds > plan.time.compute + plan.fixed.total  # per-call costs on top
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


def test_token_counter_tokenises_each_distinct_text_once(tiny_tokenizer):
    """Cells ask about the same prompts again and again; the tokenizer sees each text once,
    and the answers are the tokenizer's own."""
    tokenizer = tiny_tokenizer(bos=True)
    seen: list[str] = []

    class Counting:
        def __call__(self, texts, add_special_tokens=True):
            seen.extend(texts)
            return tokenizer(texts, add_special_tokens=add_special_tokens)

    counter = TokenCounter(Counting())
    texts = ["the cat sits", "a dog", "the cat sits", "red fish on the mat"]
    for _ in range(3):
        assert counter.token_ids(texts) == [list(tokenizer(t)["input_ids"]) for t in texts]
        assert counter.lengths(texts) == [len(tokenizer(t)["input_ids"]) for t in texts]
    without = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert counter.lengths(texts, special=False) == without
    assert sorted(seen) == sorted(2 * ["the cat sits", "a dog", "red fish on the mat"])


def test_an_encoder_decoders_prompt_side_is_its_encoder_and_cross_keys_values(tiny_model):
    """``encoder`` counts what a prompt token runs through: the encoder's weights and the
    decoder's cross-attention key/value projections, by parameter name here; the table of
    known architectures counts the same as a model built from that config."""
    from accelerate import init_empty_weights
    from transformers import T5Config, T5ForConditionalGeneration

    from tunelens.runs.plan import sizes_from_model_object

    model, _ = tiny_model("t5")
    by_name = sum(
        p.numel()
        for name, p in model.named_parameters()
        if (name.startswith("encoder.") and "embed_tokens" not in name)
        and "relative_attention_bias" not in name
        or ".EncDecAttention.k." in name
        or ".EncDecAttention.v." in name
    )
    assert sizes_from_model_object(model)[5] == by_name
    llama, _ = tiny_model("llama")
    assert sizes_from_model_object(llama)[5] == 0
    table = KNOWN_ARCHITECTURES["t5-large-lm-adapt"]
    with init_empty_weights():
        empty = T5ForConditionalGeneration(
            T5Config(**{k: v for k, v in table.items() if k != "model_type"})
        )
    built = sizes_from_model_object(empty)
    counted = count_parameters(table)
    assert (counted[0], counted[5]) == (built[0], built[5])
    assert 0.4 < counted[5] / counted[0] < 0.6


def _matmul_flops(model, prompt: int, target: int, train: bool) -> int:
    """FLOPs torch counts for one pass of a seq2seq model (with its backward when ``train``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.arange(1, prompt + 1).unsqueeze(0) % 50 + 1
    labels = torch.arange(1, target + 1).unsqueeze(0) % 50 + 1
    with FlopCounterMode(display=False) as counter:
        if train:
            model(input_ids=ids, labels=labels).loss.backward()
        else:
            with torch.no_grad():
                model(input_ids=ids, decoder_input_ids=labels)
    return counter.get_total_flops()


def test_the_plan_prices_seq2seq_tokens_as_torch_counts_their_flops(tmp_path):
    """Against torch's own FLOP counter on a random T5 (untied head): extra prompt tokens
    cost the encoder side, extra target tokens the rest and the LM head, forward and full
    training (forward + backward). Pricing every token at 2(N + head), as decoder-only
    models are priced, would be off by half for the prompt."""
    from transformers import T5Config, T5ForConditionalGeneration

    from tunelens.runs.plan import model_facts

    config = T5Config(
        vocab_size=64,
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = T5ForConditionalGeneration(config)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    facts = model_facts(model_size(str(tmp_path)))

    def priced(work: Work) -> float:
        return cell_seconds("audit", work, facts, CPU_COSTS, peak_flops=1.0, efficiency=1.0).compute

    prompt_forward = _matmul_flops(model, 16, 1, False) - _matmul_flops(model, 8, 1, False)
    assert priced(Work(generate_tokens=8)) == pytest.approx(prompt_forward, rel=0.06)
    target_forward = _matmul_flops(model, 8, 9, False) - _matmul_flops(model, 8, 1, False)
    new_tokens = Work(generate_tokens=8, decode_tokens=8)
    assert priced(new_tokens) == pytest.approx(target_forward, rel=0.06)
    prompt_trained = _matmul_flops(model, 16, 4, True) - _matmul_flops(model, 8, 4, True)
    full = Work(training_tokens=8, full_training_tokens=8)
    assert priced(full) == pytest.approx(prompt_trained, rel=0.06)
    target_trained = _matmul_flops(model, 8, 12, True) - _matmul_flops(model, 8, 4, True)
    targets = Work(training_tokens=8, training_targets=8, full_training_tokens=8)
    assert priced(targets) == pytest.approx(target_trained, rel=0.06)
    flat = 2 * (facts.non_embedding + facts.head) * 8
    assert abs(flat - prompt_forward) > 0.5 * prompt_forward


def test_the_plan_prices_bf16_memory_at_two_bytes_a_weight():
    import yaml

    from tunelens.spec import validate_spec

    data = yaml.safe_load((REPO / "examples/specs/duan2023_llama2_7b_convergence.yaml").read_text())
    plans = {}
    for dtype in ("bfloat16", "float32"):
        spec = validate_spec({**data, "dtype": dtype}, source=dtype)
        plans[dtype] = plan_study(spec, gpu="h100", mfu=0.4)
    half, full = plans["bfloat16"], plans["float32"]
    size = model_size("models/Llama-2-7b-hf")
    # LoRA cells: 2-byte weights and activations in bf16, 4-byte in float32.
    assert half.peak_memory_bytes == pytest.approx(full.peak_memory_bytes / 2, rel=1e-6)
    assert 2 * size.total < half.peak_memory_bytes < full.peak_memory_bytes
    assert half.flops == full.flops  # the same work, only its bytes differ


def test_the_plan_times_the_workers_run_will_use(monkeypatch):
    """On a CPU the plan says how long the run takes over the local executor's workers; on an
    accelerator, whose cells run one at a time, that is the one-worker time."""

    class Custom:
        name = "convergence"

        def cells(self, section, inputs=None):
            return [Cell("convergence", f"c{i}", {"model": "world"}, i) for i in range(4)]

        def estimate_tokens(self, section, cell):
            return {"forward": 200_000, "backward": 0}

    spec = Spec(convergence=ConvergenceSpec())
    experiments = {"convergence": Custom()}
    monkeypatch.setenv("TUNELENS_WORKERS", "1")
    one = plan_study(spec, gpu="cpu", experiments=experiments, peak_flops=1e12)
    assert one.workers == 1 and one.seconds_with_workers == one.seconds
    monkeypatch.setenv("TUNELENS_WORKERS", "2")
    two = plan_study(spec, gpu="cpu", experiments=experiments, peak_flops=1e12)
    assert two.workers == 2 and two.seconds == pytest.approx(one.seconds)
    cells = two.seconds - two.fixed.total
    assert two.seconds_with_workers == pytest.approx(two.fixed.total + cells / 2)
    assert json.loads(json.dumps(two.to_json()))["total"]["seconds_with_workers"] < two.seconds
    gpu = plan_study(spec, gpu="h100", experiments=experiments, peak_flops=1e12, mfu=0.5)
    assert gpu.workers == 1 and gpu.seconds_with_workers == gpu.seconds
