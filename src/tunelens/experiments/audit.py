"""Question 2: did instruction tuning teach the task, or only the output format?

Each grid cell tunes the base model on the training tasks with one manipulation
of their definitions and positive examples, then predicts zero-shot (no tuning
on them) on held-out tasks presented with their original definitions in the
Tk-Instruct encoding. Baselines need no tuning: the untuned model, a guess
over each task's output space (its exact expected score, plus a seeded draw),
copying the input, and copying a demonstration's output. Aggregation reports
EM and ROUGE-L per task, per category and overall with bootstrap CIs over
tasks, and the *output-format share*: the part of the tuning gain that a
format-only condition already gets.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.measures.stats import mean_ci
from tunelens.measures.text import exact_match, rouge_l
from tunelens.prompts import PromptStyle, Template, render_prompt, render_target
from tunelens.spec import AuditSpec, TuningSpec
from tunelens.tasks.types import Task
from tunelens.tasks.variants import output_space

BASELINES = ("untuned", "random", "copy_input", "copy_demo")
SHARES = {
    "simplified": {"definition": "simplified", "examples": "original"},
    "delusive": {"definition": "original", "examples": "delusive"},
    "no_definition": {"definition": "none", "examples": "original"},
}


def training_pairs(
    tasks: Sequence[Task],
    *,
    definition: str,
    examples: str,
    instances_per_task: int | str,
    n_positive: int,
    seed: int,
    template: Template = "tk",
) -> list[tuple[str, str]]:
    """Tk-Instruct encoded (prompt, target) pairs under one grid condition."""
    from tunelens.tasks.sampling import sample_instances
    from tunelens.tasks.variants import apply_definition_variant, apply_examples_variant

    rng = random.Random(f"audit-train|{seed}|{instances_per_task}")
    pairs = []
    for task in tasks:
        varied = apply_definition_variant(task, definition)
        varied = apply_examples_variant(varied, examples, seed=seed)
        style = PromptStyle(
            template=template, definition=definition != "none", n_positive=n_positive
        )
        for inst in sample_instances(task.instances, instances_per_task, rng):
            pairs.append(
                (render_prompt(varied, inst.input, None, style), render_target(inst.outputs[0]))
            )
    return pairs


def eval_items(tasks: Sequence[Task], per_task: int) -> list[tuple[Task, Any]]:
    """The first ``per_task`` instances of each held-out task (SuperNI puts its eval set first)."""
    return [(task, inst) for task in tasks for inst in task.instances[:per_task]]


def score(items: list[tuple[Task, Any]], predictions: Sequence[str]) -> dict[str, Any]:
    """Per-instance predictions and per-task mean EM / ROUGE-L (0-100)."""
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"em": [], "rouge_l": []})
    records = []
    for (task, inst), pred in zip(items, predictions, strict=True):
        em, rl = exact_match(pred, inst.outputs), rouge_l(pred, inst.outputs)
        per_task[task.name]["em"].append(em)
        per_task[task.name]["rouge_l"].append(rl)
        records.append({"task": task.name, "id": inst.id, "prediction": pred, "em": em})
    return {
        "predictions": records,
        "per_task": {
            name: {m: float(np.mean(v)) for m, v in ms.items()} for name, ms in per_task.items()
        },
    }


def expected_guess_scores(items: list[tuple[Task, Any]]) -> dict[str, dict[str, float]]:
    """Exact expected EM / ROUGE-L of a uniform guess over each task's output space."""
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"em": [], "rouge_l": []})
    spaces: dict[str, list[str]] = {}
    for task, inst in items:
        space = spaces.setdefault(task.name, output_space(task))
        per_task[task.name]["em"].append(
            float(np.mean([exact_match(label, inst.outputs) for label in space]))
        )
        per_task[task.name]["rouge_l"].append(
            float(np.mean([rouge_l(label, inst.outputs) for label in space]))
        )
    return {name: {m: float(np.mean(v)) for m, v in ms.items()} for name, ms in per_task.items()}


def eval_prompts(items: list[tuple[Task, Any]], n_positive: int, template: Template) -> list[str]:
    style = PromptStyle(template=template, definition=True, n_positive=n_positive)
    return [render_prompt(task, inst.input, None, style) for task, inst in items]


def run_baseline_cell(
    loaded, tasks: Sequence[Task], params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """One baseline: untuned model, output-space guess, copy input, copy demonstration."""
    items = eval_items(tasks, params["eval_instances_per_task"])
    which = params["baseline"]
    if which == "untuned":
        from tunelens.models.predict import generate_predictions

        prompts = eval_prompts(items, params["n_positive"], params["template"])
        result = score(
            items, generate_predictions(loaded, prompts, max_new_tokens=params["max_new_tokens"])
        )
    elif which == "random":
        rng = random.Random(f"guess|{seed}")
        draw = [rng.choice(output_space(task)) for task, _ in items]
        result = score(items, draw)
        result["expected_per_task"] = expected_guess_scores(items)
    elif which == "copy_input":
        result = score(items, [inst.input for _, inst in items])
    elif which == "copy_demo":
        result = score(
            items,
            [
                task.positive_examples[0].output if task.positive_examples else ""
                for task, _ in items
            ],
        )
    else:
        raise ValueError(f"unknown baseline {which!r}")
    return result


def run_grid_cell(
    loaded,
    train: Sequence[Task],
    test: Sequence[Task],
    params: dict[str, Any],
    seed: int,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Tune on the training tasks under one condition, then predict on the held-out tasks."""
    from tunelens.models.predict import generate_predictions
    from tunelens.models.tuning import multitask_tune

    pairs = training_pairs(
        train,
        definition=params["definition"],
        examples=params["examples"],
        instances_per_task=params["instances_per_task"],
        n_positive=params["n_positive"],
        seed=seed,
        template=params["template"],
    )
    config = TuningSpec(**params["tuning"], seed=seed)
    tuned = multitask_tune(loaded, pairs, config, progress=progress, on_step=on_step)
    try:
        items = eval_items(test, params["eval_instances_per_task"])
        prompts = eval_prompts(items, params["n_positive"], params["template"])
        predictions = generate_predictions(
            tuned.as_loaded(), prompts, max_new_tokens=params["max_new_tokens"]
        )
    finally:
        tuned.unload()
    result = score(items, predictions)
    result["train_pairs"] = len(pairs)
    return result


def _summary(
    per_task: dict[str, dict[str, float]], tasks: Sequence[Task], n_boot: int, seed: int
) -> dict[str, Any]:
    """EM and ROUGE-L overall (CI over tasks), per category, per task."""
    names = [t.name for t in tasks if t.name in per_task]
    out: dict[str, Any] = {}
    for metric in ("em", "rouge_l"):
        values = np.array([per_task[n][metric] for n in names])
        out[metric] = mean_ci(values, seed=seed, n_resamples=n_boot)
    by_category: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        if task.name in per_task:
            by_category[task.categories[0] if task.categories else "uncategorised"].append(
                task.name
            )
    out["per_category"] = {
        cat: {
            metric: mean_ci(
                np.array([per_task[n][metric] for n in members]), seed=seed, n_resamples=n_boot
            )
            for metric in ("em", "rouge_l")
        }
        | {"tasks": len(members)}
        for cat, members in sorted(by_category.items())
    }
    out["per_task"] = {n: {m: round(per_task[n][m], 4) for m in ("em", "rouge_l")} for n in names}
    return out


def format_share(
    cond: dict[str, dict[str, float]],
    original: dict[str, dict[str, float]],
    untuned: dict[str, dict[str, float]],
    names: list[str],
    metric: str,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """(condition - untuned) / (original - untuned) over tasks, with a paired bootstrap CI."""
    c = np.array([cond[n][metric] for n in names])
    o = np.array([original[n][metric] for n in names])
    u = np.array([untuned[n][metric] for n in names])

    def ratio(idx: np.ndarray) -> float:
        gain = o[idx].mean() - u[idx].mean()
        return float((c[idx].mean() - u[idx].mean()) / gain) if abs(gain) > 1e-9 else float("nan")

    point = ratio(np.arange(len(names)))
    rng = np.random.default_rng(seed)
    draws = np.array([ratio(rng.integers(0, len(names), len(names))) for _ in range(n_boot)])
    draws = draws[np.isfinite(draws)]
    ci = (
        [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
        if len(draws)
        else [float("nan"), float("nan")]
    )
    gain = float(o.mean() - u.mean())
    return {
        "mean": point if np.isfinite(point) else None,
        "ci": [x if np.isfinite(x) else None for x in ci],
        "tuning_gain": gain,
    }


@register_experiment
class AuditExperiment(Experiment):
    """The audit study as cells for ``tunelens.runs``."""

    name = "audit"
    # 3: cell keys hold task and model content digests; baselines without a model ignore it.
    code_version = "3"

    def _common(self, section: AuditSpec) -> dict[str, Any]:
        return {
            "model": section.model,
            "dtype": section.dtype,
            "device": section.device,
            "train": section.train,
            "test": section.test,
            "n_positive": section.n_positive,
            "eval_instances_per_task": section.eval_instances_per_task,
            "max_new_tokens": section.max_new_tokens,
            "template": "tk",
        }

    def cells(self, section: AuditSpec, inputs: StudyInputs) -> list[Cell]:
        common = self._common(section)
        test = inputs.tasks(section.test)
        test_digest = {"test": inputs.task_digest(section.test)}
        model_digest = {"model": inputs.model_digest(str(section.model))}
        cells = []
        for baseline in BASELINES:
            # Only the untuned baseline runs the model; the others depend on the test tasks alone.
            uses = {**test_digest, **model_digest} if baseline == "untuned" else test_digest
            cells.append(
                self.cell(
                    f"baseline {baseline}",
                    {**common, "baseline": baseline},
                    section.seeds[0],
                    uses,
                    {"test": test},
                )
            )
        train = inputs.tasks(section.train)
        grid_inputs = {
            **test_digest,
            "train": inputs.task_digest(section.train),
            **model_digest,
        }
        for n in section.instances_per_task:
            for definition in section.definitions:
                for examples in section.examples:
                    for seed in section.seeds:
                        params = {
                            **common,
                            "definition": definition,
                            "examples": examples,
                            "instances_per_task": n,
                            "tuning": section.tuning.model_dump(),
                        }
                        name = f"def={definition} ex={examples} n={n} seed={seed}"
                        cells.append(
                            self.cell(
                                name, params, seed, grid_inputs, {"train": train, "test": test}
                            )
                        )
        return cells

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        p = cell.params
        test = cell.data["test"]
        if p.get("baseline") in ("random", "copy_input", "copy_demo"):
            return run_baseline_cell(None, test, p, cell.seed)
        loaded = context.load_model(p["model"], dtype=p["dtype"], device=p["device"])
        if "baseline" in p:
            return run_baseline_cell(loaded, test, p, cell.seed)
        return run_grid_cell(
            loaded,
            cell.data["train"],
            test,
            p,
            cell.seed,
            progress=False,
            on_step=lambda done, total: context.progress("tuning steps", done, total),
        )

    def aggregate(
        self, section: AuditSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        test = results[0][0].data.get("test") if results else None
        if test is None:
            from tunelens.tasks.sets import load_task_set

            test = load_task_set(section.test)
        n_boot = section.bootstrap
        baselines: dict[str, Any] = {}
        grid: list[dict[str, Any]] = []
        untuned_per_task = None
        for cell, result in results:
            summary = _summary(result["per_task"], test, n_boot, seed=0)
            if "baseline" in cell.params:
                if cell.params["baseline"] == "random":
                    expected = _summary(result["expected_per_task"], test, n_boot, seed=0)
                    summary = {
                        **expected,
                        "draw": {"em": summary["em"], "rouge_l": summary["rouge_l"]},
                    }
                if cell.params["baseline"] == "untuned":
                    untuned_per_task = result["per_task"]
                baselines[cell.params["baseline"]] = summary
            else:
                condition = {
                    k: cell.params[k] for k in ("definition", "examples", "instances_per_task")
                }
                grid.append(
                    {
                        "condition": {**condition, "seed": cell.seed},
                        **summary,
                        "_per_task_raw": result["per_task"],
                    }
                )
        shares = self._shares(grid, baselines, untuned_per_task, test, n_boot)
        for entry in grid:
            entry.pop("_per_task_raw")
        from tunelens.api.results import dump_audit

        return dump_audit({"audit": grid, "baselines": baselines, "audit_format_share": shares})

    def _shares(self, grid, baselines, untuned, test, n_boot) -> list[dict[str, Any]]:
        """Format shares per (instances_per_task, seed) for each format-only control."""
        if untuned is None:
            return []
        names = [t.name for t in test if t.name in untuned]
        random_per_task = None
        if "random" in baselines:
            random_per_task = {n: v for n, v in baselines["random"]["per_task"].items()}
        out = []
        keyed = {
            (
                e["condition"]["definition"],
                e["condition"]["examples"],
                e["condition"]["instances_per_task"],
                e["condition"]["seed"],
            ): e
            for e in grid
        }
        for (definition, examples, n, seed), entry in keyed.items():
            if (definition, examples) != ("original", "original"):
                continue
            original = entry["_per_task_raw"]
            row: dict[str, Any] = {"instances_per_task": n, "seed": seed}
            for share, cond in SHARES.items():
                other = keyed.get((cond["definition"], cond["examples"], n, seed))
                if other is not None:
                    row[share] = {
                        m: format_share(
                            other["_per_task_raw"], original, untuned, names, m, n_boot, seed
                        )
                        for m in ("em", "rouge_l")
                    }
            if random_per_task is not None:
                row["random_guess"] = {
                    m: format_share(random_per_task, original, untuned, names, m, n_boot, seed)
                    for m in ("em", "rouge_l")
                }
            out.append(row)
        return out
