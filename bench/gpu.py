"""bench/run.py's workloads in bf16 on a GPU with a random ~1B Llama, plus two production cells.

    bash bench/gpu.sh                      # CUDA, bf16, random Llama of 0.97B parameters
    bash bench/gpu.sh --device cpu --tiny  # CI smoke run: tiny random Llama, fp32, seconds

The same workloads and baselines as bench/run.py (imported from it), on one
model built in code (hidden 2048, MLP 8192, 16 layers, 32 heads, 8 key/value
heads, the world tokenizer: 0.97B parameters, nearly all in linear layers):

1. hidden states of 30 anchors x k = 16 demonstrations: the per-prompt loop,
   the competent cached baseline (prefix ``DynamicCache`` once, expanded, no LM
   head) and ``capture_with_shared_prefix``, interleaved;
2. per-set LoRA tuning, 30 sets x 16 pairs, one epoch: sequential PEFT vs
   ``tune_many_sets``, interleaved;
3. multi-task LoRA tuning (``multitask_tune``), 40 steps of batch 16 (TRL's
   comparison stays in bench/run.py, whose ``SFTConfig`` is CPU-only);
4. one default convergence cell (k 8, 30 pairs, control none) and one audit
   grid cell of the embedded default spec, run through the experiments'
   ``run_cell`` with the random Llama in place of the world model.

Each section prints tokens/s (non-pad tokens the side processes), MFU against
the GPU's dense bf16 peak (from its data sheet when the GPU is in ``PEAKS``,
else, and always on CPU, against the best measured ``torch.matmul`` of this
dtype; ``--peak-tflops`` overrides) and the peak memory (CUDA:
``max_memory_allocated`` of the section; CPU: the process's maximum resident
set). The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAKS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
}


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def spec_peak(device: str) -> tuple[float | None, str]:
    """(TFLOP/s, GPU name) from ``PEAKS``; (None, name) for an unknown GPU or the CPU."""
    import torch

    if not device.startswith("cuda"):
        return None, "cpu"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in PEAKS.items():  # most specific first
        if key in name:
            return peak, name
    return None, name


def measured_peak_tflops(device: str, dtype: Any, n: int, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def build_llama(device: str, dtype: Any, tiny: bool) -> Any:
    """A seeded random Llama (0.97B parameters, or tiny), world tokenizer, on ``device``."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelens.models.loading import load_model, load_model_from_objects

    tokenizer = load_model("world").tokenizer
    hidden, inter, layers, heads, kv = (64, 128, 2, 4, 4) if tiny else (2048, 8192, 16, 32, 8)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    n = sum(p.numel() for p in model.parameters())
    return load_model_from_objects(
        model, copy.deepcopy(tokenizer), name=f"random-llama-{n / 1e6:.1f}M"
    )


def timed_rounds(
    fns: dict[str, Callable[[], Any]], repeats: int, device: str
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]]:
    """bench/run.py's interleaved rounds (A, B, A, B), each side synchronised with the GPU."""
    from run import interleaved_runs

    def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            out = fn()
            sync(device)
            return out

        return call

    return interleaved_runs({name: synced(fn) for name, fn in fns.items()}, repeats)


def median_wall(runs: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    return {name: statistics.median(w for w, _ in r) for name, r in runs.items()}


def full_string_label_scores(loaded: Any, prompts: list[str], labels: list[str]) -> Any:
    """The baseline a researcher writes for label log-likelihoods (lm-eval's loglikelihood):
    one padded forward over every ``prompt + " " + label`` string, target log-probs summed."""
    import torch

    from tunelens.models.batching import encode_pairs
    from tunelens.prompts import render_target

    pairs = [(p, render_target(label)) for p in prompts for label in labels]
    encoded = encode_pairs(loaded.tokenizer, pairs, kind="causal", add_eos=False)
    width = max(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
    ids = torch.full((len(encoded), width), loaded.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        tokens = list(e.prompt_ids) + list(e.target_ids)
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    with torch.no_grad():
        logp = (
            loaded.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device))
            .logits.float()
            .log_softmax(-1)
        )
    scores = torch.zeros(len(encoded), dtype=torch.float64)
    for row, e in enumerate(encoded):
        start = len(e.prompt_ids)
        for j, token in enumerate(e.target_ids):
            scores[row] += float(logp[row, start + j - 1, token])
    return scores.reshape(len(prompts), len(labels))


def label_scoring_section(loaded: Any, prompts: list[str], repeats: int, device: str) -> dict:
    """tunelens's label scoring (prompt once, labels on its cache) against full strings."""
    from run import paired_ratios
    from tunelens.models.scoring import score_label_continuations

    labels = ["yes", "no", "maybe"]
    runs, results = timed_rounds(
        {
            "full_strings": lambda: full_string_label_scores(loaded, prompts, labels),
            "tunelens": lambda: score_label_continuations(loaded, prompts, [labels] * len(prompts)),
        },
        repeats,
        device,
    )
    import numpy as np

    ours = np.stack(results["tunelens"].summed)
    theirs = results["full_strings"].numpy()
    diff = float(np.abs(ours - theirs).max() / max(1.0, float(np.abs(theirs).max())))
    ratio = paired_ratios(runs, "full_strings", "tunelens")
    wall = median_wall(runs)
    figures = {
        "tunelens_s": wall["tunelens"],
        "full_strings_s": wall["full_strings"],
        "ratio": ratio["wall"],
        "ratio_spread": ratio["wall_spread"],
        "max_rel_diff": diff,
    }
    print(
        f"{'label scoring':<28} tunelens {wall['tunelens']:8.3f} s  full strings "
        f"{wall['full_strings']:8.3f} s  ({ratio['wall']:.2f}x; max rel diff {diff:.1e})",
        flush=True,
    )
    return figures


def dispatch_section(loaded: Any, prompts: list[str], device: str, dtype_name: str) -> dict:
    """The model saved, reloaded through Accelerate's dispatch with about half its layers
    pushed off ``device`` by ``max_memory``; states against the undispatched model's."""
    import tempfile

    from tunelens.models.hidden_states import capture_last_token_states
    from tunelens.models.loading import load_model

    model = loaded.model
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    gpu = 0 if device.startswith("cuda") else None
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        # bytes: half the model fits where it runs, the rest goes to the CPU (or to disk)
        limits: dict[Any, int] = {"cpu": size // 2} if gpu is None else {gpu: size // 2}
        if gpu is not None:
            limits["cpu"] = 4 * size
        t0 = time.perf_counter()
        split = load_model(folder, dtype=dtype_name, device_map="auto", max_memory=limits)
        load_s = time.perf_counter() - t0
        reference = capture_last_token_states(loaded, prompts)
        t0 = time.perf_counter()
        states = capture_last_token_states(split, prompts)
        sync(device)
        capture_s = time.perf_counter() - t0
    scale = max(1.0, float(reference.abs().max()))
    diff = float((states - reference).abs().max()) / scale
    placed = sorted({str(v) for v in getattr(split.model, "hf_device_map", {}).values()})
    print(
        f"{'dispatched model':<28} load {load_s:6.2f} s  states {capture_s:8.3f} s  on "
        f"{', '.join(placed)}  (max rel diff {diff:.1e})",
        flush=True,
    )
    return {"load_s": load_s, "capture_s": capture_s, "placed_on": placed, "max_rel_diff": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama, small workloads")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float32", "float16"),
        help="weights (default bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (>= 3)")
    parser.add_argument("--peak-tflops", type=float, help="the peak MFU is measured against")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")

    import torch

    from run import (
        Sizes,
        cached_states,
        capture_flops,
        demo_sets,
        gflops_per_s,
        icl_workload,
        paired_ratios,
        peft_sequential,
        plain_states,
        sft_pairs,
        shared_token_counts,
    )
    from tunelens.api.experiment import RunContext, StudyInputs
    from tunelens.api.registry import get_experiments
    from tunelens.experiments.audit.spec import AuditSpec
    from tunelens.experiments.convergence.spec import ConvergenceSpec
    from tunelens.models.batching import encode_pairs
    from tunelens.models.hidden_states import capture_with_shared_prefix
    from tunelens.models.loading import parse_dtype
    from tunelens.models.tuning import TuningConfig, tune_many_sets
    from tunelens.models.tuning import multitask_tune as tune_multitask
    from tunelens.spec import Spec

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.sh: no CUDA device here; use --device cpu --tiny", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = parse_dtype(dtype_name)
    repeats = max(3, args.repeats)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sizes = Sizes(anchors=4, k=4, sets=3, set_batch=2) if args.tiny else Sizes()

    peak_sheet, gpu_name = spec_peak(device)
    measured = measured_peak_tflops(device, dtype, 256 if args.tiny else 8192)
    peak = args.peak_tflops or peak_sheet or measured
    source = "--peak-tflops" if args.peak_tflops else ("data sheet" if peak_sheet else "measured")
    loaded = build_llama(device, dtype, args.tiny)
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {
        "device": device,
        "device_name": gpu_name,
        "dtype": dtype_name,
        "tiny": args.tiny,
        "model": loaded.name,
        "params": params,
        "peak_tflops": peak,
        "peak_source": source,
        "measured_matmul_tflops": measured,
        "loadavg_at_start": list(os.getloadavg()),
    }
    print(
        f"{'device':<28} {gpu_name} ({device}), {dtype_name}, {loaded.name}; peak {peak:.1f} "
        f"TFLOP/s ({source}; measured matmul {measured:.1f}); load "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )

    def line(
        section: str,
        tokens: float,
        seconds: float,
        training: bool,
        extra: str = "",
        head: bool = True,
    ) -> dict:
        if training:
            tflops = gflops_per_s(tokens, seconds, model, training=True) / 1e3
        else:  # the library's capture and the cached baseline run no LM head
            tflops = capture_flops(tokens, model, head=head) / seconds / 1e12
        figures = {
            "tokens_per_s": tokens / seconds,
            "mfu": tflops / peak,
            "seconds": seconds,
            "tokens": tokens,
            "peak_memory_gib": peak_memory_gib(device),
        }
        print(
            f"{section:<28} {figures['tokens_per_s']:10.0f} tok/s  MFU {figures['mfu']:6.1%}  "
            f"peak memory {figures['peak_memory_gib']:6.2f} GiB  {seconds:8.3f} s{extra}",
            flush=True,
        )
        return figures

    # 1. hidden states
    reset_memory(device)
    prefix, suffixes, _ = icl_workload(loaded.tokenizer, sizes)
    prompts = [prefix + s for s in suffixes]
    runs, results = timed_rounds(
        {
            "loop": lambda: plain_states(loaded, prompts),
            "cached": lambda: cached_states(loaded, prefix, suffixes),
            "tunelens": lambda: capture_with_shared_prefix(loaded, prefix, suffixes),
        },
        repeats,
        device,
    )
    diff = float((results["cached"] - results["tunelens"]).abs().max())
    if dtype == torch.float32 and not diff <= 1e-4:
        raise AssertionError(f"cached baseline and tunelens states differ by {diff:.2e}")
    tokens = shared_token_counts(loaded, prefix, suffixes)
    wall = median_wall(runs)
    vs_cached, vs_loop = (
        paired_ratios(runs, "cached", "tunelens"),
        paired_ratios(runs, "loop", "tunelens"),
    )
    result["hidden_states"] = {
        "tunelens": line(
            "hidden states tunelens", tokens["tunelens"], wall["tunelens"], False, head=False
        ),
        "cached": line("hidden states cached", tokens["cached"], wall["cached"], False, head=False),
        "loop": line("hidden states loop", tokens["loop"], wall["loop"], False),
        "vs_cached": vs_cached["wall"],
        "vs_cached_spread": vs_cached["wall_spread"],
        "vs_loop": vs_loop["wall"],
        "max_abs_diff_cached": diff,
    }
    print(
        f"{'  ratios (median [spread])':<28} vs cached {vs_cached['wall']:.2f}x "
        f"[{vs_cached['wall_spread'][0]:.2f}-{vs_cached['wall_spread'][1]:.2f}], vs loop "
        f"{vs_loop['wall']:.2f}x; max|diff| cached {diff:.1e}",
        flush=True,
    )

    # 1b. label scoring (issue 26) and 1c. a dispatched model (device_map)
    reset_memory(device)
    result["label_scoring"] = label_scoring_section(loaded, prompts[:8], repeats, device)
    reset_memory(device)
    result["dispatch"] = dispatch_section(loaded, prompts[:8], device, dtype_name)

    # 2. per-set tuning, one epoch
    reset_memory(device)
    sets = demo_sets(sizes.sets, sizes.k)
    seeds = list(range(len(sets)))
    config = TuningConfig(
        lora_r=8, lora_alpha=16, learning_rate=1e-3, epochs=1, batch_size=sizes.set_batch
    )
    runs, _ = timed_rounds(
        {
            "peft": lambda: peft_sequential(loaded, sets, config, seeds),
            "tunelens": lambda: tune_many_sets(loaded, sets, config, seeds=seeds),
        },
        repeats,
        device,
    )
    tokens = sum(
        len(e.prompt_ids) + len(e.target_ids)
        for pairs in sets
        for e in encode_pairs(loaded.tokenizer, pairs, kind="causal", add_eos=True)
    )
    wall = median_wall(runs)
    ratio = paired_ratios(runs, "peft", "tunelens")
    result["per_set_tuning"] = {
        "tunelens": line("per-set tuning tunelens", tokens, wall["tunelens"], True),
        "peft": line("per-set tuning PEFT", tokens, wall["peft"], True),
        "ratio": ratio["wall"],
        "ratio_spread": ratio["wall_spread"],
    }

    # 3. multi-task tuning
    reset_memory(device)
    steps, batch = (2, 4) if args.tiny else (sizes.sft_steps, sizes.sft_batch)
    pairs = sft_pairs(steps * batch)
    sft_config = TuningConfig(
        lora_r=8, lora_alpha=16, learning_rate=1e-3, epochs=1, batch_size=batch, max_steps=steps
    )

    def sft() -> None:
        tune_multitask(loaded, pairs, sft_config, progress=False).unload()

    runs, _ = timed_rounds({"tunelens": sft}, repeats, device)
    tokens = sum(
        len(e.prompt_ids) + len(e.target_ids)
        for e in encode_pairs(loaded.tokenizer, pairs, kind="causal", add_eos=sft_config.add_eos)
    )
    result["multitask_tuning"] = {
        "tunelens": line("multi-task tuning", tokens, median_wall(runs)["tunelens"], True)
    }

    # 4. one convergence and one audit cell through the production code
    experiments = get_experiments()
    tiny_conv: dict[str, Any] = {"n_pairs": 4, "k": [2]} if args.tiny else {}
    tiny_audit: dict[str, Any] = (
        {"instances_per_task": [1], "eval_instances_per_task": 2} if args.tiny else {}
    )
    spec = Spec(
        device=device,
        dtype=dtype_name,
        convergence=ConvergenceSpec(**tiny_conv),
        audit=AuditSpec(max_new_tokens=4, **tiny_audit),
    )
    context = RunContext(load_model=lambda *a, **k: loaded, device=device, dtype=dtype_name)
    inputs = StudyInputs()
    for name, section, pick in (
        ("convergence", spec.convergence, lambda c: c.params["control"] == "none"),
        ("audit", spec.audit, lambda c: "baseline" not in c.params),
    ):
        experiment = experiments[name]
        cell = next(c for c in experiment.cells(section, inputs) if pick(c))
        reset_memory(device)
        t0 = time.perf_counter()
        experiment.run_cell(cell, context)
        sync(device)
        seconds = time.perf_counter() - t0
        memory = peak_memory_gib(device)
        result[f"{name}_cell"] = {"name": cell.name, "seconds": seconds, "peak_memory_gib": memory}
        print(
            f"{name + ' cell':<28} {seconds:8.2f} s  peak memory {memory:6.2f} GiB  ({cell.name})",
            flush=True,
        )

    result["total_s"] = time.perf_counter() - start
    result["loadavg_at_end"] = list(os.getloadavg())
    text = json.dumps(result, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
