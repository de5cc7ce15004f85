"""How the library's costs scale: hidden-state capture and per-set tuning, through its own API.

    .venv/bin/python bench/scaling.py [--threads 1] [--quick] [--repeats 2]

1. Capture (``tunelens.models.hidden_states.capture_with_shared_prefix``, the
   shared-prefix path every experiment reaches) of the last-token states of
   ``anchors`` suffixes after one demonstration prefix of ``prefix`` tokens,
   anchors in (10, 30, 100) at a 300-token prefix and prefixes of (100, 300,
   1,000) tokens at 30 anchors, on a random 6-layer Llama (hidden 512, 19.6M
   parameters, 1,024 positions, the world tokenizer; bench/run.py's model).
   The prefix is world demonstrations (``Input: ... Output: ...``) cut to the
   token count; each suffix is one query (``Input: ... Output:``).
2. Per-set LoRA tuning (``tunelens.models.tuning.tune_many_sets``, as a
   convergence cell calls it) on the embedded world model: sets in (10, 30,
   90) at k = 8 and k in (4, 8, 16) at 30 sets, each set k demonstrations of
   one world training task, 10 epochs of batch 8, r 8 on q and v.

Each point is the best CPU time (``time.process_time``) of ``--repeats`` runs
after a warm-up, with its wall time and the load average; the table on stdout
is Markdown, the last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")


def best(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(best CPU seconds, wall seconds of that run) over ``repeats`` after a warm-up."""
    fn()
    cpu, wall = float("inf"), float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        used = time.process_time() - c
        if used < cpu:
            cpu, wall = used, time.perf_counter() - w
    return cpu, wall


def capture_model(quick: bool) -> Any:
    """The world model (for its tokenizer) and bench/run.py's seeded random Llama."""
    from run import Sizes, random_llama
    from tunelens.models.loading import load_model

    world = load_model("world")
    sizes = Sizes(big_hidden=64, big_intermediate=128, big_layers=2) if quick else Sizes()
    return world, random_llama(world.tokenizer, sizes)


def prefix_and_queries(tokenizer: Any, prefix_tokens: int, anchors: int) -> tuple[str, list[str]]:
    """A demonstration prefix of about ``prefix_tokens`` tokens and ``anchors`` queries."""
    from tunelens.tasks.sets import load_task_set

    instances = [i for t in load_task_set("world:train") for i in t.instances]
    lines, n = [], 0
    for inst in instances:
        line = f"Input: {inst.input}\nOutput: {inst.outputs[0]}\n\n"
        step = len(tokenizer(line, add_special_tokens=False)["input_ids"])
        if n + step > prefix_tokens - 1:
            break
        lines.append(line)
        n += step
    queries = [f"Input: {i.input}\nOutput:" for i in instances[-anchors:]]
    return "".join(lines), queries


def capture_rows(loaded: Any, repeats: int, quick: bool) -> list[dict[str, Any]]:
    from tunelens.models.hidden_states import capture_with_shared_prefix

    points = [(10, 300), (30, 300), (100, 300), (30, 100), (30, 1000)]
    if quick:
        points = [(4, 50), (8, 50)]
    rows = []
    for anchors, prefix_tokens in points:
        prefix, queries = prefix_and_queries(loaded.tokenizer, prefix_tokens, anchors)
        measured = len(loaded.tokenizer(prefix)["input_ids"])
        cpu, wall = best(
            lambda p=prefix, q=queries: capture_with_shared_prefix(loaded, p, q), repeats
        )
        rows.append(
            {
                "anchors": anchors,
                "prefix_tokens": measured,
                "cpu_s": cpu,
                "wall_s": wall,
                "loadavg_1m": os.getloadavg()[0],
            }
        )
        print(f"capture anchors={anchors} prefix={measured}: {cpu:.3f} CPU-s", file=sys.stderr)
    return rows


def demo_sets(n_sets: int, k: int) -> list[list[tuple[str, str]]]:
    from tunelens.prompts import PromptStyle, render_prompt, render_target
    from tunelens.tasks.sets import load_task_set

    style = PromptStyle(template="plain", definition=False, n_positive=0)
    tasks = [t for t in load_task_set("world:train") if len(t.instances) >= k]
    sets = []
    for j in range(n_sets):
        task = tasks[j % len(tasks)]
        start = (j // len(tasks)) * k % max(1, len(task.instances) - k + 1)
        sets.append(
            [
                (render_prompt(task, i.input, [], style), render_target(i.outputs[0]))
                for i in task.instances[start : start + k]
            ]
        )
    return sets


def tuning_rows(world: Any, repeats: int, quick: bool) -> list[dict[str, Any]]:
    from tunelens.models.tuning import TuningConfig, tune_many_sets

    points = [(10, 8), (30, 8), (90, 8), (30, 4), (30, 16)]
    if quick:
        points = [(2, 2), (4, 2)]
    config = TuningConfig(epochs=1 if quick else 10, batch_size=8, learning_rate=1e-2)
    rows = []
    for n_sets, k in points:
        sets = demo_sets(n_sets, k)
        cpu, wall = best(lambda s=sets: tune_many_sets(world, s, config), repeats)
        rows.append(
            {
                "sets": n_sets,
                "k": k,
                "cpu_s": cpu,
                "wall_s": wall,
                "per_set_ms": 1000 * cpu / n_sets,
                "loadavg_1m": os.getloadavg()[0],
            }
        )
        print(f"tuning sets={n_sets} k={k}: {cpu:.3f} CPU-s", file=sys.stderr)
    return rows


def markdown(capture: Sequence[dict[str, Any]], tuning: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| capture: anchors | prefix tokens | CPU s | wall s | load |",
        "|---|---|---|---|---|",
    ]
    for r in capture:
        lines.append(
            f"| {r['anchors']} | {r['prefix_tokens']} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | "
            f"{r['loadavg_1m']:.1f} |"
        )
    lines += [
        "",
        "| per-set tuning: sets | k | CPU s | per set, ms | wall s | load |",
        "|---|---|---|---|---|---|",
    ]
    for r in tuning:
        lines.append(
            f"| {r['sets']} | {r['k']} | {r['cpu_s']:.3f} | {r['per_set_ms']:.0f} | "
            f"{r['wall_s']:.3f} | {r['loadavg_1m']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    world, llama = capture_model(args.quick)
    capture = capture_rows(llama, args.repeats, args.quick)
    tuning = tuning_rows(world, args.repeats, args.quick)
    print(markdown(capture, tuning))
    result = {
        "threads": args.threads,
        "loadavg_at_start": list(load),
        "loadavg_at_end": list(os.getloadavg()),
        "capture": capture,
        "tuning": tuning,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
