"""Question 2: did instruction tuning teach the task, or only the output format?

Each grid cell tunes the base model on the training tasks with one manipulation
of their definitions and positive examples (encoded the Tk-Instruct way:
definition + ``n_positive`` examples), then predicts on held-out tasks with
their original definitions, once per *evaluation encoding*:

- ``definition_only``: the definition and the query, nothing else (truly
  zero-shot: on the world's twin tasks a method blind to the definition is
  bounded at 50%);
- ``definition_examples``: Tk-Instruct's encoding, definition + ``n_positive``
  positive examples (a model that learns in context can solve tasks untuned).

Baselines need no tuning: the untuned model (per encoding), a guess over each
task's output space (its exact expected score, plus a seeded draw), copying
the input, and copying the first positive example's output. Metrics are the
official SuperNI ones (:mod:`tunelens.measures.text`), per task, per category
(with Tk-Instruct's headline metric) and overall, with intervals over tasks
(a t-interval below 10 tasks). The *output-format share* (condition - untuned)
/ (original - untuned) is reported as a share only where the tuning gain's
paired interval excludes zero; otherwise the verdict is "tuning gain not
significant", with the gain and its interval. Every entry and baseline also gives
``in_label_space``: the percent of answers that are one of their task's labels once
normalised as EM normalises them (did tuning teach the format?), over the tasks with
a label space, summarised as EM is.

Every cell keeps its per-sample records (instance id, exact prompt,
prediction, references, both scores); :meth:`AuditExperiment.sample_logs`
gives them to the run machinery, which writes ``DIR/samples/<cell key>.jsonl``.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.api.experiment import ReportPart
from tunelens.experiments.audit.controls import compare_controls
from tunelens.experiments.audit.results import AuditResults
from tunelens.experiments.audit.spec import AuditSpec, fill_audit
from tunelens.experiments.audit.token_shift import add_token_ranks, token_shift_section
from tunelens.measures.stats import MIN_BOOTSTRAP_UNITS, unit_mean_ci
from tunelens.measures.text import exact_match, headline_metric, normalize_answer, rouge_l
from tunelens.measures.verdicts import (
    NEGLIGIBLE_GAIN,
    format_share,
    negligible_gain,
    share_reading,
    significant,
    units_to_decide,
)
from tunelens.prompts import PromptStyle, Template, render_prompt, render_target
from tunelens.spec import TuningSpec
from tunelens.tasks.types import Task
from tunelens.tasks.variants import output_space

BASELINES = ("untuned", "random", "copy_input", "copy_demo")
ENCODINGS = ("definition_only", "definition_examples")
SHARES = {
    "simplified": {"definition": "simplified", "examples": "original"},
    "delusive": {"definition": "original", "examples": "delusive"},
    "no_definition": {"definition": "none", "examples": "original"},
}
NOT_SIGNIFICANT = "tuning gain not significant"
METRICS = ("em", "rouge_l")


def training_pairs(
    tasks: Sequence[Task],
    *,
    definition: str,
    examples: str,
    instances_per_task: int | str,
    n_positive: int,
    seed: int,
    template: Template = "tk",
    mixed: bool = False,
) -> list[tuple[str, str]]:
    """Tk-Instruct encoded (prompt, target) pairs under one grid condition.

    ``mixed`` (``train_encoding: mixed``): each instance draws its encoding, as
    Tk-Instruct's collator does with ``--tk_instruct`` (:func:`mixed_styles`), from an
    RNG of its own, so the instances drawn are those of the fixed encoding.
    """
    from tunelens.tasks.sampling import sample_instances
    from tunelens.tasks.variants import apply_definition_variant, apply_examples_variant

    rng = random.Random(f"audit-train|{seed}|{instances_per_task}")
    draw = random.Random(f"audit-train-encoding|{seed}|{instances_per_task}")
    fixed = PromptStyle(template=template, definition=definition != "none", n_positive=n_positive)
    styles = mixed_styles(fixed, examples != "none") if mixed else [fixed]
    pairs = []
    for task in tasks:
        varied = apply_definition_variant(task, definition)
        varied = apply_examples_variant(varied, examples, seed=seed)
        for inst in sample_instances(task.instances, instances_per_task, rng):
            style = draw.choice(styles)
            pairs.append(
                (render_prompt(varied, inst.input, None, style), render_target(inst.outputs[0]))
            )
    return pairs


def mixed_styles(fixed: PromptStyle, has_examples: bool) -> list[PromptStyle]:
    """The encodings a mixed-encoding instance draws from, uniformly.

    Tk-Instruct's collator (``--tk_instruct``) draws from instruction only, examples
    only, instruction + positive examples, + negative examples, + explanations; the
    audit's tasks carry no negatives or explanations, so the first three remain, and
    of those only the ones the condition has (no definition: examples only; no
    examples: definition only; neither: the bare input).
    """
    shots = fixed.n_positive if has_examples else 0
    styles = []
    if fixed.definition:
        styles.append(replace(fixed, definition=True, n_positive=0))
    if shots:
        styles.append(replace(fixed, definition=False, n_positive=shots))
    if fixed.definition and shots:
        styles.append(replace(fixed, definition=True, n_positive=shots))
    return styles or [replace(fixed, definition=False, n_positive=0)]


def eval_items(tasks: Sequence[Task], per_task: int) -> list[tuple[Task, Any]]:
    """The first ``per_task`` instances of each held-out task (SuperNI puts its eval set first)."""
    return [(task, inst) for task in tasks for inst in task.instances[:per_task]]


def encoding_style(encoding: str, n_positive: int, template: Template) -> PromptStyle:
    """The evaluation prompt style of an encoding (both show the original definition)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown evaluation encoding {encoding!r}; use one of {ENCODINGS}")
    shots = n_positive if encoding == "definition_examples" else 0
    return PromptStyle(template=template, definition=True, n_positive=shots)


def eval_prompts(
    items: list[tuple[Task, Any]],
    n_positive: int,
    template: Template,
    encoding: str = "definition_examples",
) -> list[str]:
    style = encoding_style(encoding, n_positive, template)
    return [render_prompt(task, inst.input, None, style) for task, inst in items]


def _per_task_means(records: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for key in keys:
            per_task[record["task"]][key].append(record[key])
    return {
        name: {key: float(np.mean(values[key])) for key in keys}
        for name, values in per_task.items()
    }


def score(
    items: list[tuple[Task, Any]],
    predictions: Sequence[str],
    prompts: Sequence[str | None] | None = None,
    rouge_tokenizer: str = "default",
) -> dict[str, Any]:
    """Per-sample records and per-task mean EM / ROUGE-L (0-100)."""
    prompts = prompts if prompts is not None else [None] * len(items)
    records = []
    for (task, inst), pred, prompt in zip(items, predictions, prompts, strict=True):
        records.append(
            {
                "task": task.name,
                "id": inst.id,
                "prompt": prompt,
                "prediction": pred,
                "references": list(inst.outputs),
                "em": exact_match(pred, inst.outputs),
                "rouge_l": rouge_l(pred, inst.outputs, tokenizer=rouge_tokenizer),  # type: ignore[arg-type]
            }
        )
    return {"samples": records, "per_task": _per_task_means(records, METRICS)}


def expected_guess_scores(
    items: list[tuple[Task, Any]], rouge_tokenizer: str = "default"
) -> dict[str, dict[str, float]]:
    """Exact expected EM / ROUGE-L of a uniform guess over each task's output space."""
    means = _per_task_means(
        _expected_records(items, rouge_tokenizer), ("expected_em", "expected_rouge_l")
    )
    return {
        name: {"em": v["expected_em"], "rouge_l": v["expected_rouge_l"]}
        for name, v in means.items()
    }


def _expected_records(items: list[tuple[Task, Any]], rouge_tokenizer: str) -> list[dict[str, Any]]:
    spaces: dict[str, list[str]] = {}
    records = []
    for task, inst in items:
        space = spaces.setdefault(task.name, output_space(task))
        records.append(
            {
                "task": task.name,
                "expected_em": float(
                    np.mean([exact_match(label, inst.outputs) for label in space])
                ),
                "expected_rouge_l": float(
                    np.mean(
                        [
                            rouge_l(label, inst.outputs, tokenizer=rouge_tokenizer)  # type: ignore[arg-type]
                            for label in space
                        ]
                    )
                ),
            }
        )
    return records


def _encodings(params: dict[str, Any]) -> list[str]:
    return list(params.get("eval_encodings") or ["definition_examples"])


def _evaluate(
    loaded,
    items: list[tuple[Task, Any]],
    params: dict[str, Any],
    outputs: dict[str, list[list[int]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Predictions and scores of one model under every evaluation encoding of ``params``;
    ``outputs`` (given) receives each encoding's generated token ids, in sample order."""
    from tunelens.models.predict import generate_predictions

    out = {}
    for encoding in _encodings(params):
        prompts = eval_prompts(items, params["n_positive"], params["template"], encoding)
        ids: list[list[int]] | None = [] if outputs is not None else None
        predictions = generate_predictions(
            loaded, prompts, max_new_tokens=params["max_new_tokens"], output_ids=ids
        )
        if outputs is not None and ids is not None:
            outputs[encoding] = ids
        out[encoding] = score(items, predictions, prompts, params.get("rouge_tokenizer", "default"))
    return out


def run_baseline_cell(
    loaded, tasks: Sequence[Task], params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """One baseline: untuned model, output-space guess, copy input, copy demonstration.

    ``evaluations`` maps an encoding (``"any"`` for baselines that read no prompt)
    to its samples and per-task scores.
    """
    items = eval_items(tasks, params["eval_instances_per_task"])
    which = params["baseline"]
    tokenizer = params.get("rouge_tokenizer", "default")
    if which == "untuned":
        return {"evaluations": _evaluate(loaded, items, params)}
    if which == "random":
        rng = random.Random(f"guess|{seed}")
        draw = [rng.choice(output_space(task)) for task, _ in items]
        result = score(items, draw, rouge_tokenizer=tokenizer)
        for record, expected in zip(
            result["samples"], _expected_records(items, tokenizer), strict=True
        ):
            record["expected_em"] = expected["expected_em"]
            record["expected_rouge_l"] = expected["expected_rouge_l"]
        result["expected_per_task"] = expected_guess_scores(items, tokenizer)
        return {"evaluations": {"any": result}}
    if which == "copy_input":
        predictions = [inst.input for _, inst in items]
    elif which == "copy_demo":
        predictions = [
            task.positive_examples[0].output if task.positive_examples else "" for task, _ in items
        ]
    else:
        raise ValueError(f"unknown baseline {which!r}")
    return {"evaluations": {"any": score(items, predictions, rouge_tokenizer=tokenizer)}}


def run_grid_cell(
    loaded,
    train: Sequence[Task],
    test: Sequence[Task],
    params: dict[str, Any],
    seed: int,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    adapters_dir: str | None = None,
) -> dict[str, Any]:
    """Tune on the training tasks under one condition, then predict on the held-out tasks.

    ``adapters_dir`` (``--save-adapters``) receives the tuned adapter (PEFT format).
    """
    from tunelens.models.tuning import multitask_tune

    pairs = training_pairs(
        train,
        definition=params["definition"],
        examples=params["examples"],
        instances_per_task=params["instances_per_task"],
        n_positive=params["n_positive"],
        seed=seed,
        template=params["template"],
        mixed=params.get("train_encoding") == "mixed",
    )
    config = TuningSpec(**params["tuning"], seed=seed)
    tuned = multitask_tune(loaded, pairs, config, progress=progress, on_step=on_step)
    items = eval_items(test, params["eval_instances_per_task"])
    outputs: dict[str, list[list[int]]] = {}
    try:
        evaluations = _evaluate(tuned.as_loaded(), items, params, outputs)
        steps = tuned.steps
        final_loss = tuned.losses[-1] if tuned.losses else None
        loss_curve = [round(float(x), 6) for x in tuned.losses]
        adapted = tuned.adapted
        if adapters_dir is not None:
            tuned.save(adapters_dir)
    finally:
        tuned.unload()
    # the untuned model's ranks along the tuned model's own output (token distribution shift)
    add_token_ranks(loaded, evaluations, outputs, test)
    return {
        "evaluations": evaluations,
        "tuning": {
            "method": config.method,
            "adapted_modules": list((adapted or {}).get("modules") or []),
            "adapted": adapted,
        },
        "train_pairs": len(pairs),
        "training": {
            "method": config.method,
            "train_pairs": len(pairs),
            "batch_size": config.batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "processes": 1,
            "effective_batch_size": config.batch_size * config.gradient_accumulation_steps,
            "epochs": config.epochs,
            "max_steps": config.max_steps,
            "steps": steps,
            "learning_rate": config.learning_rate,
            "lr_schedule": config.lr_schedule,
            "seed": seed,
            "template": params["template"],
            "encoding": params.get("train_encoding", "fixed"),
            "n_positive": params["n_positive"],
            "final_loss": final_loss,
        },
        "loss_curve": loss_curve,  # training loss per optimizer step
    }


# ---------------------------------------------------------------- aggregation


def _category(task: Task) -> str:
    return task.categories[0] if task.categories else "uncategorised"


def _over_tasks(values: Sequence[float], n_boot: int, seed: int) -> dict[str, Any]:
    """The audit's one statistic over tasks: their mean with its interval, n and method."""
    return unit_mean_ci(np.array(values, dtype=float), seed=seed, n_resamples=n_boot)


def _summary(
    per_task: dict[str, dict[str, float]], tasks: Sequence[Task], n_boot: int, seed: int
) -> dict[str, Any]:
    """EM and ROUGE-L overall (CI over tasks), per category (with its headline), per task."""
    names = [t.name for t in tasks if t.name in per_task]
    out: dict[str, Any] = {}
    for metric in METRICS:
        out[metric] = _over_tasks([per_task[n][metric] for n in names], n_boot, seed)
    by_category: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        if task.name in per_task:
            by_category[_category(task)].append(task.name)
    out["per_category"] = {}
    for cat, members in sorted(by_category.items()):
        scores = {
            metric: _over_tasks([per_task[n][metric] for n in members], n_boot, seed)
            for metric in METRICS
        }
        headline = headline_metric(cat)
        out["per_category"][cat] = {
            **scores,
            "tasks": len(members),
            "headline_metric": headline,
            "headline": scores[headline],
        }
    out["per_task"] = {n: {m: round(per_task[n][m], 4) for m in METRICS} for n in names}
    return out


def inside_label_space(prediction: str, labels: Sequence[str]) -> bool:
    """Whether a prediction, normalised as exact match normalises it, is one of the labels."""
    normalised = normalize_answer(prediction)
    return any(normalised == normalize_answer(label) for label in labels)


def label_share_per_task(
    samples: Sequence[Mapping[str, Any]], tasks: Sequence[Task]
) -> dict[str, float]:
    """Per task with a label space: the percent (0-100) of its answers inside that space.

    Free-text tasks (``labels`` None) have no space to be inside, so they are left out.
    """
    labels = {t.name: t.labels for t in tasks if t.labels}
    hits: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        space = labels.get(sample["task"])
        if space is not None:
            inside = inside_label_space(sample["prediction"], space)
            hits[sample["task"]].append(100.0 if inside else 0.0)
    return {name: float(np.mean(values)) for name, values in hits.items()}


def _with_label_share(
    summary: dict[str, Any],
    evaluation: Mapping[str, Any],
    tasks: Sequence[Task],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """``summary`` with ``in_label_space`` overall, per category and per task, as EM has them.

    The same statistic over tasks as EM (:func:`_over_tasks`), over the tasks with a label
    space only; overall null where none has one (or the cell kept no samples).
    """
    shares = label_share_per_task(evaluation.get("samples") or [], tasks)
    names = [t.name for t in tasks if t.name in shares]
    if not names:
        return {**summary, "in_label_space": None}
    out = {**summary, "in_label_space": _over_tasks([shares[n] for n in names], n_boot, seed)}
    by_category: dict[str, list[float]] = defaultdict(list)
    for task in tasks:
        if task.name in shares:
            by_category[_category(task)].append(shares[task.name])
    for cat, values in by_category.items():
        if cat in out["per_category"]:
            out["per_category"][cat]["in_label_space"] = _over_tasks(values, n_boot, seed)
    for name in names:
        if name in out["per_task"]:
            out["per_task"][name]["in_label_space"] = round(shares[name], 4)
    return out


def tuning_gain(
    original: dict[str, dict[str, float]],
    untuned: dict[str, dict[str, float]],
    names: list[str],
    metric: str,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The paired tuning gain mean(original - untuned) over tasks, its interval, n, method."""
    d = np.array([original[n][metric] - untuned[n][metric] for n in names])
    return unit_mean_ci(d, seed=seed, n_resamples=n_boot)


def gated_format_share(
    cond: dict[str, dict[str, float]],
    original: dict[str, dict[str, float]],
    untuned: dict[str, dict[str, float]],
    names: list[str],
    metric: str,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The audit's format share: a share only where the tuning gain is significant.

    Where the tuning gain's paired interval excludes zero: ``mean``/``ci`` (the
    share and its interval: percentile bootstrap, BCa below 10 tasks),
    ``verdict: "share"`` and its ``reading``. Otherwise ``mean`` and ``ci`` are null
    and ``verdict`` is "tuning gain not significant". Always: ``gain`` (the paired
    tuning gain with its interval and n), ``condition_gain`` (condition - untuned),
    ``n`` and ``tuning_gain`` (the gain's point value).
    """
    c = np.array([cond[n][metric] for n in names])
    u = np.array([untuned[n][metric] for n in names])
    gain = tuning_gain(original, untuned, names, metric, n_boot, seed)
    out: dict[str, Any] = {
        "tuning_gain": gain["mean"] if len(names) else None,
        "gain": gain,
        "condition_gain": unit_mean_ci(c - u, seed=seed, n_resamples=n_boot),
        "n": len(names),
    }
    if not significant(gain):
        out.update({"mean": None, "ci": [None, None], "verdict": NOT_SIGNIFICANT})
        out["tasks_to_decide"] = None if negligible_gain(gain) else units_to_decide(gain)
        return out
    raw = format_share(cond, original, untuned, names, metric, n_boot, seed)
    out.update({"mean": raw["mean"], "ci": raw["ci"], "verdict": "share"})
    out["reading"] = share_reading({"ci": raw["ci"]}, True)
    out["method"] = "bootstrap" if len(names) >= MIN_BOOTSTRAP_UNITS else "BCa"
    return out


def label_spaces(tasks: Sequence[Task]) -> dict[str, Any]:
    """Per task: its label space, where it came from, and definition-named labels never used."""
    from tunelens.tasks.labels import describe_label_space

    out = {}
    for task in tasks:
        space = describe_label_space(task)
        unseen = list(space.unseen)
        entry: dict[str, Any] = {
            "labels": list(task.labels) if task.labels is not None else None,
            "source": space.source,
            "unseen": unseen,
        }
        if unseen:
            entry["note"] = (
                f"the definition names {', '.join(repr(x) for x in unseen)}, which no instance "
                "uses; kept in the label space"
            )
        out[task.name] = entry
    return out


def definition_blind_bound(test: Sequence[Task], per_task: int) -> float:
    """Best EM of any method blind to definition and examples, on the evaluated instances."""
    from tunelens.tasks.world.generator import definition_blind_upper_bound

    evaluated = [t.with_changes(instances=t.instances[:per_task]) for t in test]
    return definition_blind_upper_bound(evaluated)


def _evaluation_info(section: AuditSpec, encoding: str) -> dict[str, Any]:
    """How the held-out prompts of ``encoding`` were built and scored."""
    return {
        "encoding": encoding,
        "template": "tk",
        "n_positive": section.n_positive if encoding == "definition_examples" else 0,
        "eval_instances_per_task": section.eval_instances_per_task,
        "rouge_tokenizer": section.rouge_tokenizer,
    }


def _add_baseline(
    section: AuditSpec,
    cell: Cell,
    result: dict[str, Any],
    test: Any,
    by_encoding: dict[str, dict[str, Any]],
    untuned: dict[str, dict[str, Any]],
) -> None:
    """A baseline cell's summary under each encoding (the untuned model's own per encoding;
    copy and random baselines, prompt-free, the same under every encoding)."""
    evaluations = result["evaluations"]
    which = cell.params["baseline"]
    n_boot = section.bootstrap
    if which == "untuned":
        for enc in by_encoding:
            summary = _summary(evaluations[enc]["per_task"], test, n_boot, seed=0)
            summary = _with_label_share(summary, evaluations[enc], test, n_boot, seed=0)
            by_encoding[enc][which] = {**summary, "evaluation": _evaluation_info(section, enc)}
            untuned[enc] = evaluations[enc]["per_task"]
        return
    ev = evaluations["any"]
    summary = _summary(ev["per_task"], test, n_boot, seed=0)
    if which == "random":
        expected = _summary(ev["expected_per_task"], test, n_boot, seed=0)
        summary = {**expected, "draw": {"em": summary["em"], "rouge_l": summary["rouge_l"]}}
    # The random baseline's share is its seeded draw's (a guess over the label space).
    summary = _with_label_share(summary, ev, test, n_boot, seed=0)
    for enc in by_encoding:
        by_encoding[enc][which] = summary


def _add_grid_cell(
    section: AuditSpec,
    cell: Cell,
    result: dict[str, Any],
    test: Any,
    grid: list[dict[str, Any]],
    raw: dict[tuple, dict[str, Any]],
) -> None:
    """A tuned cell's entry per encoding, and its per-task scores for the format shares."""
    condition = {k: cell.params[k] for k in ("definition", "examples", "instances_per_task")}
    for enc in section.eval_encodings:
        evaluation = result["evaluations"][enc]
        per_task = evaluation["per_task"]
        summary = _summary(per_task, test, section.bootstrap, seed=0)
        entry = {
            "condition": {**condition, "seed": cell.seed, "encoding": enc},
            **_with_label_share(summary, evaluation, test, section.bootstrap, seed=0),
            "training": result["training"],
            "evaluation": _evaluation_info(section, enc),
        }
        if "tuning" in result:  # cells from before issue 18 lack it
            entry["tuning"] = result["tuning"]
        grid.append(entry)
        key = (*condition.values(), cell.seed, enc)
        raw[key] = per_task


@register_experiment
class AuditExperiment(Experiment):
    """The audit study as cells for ``tunelens.runs``."""

    command_help = (
        "Did tuning teach the task, or only the output format? Zero-shot on held-out tasks."
    )

    name = "audit"
    section_model = AuditSpec

    def fill_section(self, section: AuditSpec, study: Any) -> AuditSpec:
        """What the section inherits from the study (:func:`fill_audit`)."""
        return fill_audit(section, study)

    # 4: official ROUGE-L, evaluation encodings, definition-named label spaces, samples.
    # 9: grid cells rank the tuned output under the untuned model (token distribution shift).
    # 8: last block cut at target positions, fused AdamW (float noise); earlier: 7: break-even
    # prefix groups, padding-free tuning batches (float noise)
    code_version = "9"
    results_model = AuditResults

    def _common(self, section: AuditSpec, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "dtype": section.dtype,
            "device": section.device,
            "train": section.train,
            "test": section.test,
            "n_positive": section.n_positive,
            "eval_instances_per_task": section.eval_instances_per_task,
            "eval_encodings": list(section.eval_encodings),
            "rouge_tokenizer": section.rouge_tokenizer,
            "max_new_tokens": section.max_new_tokens,
            "template": "tk",
        }

    def cells(self, section: AuditSpec, inputs: StudyInputs) -> list[Cell]:
        models = section.audited_models()
        cells: list[Cell] = []
        for model in models:
            prefix = f"{model}: " if len(models) > 1 else ""
            for cell in self._model_cells(section, inputs, model):
                cells.append(replace(cell, name=prefix + cell.name) if prefix else cell)
        return cells

    def _model_cells(self, section: AuditSpec, inputs: StudyInputs, model: str) -> list[Cell]:
        common = self._common(section, model)
        test = inputs.tasks(section.test)
        test_digest = {"test": inputs.task_digest(section.test)}
        model_digest = {"model": inputs.model_digest(model)}
        cells = []
        for baseline in BASELINES:
            # Only the untuned baseline runs the model (and reads prompts, so encodings).
            uses = {**test_digest, **model_digest} if baseline == "untuned" else test_digest
            params = {**common, "baseline": baseline}
            if baseline != "untuned":
                params.pop("eval_encodings")
            cells.append(
                self.cell(f"baseline {baseline}", params, section.seeds[0], uses, {"test": test})
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
                        if section.train_encoding != "fixed":  # fixed cells keep their keys
                            params["train_encoding"] = section.train_encoding
                        name = f"def={definition} ex={examples} n={n} seed={seed}"
                        cells.append(
                            self.cell(
                                name, params, seed, grid_inputs, {"train": train, "test": test}
                            )
                        )
        return cells

    # ------------------------------------------------------------ plan and --limit
    # (tunelens.experiments.audit.plan). Seconds a cell costs beyond its counted work
    # (bench/plan_calibration.py).
    cell_overhead_s = 0.005

    def limit_section(self, section: AuditSpec, n: int) -> AuditSpec:
        """At most n held-out and n training instances per task."""
        from tunelens.experiments.audit.plan import limit_section

        return limit_section(section, n)

    def plan_prompts(self, section: AuditSpec, inputs: StudyInputs) -> list[str]:
        """The Tk-Instruct evaluation prompts, for the context check of ``tunelens plan``."""
        from tunelens.experiments.audit.plan import plan_prompts

        return plan_prompts(section, inputs)

    def estimate_work(self, cell: Cell, estimate: Any) -> Any:
        """The cell's work for ``tunelens plan``, counted as the cell batches it."""
        from tunelens.experiments.audit.plan import audit_work

        return audit_work(cell, estimate)

    def training_shape(self, cell: Cell) -> tuple[int, int] | None:
        """(batch, tokens per row) of the multi-task tuning."""
        from tunelens.experiments.audit.plan import training_shape

        return training_shape(cell)

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
            adapters_dir=context.adapters_dir,
        )

    def sample_logs(self, cell: Cell, result: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Per-sample records of a finished cell, one per (encoding, instance)."""
        records = []
        for encoding, evaluation in (result.get("evaluations") or {}).items():
            for sample in evaluation.get("samples", []):
                records.append({"cell": cell.name, "encoding": encoding, **sample})
        return records

    def aggregate(
        self, section: AuditSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        """One audit per model; the top-level keys are the first model's (the contract)."""
        models = section.audited_models()
        if len(models) == 1:
            return self._aggregate_model(section, results)
        per_model = {
            m: self._aggregate_model(
                section, [(c, r) for c, r in results if c.params["model"] == m]
            )
            for m in models
        }
        return {**per_model[models[0]], "audit_by_model": per_model}

    # ------------------------------------------------------------ export and report
    def results_keys(self) -> tuple[str, ...]:
        """The keys the audit's section shows (``audit_by_model``, written for several
        models, is left to a generic table)."""
        from tunelens.experiments.audit.results import RESULTS_KEYS

        return RESULTS_KEYS

    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        """condition x task x metric (:mod:`tunelens.experiments.audit.tidy`)."""
        from tunelens.experiments.audit.tidy import tidy_rows

        return tidy_rows(results)

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        """Verdicts, bound, scores, shares (:mod:`tunelens.experiments.audit.report`)."""
        from tunelens.experiments.audit.report import report_part

        return report_part(results, plots_dir)

    def _aggregate_model(
        self, section: AuditSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        test = results[0][0].data.get("test") if results else None
        if test is None:
            from tunelens.tasks.sets import load_task_set

            test = load_task_set(section.test)
        encodings = list(section.eval_encodings)
        by_encoding: dict[str, dict[str, Any]] = {enc: {} for enc in encodings}
        untuned: dict[str, dict[str, Any]] = {}
        grid: list[dict[str, Any]] = []
        raw: dict[tuple, dict[str, Any]] = {}
        for cell, result in results:
            if "baseline" in cell.params:
                _add_baseline(section, cell, result, test, by_encoding, untuned)
            else:
                _add_grid_cell(section, cell, result, test, grid, raw)
        # Lead with the first encoding (definition-only in the default).
        grid.sort(key=lambda e: encodings.index(e["condition"]["encoding"]))
        shares = self._shares(raw, by_encoding, untuned, test, section.bootstrap, encodings)
        bound = definition_blind_bound(test, section.eval_instances_per_task)
        from tunelens.experiments.audit.results import dump_audit

        token_shift = token_shift_section(results, encodings, section.bootstrap)
        return dump_audit(
            {
                "audit": grid,
                "baselines": by_encoding[encodings[0]],
                "baselines_by_encoding": by_encoding,
                "audit_format_share": shares,
                "audit_verdict": self._verdicts(shares),
                "audit_controls": compare_controls(
                    raw, SHARES, METRICS, NEGLIGIBLE_GAIN, section.bootstrap
                ),
                "audit_label_spaces": label_spaces(test),
                "audit_definition_blind_bound": {
                    "em": bound,
                    "applies_to": "definition_only",
                    "note": "the best exact match of any method that sees the input and the "
                    "label space but neither the definition nor examples (twin tasks share "
                    "inputs and label space with a different mapping)",
                    "above": self._above_bound(bound, grid, by_encoding),
                },
                **({"audit_token_shift": token_shift} if token_shift else {}),
            }
        )

    def _shares(self, raw, by_encoding, untuned, test, n_boot, encodings) -> list[dict[str, Any]]:
        """Format shares per (instances_per_task, seed, encoding) for each format-only control."""
        out = []
        for (definition, examples, n, seed, enc), original in raw.items():
            if (definition, examples) != ("original", "original") or enc not in untuned:
                continue
            base = untuned[enc]
            names = [t.name for t in test if t.name in base and t.name in original]
            row: dict[str, Any] = {
                "instances_per_task": n,
                "seed": seed,
                "encoding": enc,
                "tuning_gain": {
                    m: tuning_gain(original, base, names, m, n_boot, seed) for m in METRICS
                },
            }
            for share, cond in SHARES.items():
                other = raw.get((cond["definition"], cond["examples"], n, seed, enc))
                if other is not None:
                    row[share] = {
                        m: gated_format_share(other, original, base, names, m, n_boot, seed)
                        for m in METRICS
                    }
            random_baseline = by_encoding[enc].get("random")
            if random_baseline is not None:
                guess = {k: dict(v) for k, v in random_baseline["per_task"].items()}
                row["random_guess"] = {
                    m: gated_format_share(guess, original, base, names, m, n_boot, seed)
                    for m in METRICS
                }
            out.append(row)
        out.sort(key=lambda r: encodings.index(r["encoding"]))
        return out

    @staticmethod
    def _above_bound(
        bound: float, grid: list[dict[str, Any]], by_encoding: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Definition-only scores whose whole interval lies above the definition-blind bound."""
        rows = []
        untuned = by_encoding.get("definition_only", {}).get("untuned")
        if untuned is not None:
            rows.append(("untuned", untuned["em"]))
        for entry in grid:
            c = entry["condition"]
            if c["encoding"] == "definition_only":
                name = f"def={c['definition']} ex={c['examples']} n={c['instances_per_task']}"
                rows.append((f"{name} seed={c['seed']}", entry["em"]))
        out = []
        for name, em in rows:
            lo = em["ci"][0]
            above = isinstance(lo, float) and math.isfinite(lo) and lo > bound
            out.append({"what": name, "em": em, "above": bool(above)})
        return out

    @staticmethod
    def _verdicts(shares: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One sentence per share row (EM), with the gain and interval when not significant."""
        verdicts = []
        for row in shares:
            gain = row["tuning_gain"]["em"]
            lo, hi = gain["ci"]
            where = (
                f"{row['encoding']}, {row['instances_per_task']} instances per task, "
                f"seed {row['seed']}"
            )
            span = f"{_fmt(gain['mean'], sign=True)} EM [{_fmt(lo)}, {_fmt(hi)}], n = {gain['n']}"
            if not significant(gain):
                negligible = negligible_gain(gain)
                if negligible:
                    more = (
                        f"; the interval rules out a gain or loss above {NEGLIGIBLE_GAIN:g} EM: "
                        "no tuning gain of practical size, so there is no gain to share"
                    )
                else:
                    need = units_to_decide(gain)
                    more = (
                        f"; roughly {need} tasks ({need / max(gain['n'], 1):.1f}x the present "
                        f"{gain['n']}) at this gain and spread would decide it"
                        if need
                        else ""
                    )
                text = f"{where}: {NOT_SIGNIFICANT} ({span}){more}"
                verdicts.append(
                    {
                        **_row_key(row),
                        "significant": False,
                        "decided": negligible,
                        "text": text,
                    }
                )
                continue
            parts = []
            for share in (*SHARES, "random_guess"):
                if share in row:
                    s = row[share]["em"]
                    reading = s.get("reading", "")
                    parts.append(
                        f"{share} {_pct(s['mean'])} [{_pct(s['ci'][0])}, {_pct(s['ci'][1])}]"
                        + (f" ({reading})" if reading else "")
                    )
            text = f"{where}: tuning gain {span}; format shares: " + "; ".join(parts)
            verdicts.append({**_row_key(row), "significant": True, "decided": True, "text": text})
        return verdicts


def _row_key(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("instances_per_task", "seed", "encoding")}


def _fmt(x: Any, sign: bool = False) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return f"{x:+.2f}" if sign else f"{x:.2f}"


def _pct(x: Any) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.0f}%"


__all__ = [
    "BASELINES",
    "ENCODINGS",
    "NOT_SIGNIFICANT",
    "AuditExperiment",
    "eval_items",
    "eval_prompts",
    "expected_guess_scores",
    "format_share",
    "gated_format_share",
    "inside_label_space",
    "label_share_per_task",
    "run_baseline_cell",
    "run_grid_cell",
    "score",
    "training_pairs",
    "tuning_gain",
]
