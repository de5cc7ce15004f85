"""In-context accuracy of a model on held-out world tasks: the evidence that ICL emerged.

For every held-out task and every k, a fixed set of queries is answered with k
demonstrations drawn from the task's other instances (plain few-shot template,
no definition), by greedy decoding; accuracy is exact match. The label-space
random baseline is the exact expected accuracy of a uniform guess over each
task's labels.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from tunelens.measures.text import exact_match
from tunelens.models.loading import LoadedModel
from tunelens.models.predict import generate_predictions
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.tasks.types import Example, Task

DEFAULT_SHOTS: tuple[int, ...] = (0, 1, 2, 4, 8, 16)


@dataclass
class WorldEvalResult:
    """Accuracies (0-100) per k, overall and per rule family."""

    shots: dict[int, float]
    random_baseline: float
    tasks: int
    queries_per_task: int
    per_family: dict[str, dict[int, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "shots": {str(k): round(v, 2) for k, v in self.shots.items()},
            "random_baseline": round(self.random_baseline, 2),
            "tasks": self.tasks,
            "queries_per_task": self.queries_per_task,
            "per_family": {
                f: {str(k): round(v, 2) for k, v in acc.items()}
                for f, acc in self.per_family.items()
            },
        }


def icl_prompts(
    task: Task, k: int, queries: int, rng: random.Random, *, definition: bool = False
) -> tuple[list[str], list[tuple[str, ...]]]:
    """``queries`` prompts with k demonstrations from the task's other instances."""
    style = PromptStyle(template="plain", definition=definition)
    prompts, references = [], []
    pool = list(task.instances)
    for q in range(queries):
        query = pool[q % len(pool)]
        others = [i for i in pool if i.id != query.id]
        demos = [Example(i.input, i.outputs[0]) for i in rng.sample(others, k)]
        prompts.append(render_prompt(task, query.input, demos, style))
        references.append(query.outputs)
    return prompts, references


def evaluate_icl(
    loaded: LoadedModel,
    tasks: list[Task],
    shots: tuple[int, ...] = DEFAULT_SHOTS,
    *,
    queries_per_task: int = 20,
    seed: int = 0,
    batch_size: int = 64,
) -> WorldEvalResult:
    """Few-shot exact-match accuracy per k, averaged over tasks (each task weighs the same)."""
    per_task: dict[int, list[float]] = defaultdict(list)
    per_family: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k in shots:
        rng = random.Random(seed * 7919 + k)
        prompts, refs, owners = [], [], []
        for task in tasks:
            p, r = icl_prompts(task, k, queries_per_task, rng)
            prompts += p
            refs += r
            owners += [task] * len(p)
        predictions = generate_predictions(loaded, prompts, max_new_tokens=4, batch_size=batch_size)
        scores: dict[str, list[float]] = defaultdict(list)
        for task, pred, ref in zip(owners, predictions, refs, strict=True):
            scores[task.name].append(exact_match(pred, ref))
        for task in tasks:
            acc = sum(scores[task.name]) / len(scores[task.name])
            per_task[k].append(acc)
            per_family[task.metadata.get("family", "other")][k].append(acc)
    random_baseline = sum(100.0 / len(t.labels or ("?",)) for t in tasks) / len(tasks)
    return WorldEvalResult(
        shots={k: sum(v) / len(v) for k, v in per_task.items()},
        random_baseline=random_baseline,
        tasks=len(tasks),
        queries_per_task=queries_per_task,
        per_family={
            f: {k: sum(v) / len(v) for k, v in acc.items()} for f, acc in per_family.items()
        },
    )


# A small fixed evaluation recorded beside the shipped model (reference_eval.json);
# a test re-runs it through the generic loader and compares.
REFERENCE_SETTINGS: dict = {"tasks": 12, "shots": [0, 8], "queries_per_task": 10, "seed": 0}


def reference_eval(loaded: LoadedModel, heldout: list[Task]) -> dict:
    """The fixed small evaluation of REFERENCE_SETTINGS, as a JSON-ready dict."""
    s = REFERENCE_SETTINGS
    result = evaluate_icl(
        loaded,
        heldout[: s["tasks"]],
        tuple(s["shots"]),
        queries_per_task=s["queries_per_task"],
        seed=s["seed"],
    )
    return {"settings": s, "shots": result.to_json()["shots"]}
