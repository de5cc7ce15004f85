"""Measure the cost constants of `tunelens plan` (tunelens.runs.costs.CPU_COSTS) on this machine.

    .venv/bin/python bench/plan_calibration.py [--quick]        # about 6 minutes on 2 cores
    .venv/bin/python bench/plan_calibration.py --cells [SPEC] [--limit N]

Every figure is CPU time (``time.process_time`` in this process, ``getrusage``
of a child process), the best of several repeats, on one torch thread (what
:mod:`tunelens.runs.threads` gives models under 100M parameters), so that a
machine shared with other jobs still gives an idle machine's figures: on one
thread the CPU seconds of a call are its wall seconds when it has the core.

Models: a tiny random Llama (2 layers, hidden 32, as the example-spec tests
stand in), the first embedded world model (`world-small`: 3 layers, hidden 96) and a random 6-layer
Llama (hidden 512, 19.6M parameters, bench/run.py's). Data: the embedded
world's *training* tasks (the plans it is checked against evaluate held-out
tasks).

1. Per-call costs from one-row calls (their FLOPs are negligible): a no-grad
   ``model(...)``; greedy ``generate`` with 2 and 10 forced new tokens (the
   difference / 8 is a decoding step, the rest the call); ``tune_on_pairs``,
   ``tune_many_sets`` and ``multitask_tune`` at two step counts (the slope is a
   step, the intercept the tuning run's set-up). Each is fitted as
   ``a + b * layers`` on the tiny and the world model; the 19.6M model's excess
   over that line on the forward call is weight streaming (its 78 MB of weights
   leave the cache), which gives the memory bandwidth.
2. FLOP efficiency per kind of token, per model, from realistic batches:
   ``capture_last_token_states`` of 96 ICL prompts (forward), ``generate_predictions``
   of 512 Tk-Instruct prompts with 4 new tokens (generate; early stopping of a
   model that answers is part of the figure), ``multitask_tune`` of 160 pairs
   (training) and ``tune_many_sets`` of 30 sets x 8 pairs (lockstep): FLOPs over
   (CPU seconds - the per-call costs the plan counts for them), as a share of the
   matmul peak (:func:`tunelens.runs.plan.measure_cpu_flops`).
3. Scoring cost per evaluated sample (``audit.score``), the random-init model
   build (world and 19.6M), the per-cell remainder of a tiny convergence cell
   and a tiny audit cell run by their experiments (measured minus everything
   the plan counts), and, in child processes, the start-up (interpreter and
   imports of `tunelens run`), a model load and `tunelens report` on a finished
   run.

The last line is one JSON object: every figure and ``cost_model``, the
constants as :class:`tunelens.runs.costs.CostModel` takes them.

``--cells [SPEC]`` instead runs every cell of SPEC (default: the embedded default
spec; ``--limit`` as on `tunelens run`, tasks allowed missing) through its
experiment's ``run_cell`` in this process and prints, per cell, the CPU seconds
next to the plan's estimate and its parts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

IMPORTS = (
    "import tunelens.cli, tunelens.commands.run, tunelens.runs.study, torch, transformers, "
    "peft, accelerate, tunelens.experiments.convergence, tunelens.experiments.audit, "
    "tunelens.report.html, tunelens.models.tuning"
)


def cpu(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Best CPU seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def child_cpu(args: list[str], repeats: int = 3) -> float:
    """Best user + system CPU seconds of a child process."""
    best = float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(args, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = min(best, used)
    return best


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` with a, b >= 0: a negative intercept gives the line
    through the origin, a negative slope the mean (noise, not a cost that falls with depth)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    if b < 0:
        return my, 0.0
    if a < 0:
        return 0.0, sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    return a, b


def build_models(quick: bool) -> list[tuple[str, Any]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelens.models.loading import load_model, load_model_from_objects

    # The figures in CPU_COSTS were fitted on the 3-layer model, now `world-small`.
    world = load_model("world-small")
    out = [("tiny-llama", None), ("world", world)]
    if not quick:
        out.append(("llama-19.6M", None))
    shapes = {"tiny-llama": (32, 64, 2, 4), "llama-19.6M": (512, 1408, 6, 8)}
    built = []
    for name, loaded in out:
        if loaded is None:
            hidden, inter, layers, heads = shapes[name]
            config = LlamaConfig(
                vocab_size=len(world.tokenizer),
                hidden_size=hidden,
                intermediate_size=inter,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=heads,
                max_position_embeddings=1024,
                bos_token_id=world.tokenizer.bos_token_id,
                eos_token_id=world.tokenizer.eos_token_id,
                pad_token_id=world.tokenizer.pad_token_id,
                tie_word_embeddings=False,
            )
            torch.manual_seed(0)
            model = LlamaForCausalLM(config).eval()
            loaded = load_model_from_objects(model, world.tokenizer, name=name)
        built.append((name, loaded))
    return built


def workloads() -> dict[str, Any]:
    """Prompts and pairs from the world's training tasks, rendered as the experiments do."""
    from tunelens.experiments.audit import eval_items, eval_prompts, training_pairs
    from tunelens.prompts import PromptStyle, render_prompt, render_target
    from tunelens.tasks.sampling import sample_demo_sets
    from tunelens.tasks.sets import load_task_set

    train = list(load_task_set("world:train"))
    style = PromptStyle(template="plain", definition=False, n_positive=0)
    sets = sample_demo_sets(train, n_pairs=96, anchors_per_set=1, k=8, relevance="same", seed=0)
    icl = [render_prompt(s.task, s.anchors[0].input, s.demos, style) for s in sets]
    set_pairs = [
        [(render_prompt(s.task, d.input, [], style), render_target(d.output)) for d in s.demos]
        for s in sets[:30]
    ]
    items = eval_items(train, 10)[:512]
    prompts = eval_prompts(items, 2, "tk", "definition_only")
    pairs = training_pairs(
        train,
        definition="original",
        examples="original",
        instances_per_task=3,
        n_positive=2,
        seed=0,
        template="tk",
    )[:160]
    return {"icl": icl, "sets": set_pairs, "items": items, "prompts": prompts, "pairs": pairs}


def overheads(loaded: Any, repeats: int) -> dict[str, float]:
    """Per-call costs from one-row calls."""
    import torch

    from tunelens.models.predict import greedy_config
    from tunelens.models.tuning import TuningConfig, multitask_tune, tune_many_sets, tune_on_pairs

    model, tokenizer = loaded.model, loaded.tokenizer
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    mask = torch.ones_like(ids)

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def generate(n: int) -> Callable[[], None]:
        config = greedy_config(model, tokenizer, n)
        config.update(min_new_tokens=n, eos_token_id=None)

        def run() -> None:
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

        return run

    pair = [("Input: sock\nOutput:", " left")]

    def per_set(epochs: int) -> Callable[[], None]:
        config = TuningConfig(epochs=epochs, batch_size=1, learning_rate=1e-3)
        return lambda: tune_on_pairs(loaded, pair, config).unload()

    def lockstep(epochs: int) -> Callable[[], None]:
        config = TuningConfig(epochs=epochs, batch_size=1, learning_rate=1e-3)
        return lambda: tune_many_sets(loaded, [pair], config)

    many = pair * 40

    def multitask(steps: int) -> Callable[[], None]:
        config = TuningConfig(epochs=1, batch_size=1, max_steps=steps, learning_rate=1e-3)
        return lambda: multitask_tune(loaded, many, config, progress=False).unload()

    few = max(2, repeats // 2)
    out = {"forward_call": cpu(forward, repeats * 4)}
    g2, g10 = cpu(generate(2), repeats), cpu(generate(10), repeats)
    out["decode_step"] = (g10 - g2) / 8
    out["generate_call"] = max(0.0, g2 - 2 * out["decode_step"])
    for name, make, low, high in (
        ("optimizer_step", per_set, 5, 25),
        ("lockstep_step", lockstep, 5, 25),
        ("multitask_step", multitask, 4, 24),
    ):
        t_low, t_high = cpu(make(low), few), cpu(make(high), few)
        step = (t_high - t_low) / (high - low)
        out[name] = step
        run = {"optimizer_step": "tuning_run", "lockstep_step": "lockstep_run"}.get(
            name, "multitask_run"
        )
        out[run] = max(0.0, t_low - low * step)
    return out


def attention_cost(model: Any, lengths: tuple[int, int, int], repeats: int) -> float:
    """Seconds per attention score element (layer x head x query x key) from one-row
    forwards of three lengths: the quadratic term of a + b L + e L^2. An encoder-decoder
    runs its encoder alone."""
    import torch

    config = model.config
    encoder = getattr(model, "encoder", None) if config.is_encoder_decoder else None
    layers = config.num_layers if encoder is not None else config.num_hidden_layers
    heads = config.num_heads if encoder is not None else config.num_attention_heads
    elements = layers * heads

    def forward(n: int) -> Callable[[], None]:
        ids = torch.randint(4, 300, (1, n))

        def run() -> None:
            with torch.no_grad():
                if encoder is not None:
                    encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
                else:
                    model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)

        return run

    (l0, l1, l2) = lengths
    t0, t1, t2 = (cpu(forward(n), repeats) for n in lengths)
    # divided differences: the second one is e
    d01 = (t1 - t0) / (l1 - l0)
    d12 = (t2 - t1) / (l2 - l1)
    e = (d12 - d01) / (l2 - l0)
    return max(0.0, e / elements)


def training_attention_cost(loaded: Any, widths: tuple[int, int, int], repeats: int) -> float:
    """Seconds per score element of a training micro-batch (forward + backward), from
    ``multitask_tune`` of 16 one-word-repeated prompts at three widths, batch 8, 2 steps;
    an encoder-decoder is tuned fully, a causal model with LoRA."""
    from tunelens.models.tuning import TuningConfig, multitask_tune

    config = loaded.model.config
    seq2seq = bool(config.is_encoder_decoder)
    layers = config.num_layers if seq2seq else config.num_hidden_layers
    heads = config.num_heads if seq2seq else config.num_attention_heads
    tuning = TuningConfig(
        epochs=1, batch_size=8, learning_rate=1e-3, method="full" if seq2seq else "lora"
    )
    times, lengths = [], []
    for width in widths:
        prompt = "Input: " + " ".join(["sock"] * width) + "\nOutput:"
        lengths.append(len(loaded.tokenizer(prompt)["input_ids"]))
        pairs = [(prompt, " left")] * 16
        times.append(
            cpu(
                lambda pairs=pairs: multitask_tune(loaded, pairs, tuning, progress=False).unload(),
                repeats,
            )
        )
    (l0, l1, l2), (t0, t1, t2) = lengths, times
    e = ((t2 - t1) / (l2 - l1) - (t1 - t0) / (l1 - l0)) / (l2 - l0)
    return max(0.0, e / (2 * 8 * layers * heads))  # 2 micro-batches of 8 rows


def efficiencies(
    loaded: Any, data: dict[str, Any], peak: float, costs: Any, repeats: int
) -> dict[str, Any]:
    """FLOP efficiency per kind of token from realistic batches (net of counted calls)."""
    from tunelens.models.hidden_states import capture_last_token_states
    from tunelens.models.predict import generate_predictions
    from tunelens.models.tuning import TuningConfig, multitask_tune, tune_many_sets
    from tunelens.runs.costs import (
        TokenCounter,
        Work,
        cell_seconds,
        forward_work,
        generation_work,
        training_attention,
    )
    from tunelens.runs.plan import ModelSize, model_facts, sizes_from_model_object

    facts = model_facts(ModelSize("m", *sizes_from_model_object(loaded.model), source=""))
    counter = TokenCounter(loaded.tokenizer)
    few = max(1, repeats // 2)
    runs: dict[str, tuple[Callable[[], Any], Work]] = {}
    icl = data["icl"]
    runs["forward"] = (
        lambda: capture_last_token_states(loaded, icl),
        forward_work(counter.lengths(icl)),
    )
    prompts = data["prompts"]
    runs["generate"] = (
        lambda: generate_predictions(loaded, prompts, max_new_tokens=4),
        generation_work(counter.lengths(prompts), 4),
    )
    pairs = data["pairs"]
    mt = TuningConfig(epochs=1, batch_size=16, learning_rate=1e-3)
    mt_lengths = sorted(n + 1 for n in counter.lengths([a + b for a, b in pairs]))
    width = mt_lengths[int(0.9 * (len(mt_lengths) - 1))]
    runs["training"] = (
        lambda: multitask_tune(loaded, pairs, mt, progress=False).unload(),
        Work(
            training_tokens=sum(mt_lengths),
            multitask_steps=10,
            multitask_runs=1,
            training_attention=10 * 16 * width**2,
        ),
    )
    sets = data["sets"]
    lock = TuningConfig(epochs=10, batch_size=8, learning_rate=1e-3)
    set_lengths = [[n + 1 for n in counter.lengths([a + b for a, b in s])] for s in sets]
    runs["lockstep"] = (
        lambda: tune_many_sets(loaded, sets, lock),
        Work(
            lockstep_tokens=10 * sum(sum(rows) for rows in set_lengths),
            lockstep_steps=10,
            lockstep_runs=1,
            training_attention=sum(training_attention(rows, 8, 10) for rows in set_lengths),
        ),
    )
    out: dict[str, Any] = {}
    for kind, (fn, work) in runs.items():
        seconds = cpu(fn, few)
        counted = cell_seconds("none", work, facts, costs, peak_flops=peak, efficiency=1.0)
        flops = counted.compute * peak  # efficiency 1: compute seconds x peak = FLOPs
        net = max(seconds - counted.overhead - counted.weights, 1e-6)
        out[kind] = {
            "seconds": seconds,
            "counted_overhead_s": counted.overhead + counted.weights,
            "flops": flops,
            "efficiency": flops / net / peak,
        }
    return out


def per_sample_and_builds(models: list[tuple[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    from tunelens.experiments.audit import score
    from tunelens.models.controls import random_init_like

    items = data["items"]
    predictions = [inst.outputs[0] if i % 2 else "no" for i, (_, inst) in enumerate(items)]
    score(items, predictions)  # first call: the ROUGE scorer's own set-up
    sample = cpu(lambda: score(items, predictions, data["prompts"]), 3) / len(items)
    builds = {}
    for name, loaded in models:
        if name == "tiny-llama":
            continue
        params = sum(p.numel() for p in loaded.model.parameters())
        builds[name] = (params, cpu(lambda loaded=loaded: random_init_like(loaded, 0), 3))
    (p0, t0), (p1, t1) = sorted(builds.values())[0], sorted(builds.values())[-1]
    per_param = (t1 - t0) / (p1 - p0) if p1 > p0 else 0.0
    return {
        "sample_s": sample,
        "model_build_s": max(0.0, t0 - p0 * per_param),
        "init_s_per_parameter": per_param,
        "builds": builds,
    }


def cell_remainders(costs: Any) -> dict[str, float]:
    """Tiny convergence and audit cells run by their experiments, minus what the plan counts."""
    from tunelens.api import StudyInputs, get_experiments
    from tunelens.runs.costs import cell_seconds
    from tunelens.runs.executors import ModelCache, _context
    from tunelens.runs.plan import (
        _counter,
        estimate_work,
        measure_cpu_flops,
        model_facts,
        model_size,
    )
    from tunelens.runs.study import plan_cells
    from tunelens.spec import Spec

    spec = Spec.model_validate(
        {
            "convergence": {
                "tasks": "world:train",
                "n_pairs": 2,
                "seeds": [0, 1, 2],
                "k": [2],
                "controls": ["none"],
                "tuning": {"epochs": 1},
            },
            "audit": {
                "train": "world:train",
                "test": "world:train",
                "definitions": ["original"],
                "examples": ["original"],
                "instances_per_task": [1],
                "eval_instances_per_task": 1,
                "eval_encodings": ["definition_only"],
                "max_new_tokens": 2,
                "tuning": {"epochs": 1, "batch_size": 16},
            },
        }
    )
    experiments = get_experiments()
    planned = plan_cells(spec, experiments, StudyInputs())
    cache = ModelCache()
    size = model_size("world")
    facts = model_facts(size)
    peak = measure_cpu_flops(1)
    counters: dict[str, Any] = {}
    out: dict[str, list[float]] = {}
    for name, _section, cells in planned:
        for cell in cells:
            if name == "audit" and cell.params.get("baseline") not in (None, "untuned"):
                continue
            context = _context(cell, cache, None)
            experiments[name].run_cell(cell, context)  # warm-up (the model loads once)
            start = time.process_time()
            experiments[name].run_cell(cell, context)
            used = time.process_time() - start
            work = estimate_work(cell, _counter("world", counters), size)
            counted = cell_seconds(
                name, work, facts, costs, peak_flops=peak
            ).total - costs.cell_s.get(name, 0.0)
            out.setdefault(name, []).append(used - counted)
    return {name: max(0.0, min(values)) for name, values in out.items()}


SMALL_SPEC = """\
convergence:
  tasks: world:train
  n_pairs: 4
  seeds: [0, 1]
  tuning: {epochs: 1}
audit:
  train: world:train
  test: world:train
  eval_instances_per_task: 2
  instances_per_task: [1]
  definitions: [original, none]
  examples: [original]
  tuning: {epochs: 1}
"""


def fixed_costs(costs: Any, quick: bool) -> dict[str, float]:
    """A run's fixed costs, in child processes: a model load, the study set-up, the report
    of a small finished run, and the start-up as that run's CPU time less its cells (as the
    plan prices them), set-up, load and report."""
    from dataclasses import replace

    from tunelens.runs.plan import plan_study
    from tunelens.spec import load_spec

    python = sys.executable
    tunelens = [python, "-m", "tunelens"]
    imports = child_cpu([python, "-c", IMPORTS])
    load_world = child_cpu(
        [
            python,
            "-c",
            IMPORTS + "; from tunelens.models.loading import load_model; load_model('world')",
        ]
    )
    out = {"load_s": max(0.0, load_world - imports)}
    bare = child_cpu(
        [
            python,
            "-c",
            "from tunelens.spec import default_spec; from tunelens.api import StudyInputs, "
            "get_experiments; from tunelens.runs.study import plan_cells",
        ]
    )
    setup = child_cpu(
        [
            python,
            "-c",
            "from tunelens.spec import default_spec; from tunelens.api import StudyInputs, "
            "get_experiments; from tunelens.runs.study import plan_cells; "
            "plan_cells(default_spec(), get_experiments(), StudyInputs())",
        ]
    )
    out["setup_s"] = max(0.0, setup - bare)
    tmp = Path(tempfile.mkdtemp(prefix="tunelens-calibration-"))
    try:
        spec_path = tmp / "spec.yaml"
        spec_path.write_text(SMALL_SPEC)
        run_dir = tmp / "run"
        run = child_cpu(
            [*tunelens, "run", str(spec_path), "--out", str(run_dir), "--no-progress"], 1
        )
        report = child_cpu([*tunelens, "report", str(run_dir)], 2)
        help_ = child_cpu([*tunelens, "--help"], 2)
        # aggregation and report per convergence condition: resumed runs of 8 and 2 conditions
        reports = {}
        for n, sweep in (
            (8, "  flip_fraction: [0.0, 1.0]\n  definition: [false, true]\n"),
            (2, ""),
        ):
            conditions_spec = tmp / f"conditions-{n}.yaml"
            conditions_spec.write_text(
                "convergence:\n  tasks: world:train\n  n_pairs: 2\n  seeds: [0]\n"
                "  k: [1, 2]\n  controls: [none]\n  tuning: {epochs: 1}\n" + sweep
            )
            conditions_dir = tmp / f"conditions-{n}"
            subprocess.run(
                [
                    *tunelens,
                    "run",
                    str(conditions_spec),
                    "--out",
                    str(conditions_dir),
                    "--no-progress",
                ],
                check=True,
                capture_output=True,
            )
            # the same command again: every cell is found, so this is aggregation + report
            reports[n] = child_cpu(
                [
                    *tunelens,
                    "run",
                    str(conditions_spec),
                    "--out",
                    str(conditions_dir),
                    "--no-progress",
                ],
                2,
            )
        per_condition = max(0.0, (reports[8] - reports[2]) / 6)
        out["report_condition_s"] = per_condition
        # the small spec has 2 convergence conditions (controls none and random_init)
        out["finish_s"] = max(0.0, report - help_ - 2 * per_condition)
        priced = replace(
            costs,
            startup_s=0.0,
            finish_s=out["finish_s"],
            **{k: out[k] for k in ("load_s", "setup_s", "report_condition_s")},
        )
        plan = plan_study(load_spec(spec_path), gpu="cpu", costs=priced)
        out["startup_s"] = max(0.0, run - plan.seconds)
        out["small_run_cpu_s"] = run
        if not quick:
            code = (
                "import torch; from transformers import LlamaConfig, LlamaForCausalLM; "
                "from tunelens.models.loading import load_model; "
                "w = load_model('world'); "
                "m = LlamaForCausalLM(LlamaConfig(vocab_size=len(w.tokenizer), hidden_size=512, "
                "intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8, "
                "num_key_value_heads=8, max_position_embeddings=1024)); "
                f"m.save_pretrained({str(tmp / 'm')!r}); "
                f"w.tokenizer.save_pretrained({str(tmp / 'm')!r})"
            )
            subprocess.run([python, "-c", code], check=True, capture_output=True)
            size = sum(f.stat().st_size for f in (tmp / "m").glob("*.safetensors"))
            load_big = child_cpu(
                [
                    python,
                    "-c",
                    IMPORTS + "; from tunelens.models.loading import load_model; "
                    f"load_model({str(tmp / 'm')!r})",
                ]
            )
            out["load_bytes_per_s"] = size / max(1e-3, load_big - load_world)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def calibrate(quick: bool) -> dict[str, Any]:
    import torch

    from tunelens.runs.costs import CPU_COSTS
    from tunelens.runs.plan import measure_cpu_flops

    torch.set_num_threads(1)
    repeats = 2 if quick else 5
    peak = measure_cpu_flops(1)
    print(f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (1 thread, CPU time)", flush=True)
    figures: dict[str, Any] = {"peak_flops": peak, "loadavg_start": list(os.getloadavg())}
    models = build_models(quick)
    data = workloads()
    per: dict[str, dict[str, float]] = {}
    for name, loaded in models:
        per[name] = overheads(loaded, repeats)
        per[name]["layers"] = float(loaded.model.config.num_hidden_layers)
        print(name, json.dumps({k: round(v, 5) for k, v in per[name].items()}), flush=True)
    figures["overheads"] = per
    small = [per[n] for n in ("tiny-llama", "world")]
    fits = {}
    for key in (
        "forward_call",
        "generate_call",
        "decode_step",
        "optimizer_step",
        "lockstep_step",
        "multitask_step",
        "tuning_run",
        "lockstep_run",
        "multitask_run",
    ):
        fits[key] = fit_line([m["layers"] for m in small], [m[key] for m in small])
    from transformers import T5Config, T5ForConditionalGeneration

    attention = attention_cost(dict(models)["tiny-llama"].model, (128, 512, 1024), repeats)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(
        T5Config(
            d_model=32,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            d_kv=8,
            d_ff=64,
            vocab_size=800,
        )
    ).eval()
    relative = attention_cost(t5, (128, 512, 1024), repeats)
    figures["attention_s"], figures["attention_relative_s"] = attention, relative
    from tunelens.models.loading import load_model_from_objects

    tokenizer = dict(models)["world"].tokenizer
    torch.manual_seed(0)
    t5_tuned = T5ForConditionalGeneration(
        T5Config(
            d_model=32,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            d_kv=8,
            d_ff=64,
            vocab_size=len(tokenizer),
            decoder_start_token_id=tokenizer.pad_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    trained = training_attention_cost(dict(models)["tiny-llama"], (100, 300, 600), repeats)
    trained_relative = training_attention_cost(
        load_model_from_objects(t5_tuned, tokenizer, name="t5"), (100, 300, 600), repeats
    )
    figures["training_attention_s"] = trained
    figures["training_attention_relative_s"] = trained_relative
    print(
        f"attention: {attention:.3g} s per score element (tiny Llama), {relative:.3g} (tiny "
        f"T5, relative position bias); training {trained:.3g} / {trained_relative:.3g}",
        flush=True,
    )
    bandwidth = CPU_COSTS.memory_bytes_per_s
    if "llama-19.6M" in per:
        big = dict(models)["llama-19.6M"]
        weight_bytes = 4 * sum(p.numel() for p in big.model.parameters())
        a, b = fits["forward_call"]
        excess = per["llama-19.6M"]["forward_call"] - (a + b * 6)
        bandwidth = weight_bytes / max(excess, 1e-6)
    figures["fits"] = fits
    figures["memory_bytes_per_s"] = bandwidth
    from dataclasses import replace

    costs = replace(
        CPU_COSTS,
        forward_call=fits["forward_call"],
        generate_call=fits["generate_call"],
        decode_step=fits["decode_step"],
        optimizer_step=fits["optimizer_step"],
        lockstep_step=fits["lockstep_step"],
        multitask_step=fits["multitask_step"],
        tuning_run=fits["tuning_run"],
        lockstep_run=fits["lockstep_run"],
        multitask_run=fits["multitask_run"],
        memory_bytes_per_s=bandwidth,
        attention_s=attention,
        attention_relative_s=relative,
        training_attention_s=trained,
        training_attention_relative_s=trained_relative,
    )
    effs: dict[str, dict[str, Any]] = {}
    for name, loaded in models:
        effs[name] = efficiencies(loaded, data, peak, costs, repeats)
        print(
            name,
            "efficiency",
            json.dumps({k: round(v["efficiency"], 3) for k, v in effs[name].items()}),
            flush=True,
        )
    figures["efficiencies"] = effs
    hidden = {name: int(loaded.model.config.hidden_size) for name, loaded in models}
    curves = {
        kind: tuple(
            sorted((hidden[n], round(min(1.0, effs[n][kind]["efficiency"]), 3)) for n in effs)
        )
        for kind in ("forward", "generate", "training", "lockstep")
    }
    extra = per_sample_and_builds(models, data)
    figures.update(extra)
    costs = replace(
        costs,
        efficiency=curves,
        sample_s=extra["sample_s"],
        model_build_s=extra["model_build_s"],
        init_s_per_parameter=extra["init_s_per_parameter"],
    )
    remainders = cell_remainders(costs)
    figures["cell_s"] = remainders
    costs = replace(costs, cell_s=remainders)
    fixed = fixed_costs(costs, quick)
    figures["fixed"] = fixed
    costs = replace(costs, **{k: v for k, v in fixed.items() if k != "small_run_cpu_s"})
    figures["cost_model"] = costs.to_json()
    figures["loadavg_end"] = list(os.getloadavg())
    return figures


def compare_cells(spec_path: str | None, limit: int | None) -> None:
    import torch

    from tunelens.api import StudyInputs, get_experiments
    from tunelens.commands.run import with_run_options
    from tunelens.runs.costs import CPU_COSTS, cell_seconds
    from tunelens.runs.executors import ModelCache, _context
    from tunelens.runs.plan import (
        _cell_model,
        _counter,
        _model_kind,
        estimate_work,
        measure_cpu_flops,
        model_facts,
        model_size,
    )
    from tunelens.runs.study import plan_cells
    from tunelens.runs.threads import threads_for
    from tunelens.spec import default_spec, load_spec

    spec = default_spec() if spec_path is None else load_spec(Path(spec_path))
    spec = with_run_options(spec, limit, spec_path is not None)
    experiments = get_experiments()
    planned = plan_cells(spec, experiments, StudyInputs(allow_missing=spec.allow_missing_tasks))
    cache = ModelCache()
    counters: dict[str, Any] = {}
    total = predicted = 0.0
    for name, _section, cells in planned:
        for cell in cells:
            model = _cell_model(cell)
            size = model_size(model)
            threads = threads_for(size.total)
            peak = measure_cpu_flops(threads)
            work = estimate_work(cell, _counter(model, counters), size, _model_kind(model))
            facts = model_facts(size)
            estimate = cell_seconds(name, work, facts, CPU_COSTS, peak_flops=peak)
            context = _context(cell, cache, None)
            torch.set_num_threads(threads)
            start = time.process_time()
            experiments[name].run_cell(cell, context)
            used = (time.process_time() - start) / threads
            total += used
            predicted += estimate.total
            parts = " ".join(f"{k}={v:.2f}" for k, v in estimate.parts.items() if v >= 0.005)
            print(
                f"{name:12} {cell.name[:58]:58} cpu {used:7.3f} plan {estimate.total:7.3f}  "
                f"{parts}",
                flush=True,
            )
    print(f"all cells: cpu {total:.2f} s, plan {predicted:.2f} s ({predicted / total - 1:+.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two models, fewer repeats")
    parser.add_argument("--cells", nargs="?", const="", default=None, metavar="SPEC")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    if args.cells is not None:
        compare_cells(args.cells or None, args.limit)
        return 0
    figures = calibrate(args.quick)
    print(json.dumps(figures, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
