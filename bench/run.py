"""tunelens against the tools a user would otherwise reach for, side by side, in one process.

    .venv/bin/python bench/run.py [--quick] [--threads N] [--out FILE] [--profile]

Four comparisons, each pair timed in this process after a warm-up run, with the
two sides interleaved so that both see the same machine:

1. hidden states of 30 anchors x k = 16 demonstrations sharing one prefix:
   ``capture_with_shared_prefix`` vs two baselines, on a random ~20M-parameter
   Llama and on the embedded world model: one ``model(...,
   output_hidden_states=True)`` per prompt under ``torch.no_grad``
   (``hidden_states_ratio``), and the competent one (``hidden_states_vs_cached``:
   the prefix's ``DynamicCache`` computed once by the base model, expanded over
   the anchors, one batch, no LM head); the states of all sides must agree;
   ratios also as median and spread of per-round (interleaved) ratios, in wall
   and CPU time (``time.process_time``), with the load average;
2. 30 per-set LoRA tunings: ``tune_many_sets`` vs 30 sequential PEFT runs
   (``get_peft_model`` + AdamW loop), same steps, batches, lr, r, alpha, target
   modules and seeds; the final adapters of both must agree;
3. multi-task LoRA tuning, tokens per second: ``multitask_tune`` vs TRL
   ``SFTTrainer`` with a PEFT ``LoraConfig``, same model, data, batch size,
   padding-to-longest, steps and optimiser settings;
4. model FLOPs utilisation against this machine's measured fp32 matmul peak.

Next to the library, the two shared-prefix prototypes of bench/prototypes.py
(packed hidden-state rows; per-set tuning with each set's prefix run once per
step) are timed against the same baselines: the indented ``prototype`` lines
and the ``*prototype*`` JSON keys. The headline keys are the library's.

One line per comparison goes to stdout; the last line is one JSON object with
every figure (``hidden_states_ratio``, ``per_set_tuning_ratio``,
``sft_tokens_ratio``, ``mfu_forward`` and more). Times are the minimum over the
repeats (``*_median_s`` keys hold the medians). ``--quick`` shrinks every
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
from dataclasses import dataclass
from typing import Any

TARGETS = {
    "hidden_states": 4.0,
    "hidden_states_vs_cached": 2.0,  # issue 16
    "per_set_tuning": 1.5,
    "sft_tokens": 1.0,
    "mfu_forward": 0.35,
}


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``QUICK`` is the smoke-test variant."""

    anchors: int = 30
    k: int = 16
    hidden_repeats: int = 5
    sets: int = 30
    set_epochs: int = 10  # 16 pairs / batch 8 = 2 steps per epoch
    set_batch: int = 8
    set_repeats: int = 2
    sets_20m: int = 30
    set_epochs_20m: int = 1
    sft_steps: int = 40
    sft_batch: int = 16
    sft_repeats: int = 2
    sft_steps_20m: int = 12
    matmul_n: int = 2048
    big_hidden: int = 512
    big_layers: int = 6
    big_intermediate: int = 1408
    prototype_sets_per_batch: int = 10


QUICK = Sizes(
    anchors=4,
    k=4,
    hidden_repeats=3,
    sets=3,
    set_epochs=1,
    set_batch=2,
    set_repeats=1,
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


def demo_sets(n_sets: int, k: int) -> list[list[tuple[str, str]]]:
    """``n_sets`` sets of k (zero-shot prompt, target) pairs, one world task per set."""
    from tunelens.prompts import PromptStyle, render_prompt, render_target
    from tunelens.tasks.world.generator import generate_world

    style = PromptStyle(template="plain", definition=True, n_positive=0)
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


def bench_hidden_states(loaded: Any, sizes: Sizes, label: str) -> dict[str, Any]:
    """Per-prompt forwards and the cached baseline vs ``capture_with_shared_prefix`` (+ prototype).

    Before any timing the cached baseline's states must equal tunelens's within
    1e-4. Then the four sides run interleaved (loop, cached, tunelens,
    prototype; ``hidden_repeats`` rounds after a warm-up); ratios are given as
    min / min (``ratio``, the key of earlier runs) and as the median and spread
    of the per-round ratios, in wall and in CPU time.
    """
    from prototypes import capture_packed
    from tunelens.models.hidden_states import capture_with_shared_prefix, split_shared_prefix

    prefix, suffixes, task = icl_workload(loaded.tokenizer, sizes)
    prompts = [prefix + s for s in suffixes]
    ours = capture_with_shared_prefix(loaded, prefix, suffixes)
    cached = cached_states(loaded, prefix, suffixes)
    cached_diff = float((cached - ours).abs().max())
    if not cached_diff <= 1e-4:
        raise AssertionError(
            f"cached baseline and tunelens states differ by {cached_diff:.2e} [{label}]"
        )
    runs, results = interleaved_runs(
        {
            "baseline": lambda: plain_states(loaded, prompts),
            "cached": lambda: cached_states(loaded, prefix, suffixes),
            "tunelens": lambda: capture_with_shared_prefix(loaded, prefix, suffixes),
            "prototype": lambda: capture_packed(loaded, prefix, suffixes),
        },
        sizes.hidden_repeats,
    )
    best = {n: min(w for w, _ in r) for n, r in runs.items()}
    median = {n: statistics.median(w for w, _ in r) for n, r in runs.items()}
    median_cpu = {n: statistics.median(c for _, c in r) for n, r in runs.items()}
    vs_loop = paired_ratios(runs, "baseline", "tunelens")
    vs_cached = paired_ratios(runs, "cached", "tunelens")
    diff = float((results["baseline"] - results["tunelens"]).abs().max())
    proto_diff = float((results["baseline"] - results["prototype"]).abs().max())
    scale = float(results["baseline"].abs().max())
    prefix_ids, rests = split_shared_prefix(loaded.tokenizer, prefix, suffixes)
    full_tokens = sum(len(loaded.tokenizer(p)["input_ids"]) for p in prompts)
    our_tokens = len(prefix_ids) + sum(len(r or []) for r in rests)
    model = loaded.model
    n = linear_params(model)

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
        f"  max|diff| {cached_diff:.1e}; {spread(vs_cached)}; {load_text()}",
    )
    proto_ratio = report(
        f"  prototype packed rows [{label}]",
        best["baseline"],
        best["prototype"],
        TARGETS["hidden_states"],
        f"  bench/prototypes.py, max|diff| {proto_diff:.1e}",
        ours="prototype",
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
        "prototype_ratio": proto_ratio,
        "baseline_s": best["baseline"],
        "cached_s": best["cached"],
        "tunelens_s": best["tunelens"],
        "prototype_s": best["prototype"],
        "baseline_median_s": median["baseline"],
        "cached_median_s": median["cached"],
        "tunelens_median_s": median["tunelens"],
        "prototype_median_s": median["prototype"],
        "baseline_median_cpu_s": median_cpu["baseline"],
        "cached_median_cpu_s": median_cpu["cached"],
        "tunelens_median_cpu_s": median_cpu["tunelens"],
        "loadavg": list(os.getloadavg()),
        "max_abs_diff": diff,
        "cached_max_abs_diff": cached_diff,
        "prototype_max_abs_diff": proto_diff,
        "max_abs_state": scale,
        "task": task,
        "prompts": len(prompts),
        "prefix_tokens": len(prefix_ids),
        "prompt_tokens_total": full_tokens,
        "tunelens_tokens": our_tokens,
        "linear_params": n,
        "gflops_baseline": gflops_per_s(full_tokens, best["baseline"], model, training=False),
        "gflops_cached": gflops_per_s(our_tokens, best["cached"], model, training=False),
        "gflops_tunelens": gflops_per_s(our_tokens, best["tunelens"], model, training=False),
        "gflops_prototype": gflops_per_s(our_tokens, best["prototype"], model, training=False),
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

    model, tokenizer = loaded.model, loaded.tokenizer
    names = tuning.target_module_names(model, config.target_modules)
    shapes = tuning._module_shapes(model, names)
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
    """Token positions each side computes over all steps (the per-set profile evidence).

    ``useful``: non-pad tokens; ``peft``: padded to the longest row of each
    set's batch; ``tune_many_sets``: padded to the longest row over all sets of
    a lockstep step; ``prototype``: each set's shared prefix once per step
    (padded over sets) plus the suffix rows (padded over sets).
    """
    from prototypes import shared_prefix_length
    from tunelens.models.batching import encode_pairs
    from tunelens.models.tuning import step_batches

    encoded = [encode_pairs(tokenizer, pairs, kind="causal") for pairs in sets]
    lengths = [[len(e.prompt_ids) + len(e.target_ids) for e in es] for es in encoded]
    prefixes = [shared_prefix_length(es) for es in encoded]
    schedules = [
        step_batches(len(es), config, seed) for es, seed in zip(encoded, seeds, strict=True)
    ]
    counts = {"useful": 0, "peft": 0, "tune_many_sets": 0, "prototype": 0}
    for step in range(len(schedules[0])):
        batches = [schedule[step] for schedule in schedules]
        longest = [max(lengths[s][i] for i in batch) for s, batch in enumerate(batches)]
        counts["useful"] += sum(lengths[s][i] for s, batch in enumerate(batches) for i in batch)
        counts["peft"] += sum(len(batch) * n for batch, n in zip(batches, longest, strict=True))
        counts["tune_many_sets"] += sum(map(len, batches)) * max(longest)
        suffix = max(lengths[s][i] - prefixes[s] for s, batch in enumerate(batches) for i in batch)
        counts["prototype"] += len(sets) * max(prefixes) + sum(map(len, batches)) * suffix
    return counts


def bench_per_set(
    loaded: Any, n_sets: int, epochs: int, sizes: Sizes, label: str, repeats: int
) -> dict[str, Any]:
    """PEFT sequential vs ``tune_many_sets`` (library) vs the shared-prefix prototype."""
    import torch

    from prototypes import tune_many_sets_shared_prefix
    from tunelens.models.tuning import TuningConfig, step_batches, tune_many_sets

    sets = demo_sets(n_sets, sizes.k)
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
        "prototype": lambda s, c: tune_many_sets_shared_prefix(
            loaded, s, c, seeds=seeds[: len(s)], sets_per_batch=sizes.prototype_sets_per_batch
        ),
    }
    warm = TuningConfig(**{**config.model_dump(), "epochs": 1})
    for side in sides.values():  # warm-up on two sets, one epoch
        side(sets[:2], warm)
    best, median, results = interleaved(
        {name: (lambda side=side: side(sets, config)) for name, side in sides.items()},
        repeats,
        warm_up=False,
    )

    def adapter_diff(name: str) -> tuple[float, float]:
        """Max element-wise |difference| to PEFT's adapters, and max relative L2 difference."""
        worst_abs = worst_rel = 0.0
        for ours, theirs in zip(results[name], results["baseline"], strict=True):
            delta = torch.cat([(ours[k] - theirs[k]).flatten() for k in theirs])
            reference = torch.cat([theirs[k].flatten() for k in theirs])
            worst_abs = max(worst_abs, float(delta.abs().max()))
            worst_rel = max(worst_rel, float(delta.norm() / reference.norm()))
        return worst_abs, worst_rel

    (diff, rel), (proto_diff, proto_rel) = adapter_diff("tunelens"), adapter_diff("prototype")
    steps = len(step_batches(sizes.k, config, 0))
    tokens = set_tokens(loaded.tokenizer, sets, seeds, config)
    model = loaded.model
    n = linear_params(model)
    ratio = report(
        f"per-set tuning [{label}]",
        best["baseline"],
        best["tunelens"],
        TARGETS["per_set_tuning"],
        f"  {n_sets} sets x {steps} steps, "
        f"adapter diff max {diff:.1e} rel {rel:.1e}; token positions: PEFT "
        f"{tokens['peft']}, tunelens {tokens['tune_many_sets']}",
    )
    proto_ratio = report(
        f"  prototype shared prefix [{label}]",
        best["baseline"],
        best["prototype"],
        TARGETS["per_set_tuning"],
        f"  bench/prototypes.py, adapter diff max {proto_diff:.1e} rel "
        f"{proto_rel:.1e}; token positions {tokens['prototype']}",
        ours="prototype",
    )
    return {
        "ratio": ratio,
        "prototype_ratio": proto_ratio,
        "baseline_s": best["baseline"],
        "tunelens_s": best["tunelens"],
        "prototype_s": best["prototype"],
        "baseline_median_s": median["baseline"],
        "tunelens_median_s": median["tunelens"],
        "prototype_median_s": median["prototype"],
        "max_abs_adapter_diff": diff,
        "prototype_max_abs_adapter_diff": proto_diff,
        "max_rel_adapter_diff": rel,
        "prototype_max_rel_adapter_diff": proto_rel,
        "sets": n_sets,
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
        optim="adamw_torch",
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
        for _ in range(repeats):
            seconds, runtime, trl_tokens = trl_sft(loaded, pairs, config, workdir)
            times["baseline"].append(seconds)
            times["trl_runtime"].append(runtime)
            seconds, our_tokens = timed(lambda: tunelens_sft(loaded, pairs, config))
            times["tunelens"].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    trl_rate, our_rate = trl_tokens / best["baseline"], our_tokens / best["tunelens"]
    padded = padded_positions(loaded.tokenizer, pairs, sizes.sft_batch)
    ratio = our_rate / trl_rate
    model = loaded.model
    n = linear_params(model)
    verdict = f"  target >= {TARGETS['sft_tokens']:g}x  " + (
        "met" if ratio >= TARGETS["sft_tokens"] else "MISSED"
    )
    print(
        f"{'multi-task tuning [' + label + ']':<40} TRL {trl_rate:9.0f} tok/s  tunelens "
        f"{our_rate:9.0f} tok/s  {ratio:6.2f}x tokens/s{verdict}  ({steps} steps x "
        f"batch {sizes.sft_batch}; {our_tokens} vs {trl_tokens} tokens, ~{padded} "
        "positions with padding)",
        flush=True,
    )
    return {
        "ratio": ratio,
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
    from prototypes import tune_many_sets_shared_prefix
    from tunelens.models.hidden_states import capture_with_shared_prefix
    from tunelens.models.tuning import TuningConfig, tune_many_sets

    prefix, suffixes, _ = icl_workload(big.tokenizer, sizes)
    profile(
        f"capture_with_shared_prefix [{big.name}]",
        lambda: capture_with_shared_prefix(big, prefix, suffixes),
    )
    sets = demo_sets(sizes.sets, sizes.k)
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
        "prototype shared prefix [world model], 2 epochs",
        lambda: tune_many_sets_shared_prefix(
            world, sets, config, seeds=seeds, sets_per_batch=sizes.prototype_sets_per_batch
        ),
    )


# ---------------------------------------------------------------------------


def environment(threads: int) -> dict[str, Any]:
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
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    busy = os.getloadavg()[0]
    if busy >= 0.5 and "OMP_WAIT_POLICY" not in os.environ:
        # Spinning OpenMP threads that share cores with other processes wait for each other
        # at every parallel region; with passive waiting they sleep instead.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log(
            f"note: load average {busy:.1f} at start: the machine is shared, figures are "
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
    result: dict[str, Any] = {"quick": args.quick, "environment": environment(args.threads)}

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
    hs_big = bench_hidden_states(big, sizes, big_label)
    hs_world = bench_hidden_states(world, sizes, "world model")
    log("per-set tuning ...")
    sets_world = bench_per_set(
        world, sizes.sets, sizes.set_epochs, sizes, "world model", sizes.set_repeats
    )
    sets_big = bench_per_set(big, sizes.sets_20m, sizes.set_epochs_20m, sizes, big_label, 1)
    log("multi-task tuning ...")
    sft_world = bench_sft(world, sizes.sft_steps, sizes, "world model", sizes.sft_repeats)
    sft_big = bench_sft(big, sizes.sft_steps_20m, sizes, big_label, 1)

    mfu = {
        "mfu_forward": hs_big["gflops_tunelens"] / peak,
        "mfu_forward_baseline": hs_big["gflops_baseline"] / peak,
        "mfu_forward_prototype": hs_big["gflops_prototype"] / peak,
        "mfu_forward_cached": hs_big["gflops_cached"] / peak,
        "mfu_forward_world": hs_world["gflops_tunelens"] / peak,
        "mfu_forward_world_baseline": hs_world["gflops_baseline"] / peak,
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
        f"{'MFU forward [' + big_label + ']':<40} tunelens {mfu['mfu_forward']:6.1%}  "
        f"baseline {mfu['mfu_forward_baseline']:6.1%}  target >= "
        f"{TARGETS['mfu_forward']:.0%}  {met}  (prototype packed rows "
        f"{mfu['mfu_forward_prototype']:.1%})",
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
            "hidden_states_ratio_world": hs_world["ratio"],
            "hidden_states_vs_cached_world": hs_world["vs_cached"],
            "hidden_states_vs_cached_world_spread": hs_world["vs_cached_spread"],
            "hidden_states_vs_cached_world_cpu": hs_world["vs_cached_cpu"],
            "hidden_states_ratio_prototype": hs_big["prototype_ratio"],
            "hidden_states_ratio_prototype_world": hs_world["prototype_ratio"],
            "per_set_tuning_ratio": sets_world["ratio"],
            "per_set_tuning_ratio_20m": sets_big["ratio"],
            "per_set_tuning_ratio_prototype": sets_world["prototype_ratio"],
            "per_set_tuning_ratio_prototype_20m": sets_big["prototype_ratio"],
            "sft_tokens_ratio": sft_world["ratio"],
            "sft_tokens_ratio_20m": sft_big["ratio"],
            "sft_tokens_ratio_vs_trl_train_runtime": sft_world["ratio_vs_trl_train_runtime"],
            **mfu,
            "targets": TARGETS,
            "hidden_states": {"20m": hs_big, "world": hs_world},
            "per_set_tuning": {"world": sets_world, "20m": sets_big},
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
