"""End to end: a default convergence cell through tunelens against a researcher's script,
and `tunelens plan`'s predicted time against measured runs.

    .venv/bin/python bench/e2e.py [--repeats 3] [--quick] [--plan-error] [--threads N]

**e2e_convergence_cell_ratio.** One cell of the default spec's convergence
section (world model, world:heldout, k = 8, 30 (set, anchor) pairs, seed 0, no
control; LoRA r 8 / alpha 16 on q and v, lr 0.01, 10 epochs of batch 8;
activation patching on, as for the world model by default) run by
``ConvergenceExperiment.run_cell`` with a :class:`~tunelens.api.RunContext`
(the code the cell loop calls), against :func:`researcher_cell`: the script a
researcher writes for the same cell with plain PEFT and transformers -- per
prompt one ``model(..., output_hidden_states=True)`` for the anchor and ICL
states and next-token logits, one ``model.generate(max_new_tokens=8)`` for each
prediction; per demonstration set ``get_peft_model`` + an AdamW loop (same
steps, batch, lr, clipping), the tuned anchor's forward and generate,
``unload()``; patching with a forward hook per layer and prompt. Same model
object, same prompts (rendered by tunelens), same thread count; the model is
loaded once, outside the timing, for both. The sides run interleaved (A, B, A,
B, ...) after a warm-up of each; the ratio is script / tunelens per round,
median and spread over the rounds, in wall and CPU time, with the load average.
The untuned predictions must agree (checked); the tuned ones differ where the
seeded initialisation and data order differ (the agreement is reported).

**plan_error** (``--plan-error``, slow: it runs three studies). For the
default spec and the two example specs as CI runs them (tiny random stand-ins
of the same families, the shared SuperNI subset, ``--limit 2``,
``--allow-missing-tasks``; see tests/integration/test_example_specs.py):
``tunelens plan --gpu cpu --json``, then ``tunelens run`` timed in a child
process (wall and user + system CPU); ``plan_error`` is the largest
``|plan - measured| / measured`` over the three, against wall time and against
CPU time (the wall time of an idle machine for these one-thread runs).

The last stdout line is one JSON object (bench/run.py adds it to its own).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SPECS = ("duan2023_llama2_7b_convergence", "kung2023_t5_large_audit")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the cell


def default_convergence_cell(quick: bool = False) -> Any:
    """The first cell of the default spec's convergence section (seed 0, no control)."""
    from tunelens.api import StudyInputs, get_experiments
    from tunelens.runs.study import plan_cells
    from tunelens.spec import default_spec

    spec = default_spec()
    if quick:
        section = spec.convergence.model_copy(update={"n_pairs": 4, "seeds": [0]})
        spec = spec.model_copy(update={"convergence": section, "audit": None})
    experiments = get_experiments()
    planned = plan_cells(spec, {"convergence": experiments["convergence"]}, StudyInputs())
    (_, _, cells), *_ = planned
    return next(c for c in cells if c.params["control"] == "none" and c.seed == 0)


def cell_prompts(cell: Any, tokenizer: Any) -> dict[str, Any]:
    """The cell's anchor and ICL prompts, tuning sets and owners, rendered as the cell does."""
    import random

    from tunelens.prompts import PromptStyle, render_prompt, render_target
    from tunelens.tasks.sampling import sample_demo_sets
    from tunelens.tasks.variants import flip_labels, output_space

    p = cell.params
    sets = sample_demo_sets(
        cell.data["tasks"],
        n_pairs=p["n_pairs"],
        anchors_per_set=p["anchors_per_set"],
        k=p["k"],
        relevance=p["relevance"],
        seed=cell.seed,
        k_max=p.get("k_max"),
    )
    rng = random.Random(f"corrupt|{cell.seed}|{p['flip_fraction']}|{p['control']}")
    style = PromptStyle(template=p["template"], definition=p["definition"], n_positive=0)
    anchors, icl, owners, tuning_sets = [], [], [], []
    for j, demo_set in enumerate(sets):
        demos = flip_labels(demo_set.demos, output_space(demo_set.task), p["flip_fraction"], rng)
        tuning_sets.append(
            [
                (
                    render_prompt(demo_set.task, d.input, [], style, tokenizer),
                    render_target(d.output),
                )
                for d in demos
            ]
        )
        for anchor in demo_set.anchors:
            anchors.append(render_prompt(demo_set.task, anchor.input, [], style, tokenizer))
            icl.append(render_prompt(demo_set.task, anchor.input, demos, style, tokenizer))
            owners.append(j)
    n = p["n_pairs"]
    return {
        "anchors": anchors[:n],
        "icl": icl[:n],
        "owners": owners[:n],
        "sets": tuning_sets,
    }


def researcher_cell(loaded: Any, data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The same cell as a researcher writes it: plain transformers + PEFT, one prompt at a time."""
    import random

    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer = loaded.model, loaded.tokenizer
    tuning = params["tuning"]
    max_new = int(params.get("max_new_tokens", 8))

    def read(m: Any, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(prompt, return_tensors="pt")
        out = m(**batch, output_hidden_states=True)
        return torch.stack([h[0, -1] for h in out.hidden_states]), out.logits[0, -1]

    def generate(m: Any, prompt: str) -> str:
        batch = tokenizer(prompt, return_tensors="pt")
        out = m.generate(
            **batch, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        text = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return text.split("\n", 1)[0].strip()

    anchors, icl = data["anchors"], data["icl"]
    model.eval()
    with torch.no_grad():
        anchor_reads = [read(model, p) for p in anchors]
        icl_reads = [read(model, p) for p in icl]
        pred_anchor = [generate(model, p) for p in anchors]
        pred_icl = [generate(model, p) for p in icl]
    h_it: list[Any] = [None] * len(anchors)
    pred_it: list[str] = [""] * len(anchors)
    eos = tokenizer.eos_token_id
    for j, pairs in enumerate(data["sets"]):
        rows = [i for i, o in enumerate(data["owners"]) if o == j]
        if not rows:
            continue
        torch.manual_seed(j)
        config = LoraConfig(
            r=tuning["lora_r"],
            lora_alpha=tuning["lora_alpha"],
            lora_dropout=0.0,
            target_modules=list(tuning.get("target_modules") or ["q_proj", "v_proj"]),
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        params_ = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params_, lr=tuning["learning_rate"], weight_decay=0.0)
        peft_model.train()
        order = list(range(len(pairs)))
        rng = random.Random(j)
        for _ in range(tuning["epochs"]):
            rng.shuffle(order)
            for start in range(0, len(order), tuning["batch_size"]):
                chunk = [pairs[i] for i in order[start : start + tuning["batch_size"]]]
                prompt_ids = [tokenizer(p)["input_ids"] for p, _ in chunk]
                target_ids = [
                    tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for _, t in chunk
                ]
                width = max(len(a) + len(b) for a, b in zip(prompt_ids, target_ids, strict=True))
                ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
                labels = torch.full((len(chunk), width), -100)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, (a, b) in enumerate(zip(prompt_ids, target_ids, strict=True)):
                    ids[r, : len(a) + len(b)] = torch.tensor(a + b)
                    labels[r, len(a) : len(a) + len(b)] = torch.tensor(b)
                    mask[r, : len(a) + len(b)] = 1
                loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params_, 1.0)
                optimizer.step()
                optimizer.zero_grad()
        peft_model.eval()
        with torch.no_grad():
            for i in rows:
                h_it[i] = read(peft_model, anchors[i])
                pred_it[i] = generate(peft_model, anchors[i])
        model = peft_model.unload()
        model.eval()
    patched: dict[str, list[list[torch.Tensor]]] = {}
    if params.get("patching"):
        layers = model.model.layers
        sources = {"icl": icl_reads, "it": h_it}
        for name, reads in sources.items():
            rows_out = []
            for layer in range(len(layers) + 1):
                logits = []
                for i, prompt in enumerate(anchors):
                    state = reads[i][0][layer]

                    def replace(
                        module: Any, args: Any, output: Any, state: torch.Tensor = state
                    ) -> Any:
                        hidden = output[0] if isinstance(output, tuple) else output
                        hidden = hidden.clone()
                        hidden[0, -1] = state
                        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

                    target = model.model.embed_tokens if layer == 0 else layers[layer - 1]
                    handle = target.register_forward_hook(replace)
                    try:
                        with torch.no_grad():
                            batch = tokenizer(prompt, return_tensors="pt")
                            logits.append(model(**batch).logits[0, -1])
                    finally:
                        handle.remove()
                rows_out.append(logits)
            patched[name] = rows_out
    stack = lambda reads: np.stack([r[0].numpy() for r in reads])  # noqa: E731
    h_a, h_i, h_t = stack(anchor_reads), stack(icl_reads), stack(h_it)

    def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        num = (x * y).sum(-1)
        return num / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))

    return {
        "predictions": {"anchor": pred_anchor, "icl": pred_icl, "it": pred_it},
        "cos": {
            "icl_it": cosines(h_i, h_t).mean(0).tolist(),
            "anchor_icl": cosines(h_a, h_i).mean(0).tolist(),
            "anchor_it": cosines(h_a, h_t).mean(0).tolist(),
        },
        "patched_layers": len(next(iter(patched.values()), [])),
    }


def paired(runs: dict[str, list[tuple[float, float]]], base: str, ours: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for which, column in (("wall", 0), ("cpu", 1)):
        ratios = [b[column] / o[column] for b, o in zip(runs[base], runs[ours], strict=True)]
        out[which] = statistics.median(ratios)
        out[f"{which}_spread"] = [min(ratios), max(ratios)]
        out[f"{which}_rounds"] = ratios
    return out


def bench_convergence_cell(repeats: int = 3, quick: bool = False) -> dict[str, Any]:
    """``e2e_convergence_cell_ratio``: the researcher's script over tunelens's cell, per round."""
    import torch

    from tunelens.api import RunContext, get_experiments
    from tunelens.models.loading import load_model

    cell = default_convergence_cell(quick)
    loaded = load_model("world")
    experiment = get_experiments()["convergence"]
    context = RunContext(load_model=lambda *args, **kwargs: loaded)
    data = cell_prompts(cell, loaded.tokenizer)

    fns: dict[str, Callable[[], Any]] = {
        "tunelens": lambda: experiment.run_cell(cell, context),
        "script": lambda: researcher_cell(loaded, data, cell.params),
    }
    results = {}
    for name, fn in fns.items():  # warm-up
        wall = time.perf_counter()
        results[name] = fn()
        log(f"  warm-up {name}: {time.perf_counter() - wall:.2f} s")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    loads = [os.getloadavg()[0]]
    for round_ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            wall_s, cpu_s = runs[name][-1]
            log(f"  round {round_ + 1} {name}: {wall_s:.2f} s ({cpu_s:.2f} CPU-s)")
        loads.append(os.getloadavg()[0])
    ours, theirs = results["tunelens"]["predictions"], results["script"]["predictions"]

    def agreement(key: str) -> float:
        return statistics.fmean(a == b for a, b in zip(ours[key], theirs[key], strict=True))

    untuned = min(agreement("anchor"), agreement("icl"))
    if untuned < 0.9:  # greedy ties may flip under padding; more means different work
        raise AssertionError(f"untuned predictions agree on only {untuned:.0%} of the prompts")
    import numpy as np

    cos_diff = float(
        np.max(
            np.abs(
                np.asarray(results["tunelens"]["cos"]["anchor_icl"]).mean(0)
                - np.asarray(results["script"]["cos"]["anchor_icl"])
            )
        )
    )
    if cos_diff > 1e-3:
        raise AssertionError(f"untuned anchor-ICL cosines differ by {cos_diff:.2g}")
    ratio = paired(runs, "script", "tunelens")
    return {
        "ratio": ratio["wall"],
        "ratio_spread": ratio["wall_spread"],
        "ratio_cpu": ratio["cpu"],
        "ratio_cpu_spread": ratio["cpu_spread"],
        "rounds": ratio,
        "tunelens_median_s": statistics.median(w for w, _ in runs["tunelens"]),
        "script_median_s": statistics.median(w for w, _ in runs["script"]),
        "tunelens_median_cpu_s": statistics.median(c for _, c in runs["tunelens"]),
        "script_median_cpu_s": statistics.median(c for _, c in runs["script"]),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "pairs": len(data["anchors"]),
        "sets": len(data["sets"]),
        "untuned_predictions_agree": untuned,
        "untuned_cosine_max_abs_diff": cos_diff,
        "tuned_predictions_agree": agreement("it"),
        "loadavg_1m": loads,
        "cell": cell.name,
    }


# ---------------------------------------------------------------- plan error


def example_spec_paths(folder: Path) -> list[Path]:
    """The example specs as CI runs them (stand-in models, the shared SuperNI subset)."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from tests.integration.test_example_specs import substitute

    out = []
    for name in EXAMPLE_SPECS:
        data = yaml.safe_load((ROOT / "examples" / "specs" / f"{name}.yaml").read_text())
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(substitute(data, folder), sort_keys=False))
        out.append(path)
    return out


def user_environment() -> dict[str, str]:
    """This environment without the thread counts bench/run.py pins for its own timings, so
    that a timed ``tunelens`` child runs under the CLI's thread policy, as a user's run does
    (and as ``tunelens plan`` assumes)."""
    pinned = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return {k: v for k, v in os.environ.items() if k not in pinned}


def timed_child(args: Sequence[str]) -> tuple[float, float]:
    """(wall seconds, user + system CPU seconds) of a child process that must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        list(args), capture_output=True, text=True, cwd=ROOT, env=user_environment()
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_plan_error(folder: Path | None = None) -> dict[str, Any]:
    """Plan vs measured wall and CPU time of the default spec and the two example specs."""
    folder = folder or Path(tempfile.mkdtemp(prefix="tunelens-plan-error-"))
    python = [sys.executable, "-m", "tunelens"]
    cases: list[tuple[str, list[str]]] = [("default", [])]
    for path in example_spec_paths(folder):
        cases.append((path.stem, [str(path), "--limit", "2", "--allow-missing-tasks"]))
    rows = {}
    for name, args in cases:
        planned = subprocess.run(
            [*python, "plan", *args, "--gpu", "cpu", "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=user_environment(),
        )
        if planned.returncode != 0:
            raise RuntimeError(f"tunelens plan {name} failed:\n{planned.stderr[-2000:]}")
        plan = json.loads(planned.stdout)
        load = os.getloadavg()[0]
        out = folder / f"run-{name}"
        wall, cpu = timed_child([*python, "run", *args, "--out", str(out), "--no-progress"])
        predicted = plan["total"]["seconds"]
        rows[name] = {
            "plan_s": predicted,
            "wall_s": wall,
            "cpu_s": cpu,
            "error_wall": (predicted - wall) / wall,
            "error_cpu": (predicted - cpu) / cpu,
            "cells": plan["total"]["cells"],
            "loadavg_1m_at_start": load,
        }
        log(
            f"plan {name}: predicted {predicted:.1f} s, measured {wall:.1f} s wall / {cpu:.1f} s "
            f"CPU ({rows[name]['error_wall']:+.0%} / {rows[name]['error_cpu']:+.0%}), "
            f"load {load:.1f}"
        )
    return {
        "plan_error": max(abs(r["error_wall"]) for r in rows.values()),
        "plan_error_cpu": max(abs(r["error_cpu"]) for r in rows.values()),
        "specs": rows,
    }


def print_cell_line(cell: dict[str, Any]) -> None:
    """The human-readable line of the end-to-end cell (stdout)."""
    low, high = cell["ratio_spread"]
    print(
        f"{'convergence cell, end to end':<40} script {cell['script_median_s']:8.3f} s  tunelens "
        f"{cell['tunelens_median_s']:8.3f} s  {cell['ratio']:6.2f}x [{low:.2f}-{high:.2f}] "
        f"(CPU {cell['ratio_cpu']:.2f}x)  load {cell['loadavg_1m'][0]:.1f}",
        flush=True,
    )


def print_plan_line(plan: dict[str, Any]) -> None:
    """The human-readable line of the plan's error (stdout)."""
    specs = "; ".join(
        f"{name} {r['plan_s']:.0f} s vs {r['wall_s']:.0f} s wall / {r['cpu_s']:.0f} s CPU"
        for name, r in plan["specs"].items()
    )
    print(
        f"{'plan error (3 specs)':<40} wall {plan['plan_error']:.0%}  CPU "
        f"{plan['plan_error_cpu']:.0%}  ({specs})",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 pairs (smoke test)")
    parser.add_argument("--plan-error", action="store_true", help="also run the three studies")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {}
    log("end to end: a default convergence cell ...")
    cell = bench_convergence_cell(args.repeats, args.quick)
    result["e2e_convergence_cell_ratio"] = cell["ratio"]
    result["e2e_convergence_cell_ratio_spread"] = cell["ratio_spread"]
    result["e2e_convergence_cell_ratio_cpu"] = cell["ratio_cpu"]
    result["e2e_convergence_cell"] = cell
    print_cell_line(cell)
    if args.plan_error:
        log("plan error: three studies ...")
        plan = bench_plan_error()
        result.update(plan)
        print_plan_line(plan)
    else:
        result["plan_error"] = math.nan  # opt-in: --plan-error
    print(json.dumps(result, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
