"""tunelens against the tools a user would otherwise reach for, side by side, in one process.

    .venv/bin/python bench/run.py [--quick] [--threads N] [--out FILE] [--profile]

Four comparisons, each pair timed in this process after a warm-up run, with the
two sides interleaved so that both see the same machine:

1. hidden states of 30 anchors x k = 30 demonstrations sharing one prefix (230
   tokens: the issue's ~300-token workload as far as the world's tasks allow;
   k = 16, a 132-token prefix, as the ``*_k16`` keys of runs before H):
   ``capture_with_shared_prefix`` (packed rows) vs two baselines, on a random ~20M-parameter
   Llama and on the embedded world model: one ``model(...,
   output_hidden_states=True)`` per prompt under ``torch.no_grad``
   (``hidden_states_ratio``), and the competent one (``hidden_states_vs_cached``:
   the prefix's ``DynamicCache`` computed once by the base model, expanded over
   the anchors, one batch, no LM head); the states of all sides must agree;
   ratios also as median and spread of per-round (interleaved) ratios, in wall
   and CPU time (``time.process_time``), with the load average;
2. 30 per-set LoRA tunings of k = 8 pairs: ``tune_many_sets`` (its defaults:
   each set's shared prompt prefix computed once per step) vs 30 sequential
   PEFT runs (one model, ``get_peft_model`` + AdamW loop, adapter unloaded
   between sets), same steps, batches, lr, r, alpha, target modules and seeds,
   on both models with the task definition in the prompts and without
   (``per_set_tuning_ratio``: the smallest of the four medians of per-round
   ratios); the final adapters of both must agree;
3. multi-task LoRA tuning, tokens per second: ``multitask_tune`` vs TRL
   ``SFTTrainer`` with a PEFT ``LoraConfig``, same model, data, batch size,
   padding-to-longest, steps and optimiser settings;
4. model FLOPs utilisation: ``mfu_forward`` is the capture's FLOPs per CPU-second
   over a 2048^3 fp32 matmul's FLOPs per CPU-second, the matmul timed in the
   same interleaved rounds; the other MFUs are wall-clock against the measured
   fp32 matmul peak;
5. end to end (bench/e2e.py): a default convergence cell through the experiment's
   ``run_cell`` against a plain PEFT + transformers script of the same cell
   (``e2e_convergence_cell_ratio``), and with ``--plan-error`` `tunelens plan`
   against three measured runs (``plan_error``).

One line per comparison goes to stdout; the last line is one JSON object with
every figure (``hidden_states_ratio``, ``per_set_tuning_ratio``,
``sft_tokens_ratio``, ``mfu_forward`` and more). Times are the minimum over the
repeats (``*_median_s`` keys hold the medians); the ratio keys are medians of
per-round ratios of interleaved rounds, with their spreads. ``--quick`` shrinks every
workload to a smoke test (tiny models, a few prompts and steps).

FLOPs convention: :mod:`tunelens.measures.flops` (Kaplan et al. 2020, Table 1),
with the LM head counted (it is real work for a utilisation figure): ``N`` =
weights of all ``nn.Linear`` modules (attention, MLP and LM head; the embedding
lookup is free), a forward costs ``2 N`` per non-pad token and a LoRA training
step ``4 N`` per non-pad token (``weights="frozen"``: forward plus the backward
to activations; the frozen weights need no gradient). Attention score FLOPs
are left out (``attention=False``; under 4% of the total at these lengths).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

TARGETS = {
    "hidden_states": 8.0,  # issue 16: keep >= 8x against the per-prompt loop
    "hidden_states_vs_cached": 2.0,  # issue 16
    "per_set_tuning": 2.0,  # issue 16: the smallest of world / 20M x definition on / off
    "sft_tokens": 1.2,  # issue 16: keep multi-task tuning ahead of TRL's SFTTrainer
    "mfu_forward": 0.50,  # issue 16: capture FLOPs per CPU-second / matmul's, same rounds
}


# Cores other processes must keep busy at the start for the bench to count the machine as
# shared and make OpenMP threads wait passively (see main).
SHARED_CORES = 0.5


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``QUICK`` is the smoke-test variant."""

    anchors: int = 30
    k: int = 16
    # hidden-state keys: the issue's ~300-token prefix; 30 demonstrations (230 tokens) are the
    # most the world's tasks hold beside 30 anchors. k = 16 (132 tokens) is kept as *_k16.
    k_long: int = 30
    hidden_repeats: int = 9  # the vs-cached ratio sits near its target: 9 rounds steady its median
    sets: int = 30
    set_k: int = 8
    set_epochs: int = 10  # 8 pairs / batch 8 = 1 step per epoch
    set_batch: int = 8
    set_repeats: int = 3
    sets_20m: int = 30
    set_epochs_20m: int = 2
    sft_steps: int = 40
    sft_batch: int = 16
    sft_repeats: int = 3
    sft_steps_20m: int = 12
    matmul_n: int = 2048
    big_hidden: int = 512
    big_layers: int = 6
    big_intermediate: int = 1408


QUICK = Sizes(
    anchors=4,
    k=4,
    k_long=6,
    hidden_repeats=3,
    sets=3,
    set_k=4,
    set_epochs=1,
    set_batch=2,
    set_repeats=3,
    sets_20m=2,
    set_epochs_20m=1,
    sft_steps=2,
    sft_batch=4,
    sft_repeats=1,
    sft_steps_20m=2,
    matmul_n=256,
    big_hidden=64,
    big_layers=2,
    big_intermediate=128,
)


def log(message: str) -> None:
    """Progress notes go to stderr; stdout holds only the result lines and the JSON."""
    print(message, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved_runs(
    fns: dict[str, Callable[[], Any]], repeats: int, warm_up: bool = True
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]]:
    """Warm each function up once (unless done by the caller), then run them in turn.

    Round r runs every function once, in the order given (A, B, A, B, ...), so
    that both sides of a comparison see the same machine. Returns, per name, the
    (wall seconds, CPU seconds of this process) of each round, and the last
    result of each. CPU time (``time.process_time``: every thread of this
    process) moves less than wall time when other processes share the cores.
    """
    results = {name: fn() for name, fn in fns.items()} if warm_up else {}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return runs, results


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warm_up: bool = True
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """:func:`interleaved_runs`, wall time only: the minimum and the median per name."""
    runs, results = interleaved_runs(fns, repeats, warm_up)
    walls = {n: [w for w, _ in r] for n, r in runs.items()}
    return (
        {n: min(t) for n, t in walls.items()},
        {n: statistics.median(t) for n, t in walls.items()},
        results,
    )


def paired_ratios(
    runs: dict[str, list[tuple[float, float]]], base: str, ours: str
) -> dict[str, Any]:
    """Per-round ratios base / ours (same round, so the same load), wall and CPU.

    ``wall`` and ``cpu`` are the medians over the rounds; ``*_spread`` the
    smallest and largest round.
    """
    out: dict[str, Any] = {}
    for which, column in (("wall", 0), ("cpu", 1)):
        ratios = [
            b[column] / o[column] for b, o in zip(runs[base], runs[ours], strict=True) if o[column]
        ]
        out[which] = statistics.median(ratios) if ratios else math.nan
        out[f"{which}_spread"] = [min(ratios), max(ratios)] if ratios else [math.nan, math.nan]
        out[f"{which}_rounds"] = ratios
    return out


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def others_cpu_use(seconds: float = 2.0) -> float | None:
    """Cores that other processes kept busy over the next ``seconds`` (None without /proc).

    The load average is no test of a shared machine at a benchmark's start: it
    lags by minutes and counts the machine's own finished work (a previous
    bench run leaves 0.7). This reads the busy jiffies of all CPUs from
    /proc/stat around a sleep and subtracts this process's own.
    """

    def busy() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(fields[:8]) - idle, int(own[11]) + int(own[12])  # utime + stime

    try:
        before, own_before = busy()
        time.sleep(seconds)
        after, own_after = busy()
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") * seconds
    return max(0.0, (after - before - (own_after - own_before)) / ticks)


def matmul_peak_gflops(n: int, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n by n x n ``torch.matmul`` (the machine's practical peak)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b))[0] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def linear_params(model: Any) -> int:
    """Weights of every nn.Linear module: the N of the ``2 N`` FLOPs per token."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flop_shape(model: Any) -> Any:
    """The :class:`tunelens.measures.flops.ModelShape` of ``model``, LM head counted."""
    import torch

    from tunelens.measures.flops import ModelShape

    head = model.get_output_embeddings()
    head_params = head.weight.numel() if isinstance(head, torch.nn.Linear) else 0
    return ModelShape(non_embedding=linear_params(model) - head_params, head=head_params)


def gflops_per_s(tokens: float, seconds: float, model: Any, *, training: bool) -> float:
    """GFLOP/s of ``tokens`` forward (or frozen-base LoRA training) tokens in ``seconds``."""
    from tunelens.measures.flops import forward_flops, training_flops

    shape = flop_shape(model)
    if training:
        flops = training_flops(tokens, shape, weights="frozen", attention=False)
    else:
        flops = forward_flops(tokens, shape, attention=False)
    return flops / seconds / 1e9


def report(
    label: str, base_s: float, ours_s: float, target: float, extra: str = "", ours: str = "tunelens"
) -> float:
    """Print one comparison line; returns baseline time / our time."""
    ratio = base_s / ours_s
    verdict = f"target >= {target:g}x  {'met' if ratio >= target else 'MISSED'}"
    print(
        f"{label:<40} baseline {base_s:8.3f} s  {ours} {ours_s:8.3f} s  "
        f"{ratio:6.2f}x faster  {verdict}{extra}",
        flush=True,
    )
    return ratio


# ---------------------------------------------------------------------------
# Models and data


def world_model() -> Any:
    from tunelens.models.loading import load_model

    return load_model("world")


def random_llama(tokenizer: Any, sizes: Sizes, seed: int = 0) -> Any:
    """A seeded random Llama (about 20M parameters at the default sizes), world tokenizer."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelens.models.loading import load_model_from_objects

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.big_hidden,
        intermediate_size=sizes.big_intermediate,
        num_hidden_layers=sizes.big_layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    return load_model_from_objects(
        model, copy.deepcopy(tokenizer), name=f"random-llama-{n / 1e6:.1f}M"
    )


def icl_workload(tokenizer: Any, sizes: Sizes) -> tuple[str, list[str], str]:
    """(shared prefix, anchor suffixes, task name): k demonstrations + anchors of one world task.

    The task is the training task of median 16-shot prompt length among those
    with enough instances, so the choice favours neither side.
    """
    from tunelens.prompts import PromptStyle, render_prompt
    from tunelens.tasks.types import Example
    from tunelens.tasks.world.generator import generate_world

    style = PromptStyle(template="plain", definition=True, n_positive=0)
    tasks = [t for t in generate_world(0).train if len(t.instances) >= sizes.k + sizes.anchors]

    def demos(task):
        return [Example(i.input, i.outputs[0]) for i in task.instances[: sizes.k]]

    def length(task):
        prompt = render_prompt(task, task.instances[sizes.k].input, demos(task), style)
        return len(tokenizer(prompt)["input_ids"])

    task = sorted(tasks, key=lambda t: (length(t), t.name))[len(tasks) // 2]
    anchors = task.instances[sizes.k : sizes.k + sizes.anchors]
    prompts = [render_prompt(task, a.input, demos(task), style) for a in anchors]
    cut = prompts[0].rindex("Input: ")
    prefix = prompts[0][:cut]
    assert all(p.startswith(prefix) for p in prompts)
    return prefix, [p[cut:] for p in prompts], task.name


def demo_sets(n_sets: int, k: int, *, definition: bool = True) -> list[list[tuple[str, str]]]:
    """``n_sets`` sets of k (zero-shot prompt, target) pairs, one world task per set.

    With ``definition`` every prompt starts with its task's definition (the
    convergence default), so the prompts of a set share most of their tokens.
    """
    from tunelens.prompts import PromptStyle, render_prompt, render_target
    from tunelens.tasks.world.generator import generate_world

    style = PromptStyle(template="plain", definition=definition, n_positive=0)
    tasks = generate_world(0).train
    return [
        [
            (render_prompt(task, inst.input, [], style), render_target(inst.outputs[0]))
            for inst in task.instances[:k]
        ]
        for task in (tasks[j % len(tasks)] for j in range(n_sets))
    ]


def sft_pairs(n: int) -> list[tuple[str, str]]:
    """n multi-task pairs (definition + 2 positive examples + input), as the audit builds them."""
    from tunelens.experiments.audit import training_pairs
    from tunelens.tasks.world.generator import generate_world

    tasks = generate_world(0).train
    per_task = math.ceil(n / len(tasks))
    pairs = training_pairs(
        tasks,
        definition="original",
        examples="original",
        instances_per_task=per_task,
        n_positive=2,
        seed=0,
        template="plain",
    )
    return pairs[:n]


# ---------------------------------------------------------------------------
# 1. hidden states


def plain_states(loaded: Any, prompts: Sequence[str]) -> Any:
    """The baseline: one ``model(..., output_hidden_states=True)`` per prompt."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            batch = tokenizer(prompt, return_tensors="pt").to(loaded.device)
            out = model(**batch, output_hidden_states=True)
            rows.append(torch.stack([h[0, -1] for h in out.hidden_states]))
    return torch.stack(rows).float().cpu()


def cached_states(loaded: Any, prefix: str, suffixes: Sequence[str]) -> Any:
    """The competent baseline: the prefix's KV cache once, expanded over the anchors, no LM head.

    What a researcher who knows transformers writes: run the base model (not
    the LM head: only states are wanted) once over the shared demonstration
    prefix into a ``DynamicCache``, expand that cache to one row per anchor,
    and run all anchor suffixes in one right-padded batch on top of it
    (positions continue after the prefix, as transformers counts them from the
    cache length); the state of each row's last real token at every layer.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    body = model.base_model  # LlamaForCausalLM.model: the decoder without the LM head
    # transformers 5.x names the argument ``cache`` (``past_key_values`` until 5.40)
    key = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    with torch.no_grad():
        prefix_ids = tokenizer(prefix, return_tensors="pt")["input_ids"].to(device)
        n = prefix_ids.shape[1]
        full = tokenizer([prefix + s for s in suffixes])["input_ids"]
        if not all(list(ids[:n]) == prefix_ids[0].tolist() and len(ids) > n for ids in full):
            raise ValueError("a prompt's tokens do not extend the prefix's")
        rests = [list(ids[n:]) for ids in full]
        cache = DynamicCache()
        body(input_ids=prefix_ids, use_cache=True, **{key: cache})
        batch, width = len(rests), max(map(len, rests))
        ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((batch, n + width), dtype=torch.long, device=device)
        mask[:, :n] = 1
        for row, rest in enumerate(rests):
            ids[row, : len(rest)] = torch.tensor(rest)
            mask[row, n : n + len(rest)] = 1
        expanded = DynamicCache(
            [
                (layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1))
                for layer in cache.layers
            ]
        )
        out = body(
            input_ids=ids,
            attention_mask=mask,
            use_cache=True,
            output_hidden_states=True,
            **{key: expanded},
        )
        last = torch.tensor([len(r) - 1 for r in rests], device=device)
        rows = torch.arange(batch, device=device)
        return torch.stack([h[rows, last] for h in out.hidden_states], dim=1).float().cpu()


def shared_token_counts(loaded: Any, prefix: str, suffixes: Sequence[str]) -> dict[str, int]:
    """Token positions each side computes: ``loop`` every prompt in full; ``cached`` the prefix
    once plus each prompt's tokens after it; ``tunelens`` the packed rows (shared tokens once)."""
    from tunelens.models.packing import pack_rows

    tokenizer = loaded.tokenizer
    full = [list(ids) for ids in tokenizer([prefix + s for s in suffixes])["input_ids"]]
    n_prefix = len(tokenizer(prefix)["input_ids"])
    hidden = int(getattr(loaded.model.config, "hidden_size", 1024))
    return {
        "loop": sum(map(len, full)),
        "cached": n_prefix + sum(len(ids) - n_prefix for ids in full),
        "tunelens": sum(len(row.ids) for row in pack_rows(full, hidden_size=hidden)),
    }


def capture_flops(tokens: float, model: Any, *, head: bool = False) -> float:
    """Forward FLOPs of ``tokens`` tokens, the LM head counted only with ``head`` (the library's
    capture and the cached baseline run none; the per-prompt loop does)."""
    from tunelens.measures.flops import ModelShape, forward_flops

    shape = flop_shape(model)
    shape = shape if head else ModelShape(non_embedding=shape.non_embedding)
    return forward_flops(tokens, shape, attention=False)


def bench_hidden_states(loaded: Any, sizes: Sizes, label: str) -> dict[str, Any]:
    """Per-prompt forwards and the cached baseline vs the library's packed capture.

    The library side is ``capture_with_shared_prefix`` (packed rows, shared
    tokens once, no LM head). Before any timing the cached baseline's states
    must equal tunelens's within 1e-4. Then the sides run interleaved (loop,
    cached, tunelens, and a ``matmul_n``^3 fp32 matmul; ``hidden_repeats``
    rounds after a warm-up); ratios are given as min / min (``ratio``, the key
    of earlier runs) and as the median and spread of the per-round ratios, in
    wall and in CPU time. ``mfu_cpu``: the capture's FLOPs per CPU-second over
    the matmul's FLOPs per CPU-second of the same round (median and spread
    over the rounds), which the machine's other load moves less than wall time.
    """
    import torch

    from tunelens.models.hidden_states import capture_with_shared_prefix

    prefix, suffixes, task = icl_workload(loaded.tokenizer, sizes)
    prompts = [prefix + s for s in suffixes]
    ours = capture_with_shared_prefix(loaded, prefix, suffixes)
    cached = cached_states(loaded, prefix, suffixes)
    cached_diff = float((cached - ours).abs().max())
    if not cached_diff <= 1e-4:
        raise AssertionError(
            f"cached baseline and tunelens states differ by {cached_diff:.2e} [{label}]"
        )
    a, b = torch.randn(sizes.matmul_n, sizes.matmul_n), torch.randn(sizes.matmul_n, sizes.matmul_n)
    runs, results = interleaved_runs(
        {
            "baseline": lambda: plain_states(loaded, prompts),
            "cached": lambda: cached_states(loaded, prefix, suffixes),
            "tunelens": lambda: capture_with_shared_prefix(loaded, prefix, suffixes),
            "matmul": lambda: torch.matmul(a, b),
        },
        sizes.hidden_repeats,
    )
    best = {n: min(w for w, _ in r) for n, r in runs.items()}
    median = {n: statistics.median(w for w, _ in r) for n, r in runs.items()}
    median_cpu = {n: statistics.median(c for _, c in r) for n, r in runs.items()}
    vs_loop = paired_ratios(runs, "baseline", "tunelens")
    vs_cached = paired_ratios(runs, "cached", "tunelens")
    diff = float((results["baseline"] - results["tunelens"]).abs().max())
    scale = float(results["baseline"].abs().max())
    tokens = shared_token_counts(loaded, prefix, suffixes)
    model = loaded.model
    n = linear_params(model)
    matmul_flops = 2.0 * sizes.matmul_n**3
    flops = {
        "tunelens": capture_flops(tokens["tunelens"], model),
        "cached": capture_flops(tokens["cached"], model),
        "baseline": capture_flops(tokens["loop"], model, head=True),
    }
    mfu: dict[str, Any] = {}
    for side in flops:  # per round: (side FLOPs / side CPU-s) / (matmul FLOPs / matmul CPU-s)
        rounds = [
            flops[side] / c_side * c_matmul / matmul_flops
            for (_, c_side), (_, c_matmul) in zip(runs[side], runs["matmul"], strict=True)
            if c_side and c_matmul
        ]
        mfu[side] = statistics.median(rounds) if rounds else math.nan
        mfu[f"{side}_spread"] = [min(rounds), max(rounds)] if rounds else [math.nan, math.nan]

    def spread(r: dict[str, Any]) -> str:
        lo, hi = r["wall_spread"]
        clo, chi = r["cpu_spread"]
        return (
            f"median {r['wall']:.2f}x [{lo:.2f}-{hi:.2f}] wall, {r['cpu']:.2f}x "
            f"[{clo:.2f}-{chi:.2f}] CPU, {sizes.hidden_repeats} rounds"
        )

    ratio = report(
        f"hidden states [{label}]",
        best["baseline"],
        best["tunelens"],
        TARGETS["hidden_states"],
        f"  max|diff| {diff:.1e} (states up to {scale:.0f}); {spread(vs_loop)}; {load_text()}",
    )
    cached_ratio = report(
        f"hidden states vs cached [{label}]",
        best["cached"],
        best["tunelens"],
        TARGETS["hidden_states_vs_cached"],
        f"  max|diff| {cached_diff:.1e}; {spread(vs_cached)}; token positions: loop "
        f"{tokens['loop']}, cached {tokens['cached']}, tunelens {tokens['tunelens']}; "
        f"{load_text()}",
    )
    return {
        "ratio": ratio,
        "ratio_median": vs_loop["wall"],
        "ratio_spread": vs_loop["wall_spread"],
        "ratio_cpu": vs_loop["cpu"],
        "ratio_cpu_spread": vs_loop["cpu_spread"],
        "vs_cached": vs_cached["wall"],
        "vs_cached_spread": vs_cached["wall_spread"],
        "vs_cached_cpu": vs_cached["cpu"],
        "vs_cached_cpu_spread": vs_cached["cpu_spread"],
        "vs_cached_min_over_min": cached_ratio,
        "rounds": {"vs_loop": vs_loop, "vs_cached": vs_cached},
        "mfu_cpu": mfu["tunelens"],
        "mfu_cpu_spread": mfu["tunelens_spread"],
        "mfu_cpu_cached": mfu["cached"],
        "mfu_cpu_baseline": mfu["baseline"],
        "matmul_n": sizes.matmul_n,
        "matmul_median_cpu_s": median_cpu["matmul"],
        "baseline_s": best["baseline"],
        "cached_s": best["cached"],
        "tunelens_s": best["tunelens"],
        "baseline_median_s": median["baseline"],
        "cached_median_s": median["cached"],
        "tunelens_median_s": median["tunelens"],
        "baseline_median_cpu_s": median_cpu["baseline"],
        "cached_median_cpu_s": median_cpu["cached"],
        "tunelens_median_cpu_s": median_cpu["tunelens"],
        "loadavg": list(os.getloadavg()),
        "max_abs_diff": diff,
        "cached_max_abs_diff": cached_diff,
        "max_abs_state": scale,
        "task": task,
        "prompts": len(prompts),
        "prefix_tokens": len(loaded.tokenizer(prefix)["input_ids"]),
        "prompt_tokens_total": tokens["loop"],
        "cached_tokens": tokens["cached"],
        "tunelens_tokens": tokens["tunelens"],
        "linear_params": n,
        "gflops_baseline": gflops_per_s(tokens["loop"], best["baseline"], model, training=False),
        "gflops_cached": capture_flops(tokens["cached"], model) / best["cached"] / 1e9,
        "gflops_tunelens": capture_flops(tokens["tunelens"], model) / best["tunelens"] / 1e9,
    }


# ---------------------------------------------------------------------------
# 2. per-set tuning


def peft_sequential(
    loaded: Any, sets: Sequence[Sequence[tuple[str, str]]], config: Any, seeds: Sequence[int]
) -> list[dict[str, Any]]:
    """The baseline: one plain PEFT LoRA run per set, one after the other.

    Starting weights and batch order are tunelens's seeded ones (a copy of A
    and a list of indices), so that the final adapters can be compared.
    """
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from peft import set_peft_model_state_dict as set_state

    from tunelens.models import tuning
    from tunelens.models.batching import collate_causal, encode_pairs
    from tunelens.models.tuning.targets import module_shapes

    model, tokenizer = loaded.model, loaded.tokenizer
    names = tuning.target_module_names(model, config.target_modules)
    shapes = module_shapes(model, names)
    states = []
    for pairs, seed in zip(sets, seeds, strict=True):
        torch.manual_seed(seed)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, lora)
        set_state(peft_model, tuning.initial_lora_state(shapes, config.lora_r, seed))
        encoded = encode_pairs(tokenizer, pairs, kind="causal", add_eos=True)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        peft_model.train()
        for indices in tuning.step_batches(len(encoded), config, seed):
            batch = collate_causal([encoded[i] for i in indices], tokenizer.pad_token_id)
            out = peft_model(**{k: v.to(loaded.device) for k, v in batch.items()})
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        states.append(
            {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        )
        peft_model.unload()
        model.eval()
    return states


def set_tokens(
    tokenizer: Any, sets: Sequence[Sequence[tuple[str, str]]], seeds: Sequence[int], config: Any
) -> dict[str, int]:
    """Token positions over all steps, counted without a model.

    ``useful``: non-pad tokens; ``peft``: each set's batch padded to its longest
    row (what the sequential baseline computes). What ``tune_many_sets``
    computes is counted during its runs (:func:`bench_per_set`).
    """
    from tunelens.models.batching import encode_pairs
    from tunelens.models.tuning import step_batches

    encoded = [encode_pairs(tokenizer, pairs, kind="causal") for pairs in sets]
    counts = {"useful": 0, "peft": 0}
    for es, seed in zip(encoded, seeds, strict=True):
        lengths = [len(e.prompt_ids) + len(e.target_ids) for e in es]
        for batch in step_batches(len(es), config, seed):
            counts["useful"] += sum(lengths[i] for i in batch)
            counts["peft"] += len(batch) * max(lengths[i] for i in batch)
    return counts


def bench_per_set(
    loaded: Any,
    n_sets: int,
    epochs: int,
    sizes: Sizes,
    label: str,
    repeats: int,
    *,
    definition: bool = True,
) -> dict[str, Any]:
    """Sequential PEFT vs ``tune_many_sets`` (the library, its defaults), interleaved.

    30 sets x ``set_k`` pairs, one world task per set, zero-shot prompts with or
    without the task definition. After a warm-up of each side on two sets, the
    sides run in turn (PEFT, tunelens, PEFT, ...) for ``repeats`` rounds; the
    ratio is the median of the per-round ratios (wall time), with their spread
    and the CPU-time ratio. The token positions each side feeds its model are
    counted at the input embedding during the rounds (padding included).
    """
    import torch

    from tunelens.models.batching import encode_pairs
    from tunelens.models.tuning import TuningConfig, step_batches, tune_many_sets
    from tunelens.models.tuning.many_sets import choose_layout

    sets = demo_sets(n_sets, sizes.set_k, definition=definition)
    seeds = list(range(n_sets))
    config = TuningConfig(
        lora_r=8,
        lora_alpha=16,
        learning_rate=1e-3,
        epochs=epochs,
        batch_size=sizes.set_batch,
        max_grad_norm=1.0,
    )
    sides = {
        "baseline": lambda s, c: peft_sequential(loaded, s, c, seeds[: len(s)]),
        "tunelens": lambda s, c: tune_many_sets(loaded, s, c, seeds=seeds[: len(s)]),
    }
    warm = TuningConfig(**{**config.model_dump(), "epochs": 1})
    for side in sides.values():  # warm-up on two sets, one epoch
        side(sets[:2], warm)
    positions = dict.fromkeys(sides, 0)
    current = [""]

    def count(module: Any, args: tuple[Any, ...], output: Any) -> None:
        positions[current[0]] += args[0].numel()

    def run_side(name: str) -> Any:
        current[0] = name
        return sides[name](sets, config)

    hook = loaded.model.get_input_embeddings().register_forward_hook(count)
    try:
        runs, results = interleaved_runs(
            {name: (lambda name=name: run_side(name)) for name in sides}, repeats, warm_up=False
        )
    finally:
        hook.remove()
    best = {n: min(w for w, _ in r) for n, r in runs.items()}
    median = {n: statistics.median(w for w, _ in r) for n, r in runs.items()}
    median_cpu = {n: statistics.median(c for _, c in r) for n, r in runs.items()}
    paired = paired_ratios(runs, "baseline", "tunelens")

    worst_abs = worst_rel = 0.0  # tunelens's adapters against PEFT's, every set
    for ours, theirs in zip(results["tunelens"], results["baseline"], strict=True):
        delta = torch.cat([(ours[k] - theirs[k]).flatten() for k in theirs])
        reference = torch.cat([theirs[k].flatten() for k in theirs])
        worst_abs = max(worst_abs, float(delta.abs().max()))
        worst_rel = max(worst_rel, float(delta.norm() / reference.norm()))
    steps = len(step_batches(sizes.set_k, config, 0))
    tokens = set_tokens(loaded.tokenizer, sets, seeds, config)
    tokens.update({f"{n}_counted": positions[n] // max(1, repeats) for n in sides})
    encoded = [encode_pairs(loaded.tokenizer, pairs, kind="causal") for pairs in sets]
    layout = choose_layout(loaded, encoded, config)
    model = loaded.model
    n = linear_params(model)
    lo, hi = paired["wall_spread"]
    clo, chi = paired["cpu_spread"]
    ratio = paired["wall"]
    verdict = "met" if ratio >= TARGETS["per_set_tuning"] else "MISSED"
    print(
        f"{'per-set tuning [' + label + ']':<40} PEFT {median['baseline']:7.3f} s  tunelens "
        f"{median['tunelens']:7.3f} s (medians)  median {ratio:.2f}x [{lo:.2f}-{hi:.2f}] "
        f"wall, {paired['cpu']:.2f}x [{clo:.2f}-{chi:.2f}] CPU, {repeats} rounds  target >= "
        f"{TARGETS['per_set_tuning']:g}x  {verdict}  {n_sets} sets x {steps} steps, layout "
        f"{layout}, adapter diff max {worst_abs:.1e} rel {worst_rel:.1e}; token positions: "
        f"PEFT {tokens['baseline_counted']}, tunelens {tokens['tunelens_counted']}; "
        f"{load_text()}",
        flush=True,
    )
    return {
        "ratio": ratio,
        "ratio_spread": paired["wall_spread"],
        "ratio_cpu": paired["cpu"],
        "ratio_cpu_spread": paired["cpu_spread"],
        "ratio_min_over_min": best["baseline"] / best["tunelens"],
        "rounds": paired,
        "definition": definition,
        "layout": layout,
        "baseline_s": best["baseline"],
        "tunelens_s": best["tunelens"],
        "baseline_median_s": median["baseline"],
        "tunelens_median_s": median["tunelens"],
        "baseline_median_cpu_s": median_cpu["baseline"],
        "tunelens_median_cpu_s": median_cpu["tunelens"],
        "loadavg": list(os.getloadavg()),
        "max_abs_adapter_diff": worst_abs,
        "max_rel_adapter_diff": worst_rel,
        "sets": n_sets,
        "k": sizes.set_k,
        "steps_per_set": steps,
        "tokens": tokens["useful"],
        "tokens_computed": tokens,
        "linear_params": n,
        "gflops_baseline": gflops_per_s(tokens["useful"], best["baseline"], model, training=True),
        "gflops_tunelens": gflops_per_s(tokens["useful"], best["tunelens"], model, training=True),
    }


# ---------------------------------------------------------------------------
# 3. multi-task tuning: tunelens multitask_tune vs TRL SFTTrainer


def tunelens_sft(loaded: Any, pairs: Sequence[tuple[str, str]], config: Any) -> int:
    """One multitask_tune run; returns the non-pad tokens it processed."""
    from tunelens.models.batching import encode_pairs
    from tunelens.models.tuning import multitask_tune

    tuned = multitask_tune(loaded, pairs, config, progress=False)
    tuned.unload()
    encoded = encode_pairs(loaded.tokenizer, pairs, kind="causal", add_eos=config.add_eos)
    return sum(len(e.prompt_ids) + len(e.target_ids) for e in encoded)


def trl_sft(
    loaded: Any, pairs: Sequence[tuple[str, str]], config: Any, workdir: str
) -> tuple[float, float, int]:
    """One SFTTrainer run on a fresh copy of the model.

    Returns the seconds of ``trainer.train()``, TRL's own ``train_runtime`` (its
    training loop without the set-up inside ``train()``) and the non-pad tokens.
    """
    import copy

    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=workdir,
        per_device_train_batch_size=config.batch_size,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch_fused",  # TrainingArguments' default on torch >= 2.8, as tunelens's
        seed=config.seed,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        packing=False,
        completion_only_loss=True,
        max_length=None,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    data = Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(
            model=copy.deepcopy(loaded.model),
            args=args,
            train_dataset=data,
            processing_class=copy.deepcopy(loaded.tokenizer),
            peft_config=lora,
        )
        with contextlib.redirect_stdout(sys.stderr):  # train() prints its metrics dict
            seconds, output = timed(trainer.train)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    return seconds, float(output.metrics["train_runtime"]), tokens


def padded_positions(tokenizer: Any, pairs: Sequence[tuple[str, str]], batch: int) -> int:
    """Positions computed when batches of a seeded random order pad to their longest row."""
    import torch

    from tunelens.models.batching import encode_pairs

    lengths = [
        len(e.prompt_ids) + len(e.target_ids) for e in encode_pairs(tokenizer, pairs, kind="causal")
    ]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    return sum(
        len(chunk) * max(lengths[i] for i in chunk)
        for chunk in (order[j : j + batch] for j in range(0, len(order), batch))
    )


def bench_sft(loaded: Any, steps: int, sizes: Sizes, label: str, repeats: int) -> dict[str, Any]:
    from tunelens.models.tuning import TuningConfig

    pairs = sft_pairs(steps * sizes.sft_batch)
    config = TuningConfig(
        lora_r=8,
        lora_alpha=16,
        learning_rate=1e-3,
        epochs=1,
        batch_size=sizes.sft_batch,
        max_steps=steps,
        max_grad_norm=1.0,
    )
    warm = TuningConfig(**{**config.model_dump(), "max_steps": min(2, steps)})
    warm_pairs = pairs[: warm.max_steps * sizes.sft_batch]
    times: dict[str, list[float]] = {"baseline": [], "tunelens": [], "trl_runtime": []}
    with tempfile.TemporaryDirectory() as workdir:
        trl_sft(loaded, warm_pairs, warm, workdir)  # warm-up
        tunelens_sft(loaded, warm_pairs, warm)
        for round_ in range(repeats):  # interleaved: TRL first in even rounds, tunelens in odd
            for side in ("trl", "tunelens") if round_ % 2 == 0 else ("tunelens", "trl"):
                if side == "trl":
                    seconds, runtime, trl_tokens = trl_sft(loaded, pairs, config, workdir)
                    times["baseline"].append(seconds)
                    times["trl_runtime"].append(runtime)
                else:
                    seconds, our_tokens = timed(lambda: tunelens_sft(loaded, pairs, config))
                    times["tunelens"].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    # tokens/s ratio per round (same round, same load), then its median and spread
    rounds = [
        (our_tokens / ours) / (trl_tokens / theirs)
        for theirs, ours in zip(times["baseline"], times["tunelens"], strict=True)
    ]
    ratio = statistics.median(rounds)
    best_ratio = (our_tokens / best["tunelens"]) / (trl_tokens / best["baseline"])
    trl_rate, our_rate = trl_tokens / best["baseline"], our_tokens / best["tunelens"]
    padded = padded_positions(loaded.tokenizer, pairs, sizes.sft_batch)
    model = loaded.model
    n = linear_params(model)
    verdict = f"  target >= {TARGETS['sft_tokens']:g}x  " + (
        "met" if ratio >= TARGETS["sft_tokens"] else "MISSED"
    )
    print(
        f"{'multi-task tuning [' + label + ']':<40} TRL {trl_rate:9.0f} tok/s  tunelens "
        f"{our_rate:9.0f} tok/s  median {ratio:.2f}x [{min(rounds):.2f}-{max(rounds):.2f}] "
        f"tokens/s, {repeats} rounds (best/best {best_ratio:.2f}x){verdict}  ({steps} steps x "
        f"batch {sizes.sft_batch}; {our_tokens} vs {trl_tokens} tokens, ~{padded} "
        "positions with padding)",
        flush=True,
    )
    return {
        "ratio": ratio,
        "ratio_spread": [min(rounds), max(rounds)],
        "ratio_rounds": rounds,
        "ratio_best_over_best": best_ratio,
        "trl_s": best["baseline"],
        "tunelens_s": best["tunelens"],
        "trl_median_s": statistics.median(times["baseline"]),
        "tunelens_median_s": statistics.median(times["tunelens"]),
        "trl_train_runtime_s": best["trl_runtime"],
        "ratio_vs_trl_train_runtime": our_rate / (trl_tokens / best["trl_runtime"]),
        "trl_tokens": trl_tokens,
        "tunelens_tokens": our_tokens,
        "padded_positions_random_order": padded,
        "trl_tokens_per_s": trl_rate,
        "tunelens_tokens_per_s": our_rate,
        "steps": steps,
        "batch_size": sizes.sft_batch,
        "linear_params": n,
        "gflops_trl": gflops_per_s(trl_tokens, best["baseline"], model, training=True),
        "gflops_tunelens": gflops_per_s(our_tokens, best["tunelens"], model, training=True),
    }


# ---------------------------------------------------------------------------
# Profiles (--profile): where the time of the tunelens side goes


def profile(label: str, fn: Callable[[], Any], rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    log(f"--- profile: {label} (self CPU time, top {rows})")
    log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def run_profiles(world: Any, big: Any, sizes: Sizes) -> None:
    """Profiles behind the README's explanations: forward path, per-set tuning both ways."""
    from tunelens.models.hidden_states import capture_with_shared_prefix
    from tunelens.models.tuning import TuningConfig, tune_many_sets

    prefix, suffixes, _ = icl_workload(big.tokenizer, sizes)
    profile(
        f"capture_with_shared_prefix [{big.name}]",
        lambda: capture_with_shared_prefix(big, prefix, suffixes),
    )
    sets = demo_sets(sizes.sets, sizes.set_k)
    seeds = list(range(len(sets)))
    config = TuningConfig(epochs=2, batch_size=sizes.set_batch)
    profile(
        "sequential PEFT [world model], 2 epochs",
        lambda: peft_sequential(world, sets, config, seeds),
    )
    profile(
        "tune_many_sets [world model], 2 epochs",
        lambda: tune_many_sets(world, sets, config, seeds=seeds),
    )
    profile(
        "tune_many_sets full rows [world model], 2 epochs",
        lambda: tune_many_sets(world, sets, config, seeds=seeds, layout="rows"),
    )


# ---------------------------------------------------------------------------


def environment(threads: int, others: float | None) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl

    from tunelens.models.paths import world_model_dir

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    weights = world_model_dir() / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else ""
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "others_cores_at_start": None if others is None else round(others, 2),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "world_model_sha256": digest,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (tiny models)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print torch.profiler tables of the tunelens side to stderr",
    )
    parser.add_argument(
        "--plan-error",
        action="store_true",
        help="also run three studies to time `tunelens plan` against them (bench/e2e.py; slow)",
    )
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    others = others_cpu_use()
    busy, what = (
        (os.getloadavg()[0], "load average")
        if others is None
        else (others, "cores busy with other processes")
    )
    if busy >= SHARED_CORES and "OMP_WAIT_POLICY" not in os.environ:
        # Spinning OpenMP threads that share cores with other processes wait for each other
        # at every parallel region; with passive waiting they sleep instead.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log(
            f"note: {what} {busy:.2f} at start: the machine is shared, figures are "
            "depressed and noisier; OMP_WAIT_POLICY=PASSIVE"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    start, start_cpu = time.perf_counter(), time.process_time()
    print(
        f"{'machine':<40} {load_text()} (1, 5, 15 min) at start, {os.cpu_count()} CPUs", flush=True
    )
    result: dict[str, Any] = {"quick": args.quick, "environment": environment(args.threads, others)}

    peak = matmul_peak_gflops(sizes.matmul_n)
    print(
        f"{'fp32 matmul peak':<40} {peak:.1f} GFLOP/s ({sizes.matmul_n}^3 torch.matmul, "
        f"{args.threads} threads)",
        flush=True,
    )
    result["matmul_peak_gflops"] = peak

    world = world_model()
    big = random_llama(world.tokenizer, sizes)
    big_label = big.name.removeprefix("random-")
    log("hidden states ...")
    long = replace(sizes, k=sizes.k_long)
    hs_big = bench_hidden_states(big, long, f"{big_label}, k={long.k}")
    hs_world = bench_hidden_states(world, long, f"world model, k={long.k}")
    hs_short = bench_hidden_states(big, sizes, f"{big_label}, k={sizes.k}")
    log("per-set tuning ...")
    per_set = {
        f"{model}{'' if definition else '_no_definition'}": bench_per_set(
            loaded,
            n_sets,
            epochs,
            sizes,
            f"{label}, definition {'on' if definition else 'off'}",
            sizes.set_repeats,
            definition=definition,
        )
        for definition in (True, False)
        for model, loaded, n_sets, epochs, label in (
            ("world", world, sizes.sets, sizes.set_epochs, "world model"),
            ("20m", big, sizes.sets_20m, sizes.set_epochs_20m, big_label),
        )
    }
    sets_world, sets_big = per_set["world"], per_set["20m"]
    per_set_ratio = min(r["ratio"] for r in per_set.values())
    print(
        f"{'per-set tuning, smallest of the four':<40} {per_set_ratio:.2f}x  target >= "
        f"{TARGETS['per_set_tuning']:g}x  "
        f"{'met' if per_set_ratio >= TARGETS['per_set_tuning'] else 'MISSED'}",
        flush=True,
    )
    log("multi-task tuning ...")
    sft_world = bench_sft(world, sizes.sft_steps, sizes, "world model", sizes.sft_repeats)
    sft_big = bench_sft(big, sizes.sft_steps_20m, sizes, big_label, sizes.sft_repeats)

    mfu = {
        "mfu_forward": hs_big["mfu_cpu"],
        "mfu_forward_spread": hs_big["mfu_cpu_spread"],
        "mfu_forward_baseline": hs_big["mfu_cpu_baseline"],
        "mfu_forward_cached": hs_big["mfu_cpu_cached"],
        "mfu_forward_world": hs_world["mfu_cpu"],
        "mfu_forward_world_baseline": hs_world["mfu_cpu_baseline"],
        "mfu_forward_wall": hs_big["gflops_tunelens"] / peak,  # wall clock, against the peak
        "mfu_per_set_tuning_20m": sets_big["gflops_tunelens"] / peak,
        "mfu_per_set_tuning_20m_baseline": sets_big["gflops_baseline"] / peak,
        "mfu_per_set_tuning_world": sets_world["gflops_tunelens"] / peak,
        "mfu_per_set_tuning_world_baseline": sets_world["gflops_baseline"] / peak,
        "mfu_sft_20m": sft_big["gflops_tunelens"] / peak,
        "mfu_sft_20m_trl": sft_big["gflops_trl"] / peak,
        "mfu_sft_world": sft_world["gflops_tunelens"] / peak,
        "mfu_sft_world_trl": sft_world["gflops_trl"] / peak,
    }
    met = "met" if mfu["mfu_forward"] >= TARGETS["mfu_forward"] else "MISSED"
    print(
        f"{'MFU forward [' + big_label + ']':<40} tunelens {mfu['mfu_forward']:6.1%} "
        f"[{mfu['mfu_forward_spread'][0]:.1%}-{mfu['mfu_forward_spread'][1]:.1%}]  "
        f"loop {mfu['mfu_forward_baseline']:6.1%}  cached {mfu['mfu_forward_cached']:6.1%}  "
        f"target >= {TARGETS['mfu_forward']:.0%}  {met}  (CPU time, against a "
        f"{sizes.matmul_n}^3 matmul in the same rounds; wall against the peak "
        f"{mfu['mfu_forward_wall']:.1%})",
        flush=True,
    )
    print(
        f"{'MFU LoRA training [' + big_label + ']':<40} per-set tunelens "
        f"{mfu['mfu_per_set_tuning_20m']:6.1%} / PEFT "
        f"{mfu['mfu_per_set_tuning_20m_baseline']:6.1%};  multi-task tunelens "
        f"{mfu['mfu_sft_20m']:6.1%} / TRL {mfu['mfu_sft_20m_trl']:6.1%}",
        flush=True,
    )

    if args.profile:
        run_profiles(world, big, sizes)

    import e2e  # bench/e2e.py: the end-to-end cell and the plan's error

    log("end to end: a default convergence cell ...")
    e2e_cell = e2e.bench_convergence_cell(1 if args.quick else 3, args.quick)
    e2e.print_cell_line(e2e_cell)
    e2e_plan = e2e.bench_plan_error() if args.plan_error else {"plan_error": math.nan}
    if args.plan_error:
        e2e.print_plan_line(e2e_plan)
    result.update(
        {
            "e2e_convergence_cell_ratio": e2e_cell["ratio"],
            "e2e_convergence_cell_ratio_spread": e2e_cell["ratio_spread"],
            "e2e_convergence_cell_ratio_cpu": e2e_cell["ratio_cpu"],
            "e2e_convergence_cell": e2e_cell,
            **e2e_plan,
        }
    )

    result.update(
        {
            "hidden_states_ratio": hs_big["ratio"],
            "hidden_states_ratio_median": hs_big["ratio_median"],
            "hidden_states_ratio_spread": hs_big["ratio_spread"],
            "hidden_states_ratio_cpu": hs_big["ratio_cpu"],
            "hidden_states_vs_cached": hs_big["vs_cached"],
            "hidden_states_vs_cached_spread": hs_big["vs_cached_spread"],
            "hidden_states_vs_cached_cpu": hs_big["vs_cached_cpu"],
            "hidden_states_vs_cached_cpu_spread": hs_big["vs_cached_cpu_spread"],
            "hidden_states_ratio_k16": hs_short["ratio"],
            "hidden_states_vs_cached_k16": hs_short["vs_cached"],
            "hidden_states_vs_cached_k16_spread": hs_short["vs_cached_spread"],
            "hidden_states_vs_cached_k16_cpu": hs_short["vs_cached_cpu"],
            "hidden_states_ratio_world": hs_world["ratio"],
            "hidden_states_vs_cached_world": hs_world["vs_cached"],
            "hidden_states_vs_cached_world_spread": hs_world["vs_cached_spread"],
            "hidden_states_vs_cached_world_cpu": hs_world["vs_cached_cpu"],
            "per_set_tuning_ratio": per_set_ratio,
            **{f"per_set_tuning_ratio_{name}": r["ratio"] for name, r in per_set.items()},
            "sft_tokens_ratio": sft_world["ratio"],
            "sft_tokens_ratio_20m": sft_big["ratio"],
            "sft_tokens_ratio_vs_trl_train_runtime": sft_world["ratio_vs_trl_train_runtime"],
            **mfu,
            "targets": TARGETS,
            "hidden_states": {"20m": hs_big, "world": hs_world, "20m_k16": hs_short},
            "per_set_tuning": per_set,
            "sft": {"world": sft_world, "20m": sft_big},
            "total_s": time.perf_counter() - start,
            "total_cpu_s": time.process_time() - start_cpu,
            "loadavg_at_end": list(os.getloadavg()),
        }
    )
    line = json.dumps(result, sort_keys=False, default=float)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
