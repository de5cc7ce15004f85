"""In-context accuracy of a model on held-out world tasks: the evidence that ICL emerged.

For every held-out task and every k, a fixed set of queries is answered with k
demonstrations drawn from the task's other instances (plain few-shot template,
with the definition first when asked), by greedy decoding; accuracy is exact
match. With novel labels every task's label words are first swapped for words
never used as labels in training (tunelens.tasks.world.relabel). The label-space
random baseline is the exact expected accuracy of a uniform guess over each
task's labels.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.api.experiment import ReportPart
from tunelens.experiments.world_eval.results import WorldEvalResults
from tunelens.experiments.world_eval.spec import DEFAULT_SHOTS, WorldEvalSpec, fill_world_eval
from tunelens.measures.text import exact_match
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.tasks.sampling import sample_queries_with_demos
from tunelens.tasks.types import Task

if TYPE_CHECKING:
    from tunelens.models.loading import LoadedModel


@dataclass
class WorldEvalResult:
    """Accuracies (0-100) per k, overall and per rule family."""

    shots: dict[int, float]
    random_baseline: float
    tasks: int
    queries_per_task: int
    per_family: dict[str, dict[int, float]] = field(default_factory=dict)
    labels: str = "original"
    definition: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorldEvalResult:
        """The inverse of :meth:`to_json` (keys back to ints)."""
        return cls(
            shots={int(k): v for k, v in data["shots"].items()},
            random_baseline=data["random_baseline"],
            tasks=data["tasks"],
            queries_per_task=data["queries_per_task"],
            per_family={
                f: {int(k): v for k, v in acc.items()} for f, acc in data["per_family"].items()
            },
            labels=data.get("labels", "original"),
            definition=bool(data.get("definition", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "shots": {str(k): round(v, 2) for k, v in self.shots.items()},
            "random_baseline": round(self.random_baseline, 2),
            "tasks": self.tasks,
            "queries_per_task": self.queries_per_task,
            "per_family": {
                f: {str(k): round(v, 2) for k, v in acc.items()}
                for f, acc in self.per_family.items()
            },
            "labels": self.labels,
            "definition": self.definition,
        }


def icl_prompts(
    task: Task, k: int, queries: int, rng: random.Random, *, definition: bool = False
) -> tuple[list[str], list[tuple[str, ...]]]:
    """``queries`` prompts with k demonstrations from the task's other instances.

    The draws are :func:`tunelens.tasks.sampling.sample_queries_with_demos`.
    """
    style = PromptStyle(template="plain", definition=definition)
    prompts, references = [], []
    for query, demos in sample_queries_with_demos(task, k, queries, rng):
        prompts.append(render_prompt(task, query.input, demos, style))
        references.append(query.outputs)
    return prompts, references


def accuracy_at_k(
    loaded: LoadedModel,
    tasks: Sequence[Task],
    k: int,
    *,
    queries_per_task: int = 20,
    seed: int = 0,
    batch_size: int | None = None,
    definition: bool = False,
) -> dict[str, float]:
    """Exact-match accuracy (0-100) per task with k demonstrations: one k of the evaluation.

    Batches are sized by tokens (:func:`tunelens.models.predict.token_batches`)
    unless ``batch_size`` fixes them, so 16-shot prompts do not share a batch size
    with 0-shot ones.
    """
    from tunelens.models.predict import generate_predictions

    rng = random.Random(seed * 7919 + k)
    prompts, refs, owners = [], [], []
    for task in tasks:
        p, r = icl_prompts(task, k, queries_per_task, rng, definition=definition)
        prompts += p
        refs += r
        owners += [task.name] * len(p)
    predictions = generate_predictions(loaded, prompts, max_new_tokens=4, batch_size=batch_size)
    scores: dict[str, list[float]] = defaultdict(list)
    for name, pred, ref in zip(owners, predictions, refs, strict=True):
        scores[name].append(exact_match(pred, ref))
    return {task.name: sum(scores[task.name]) / len(scores[task.name]) for task in tasks}


def summarize(
    tasks: Sequence[Task],
    per_k: dict[int, dict[str, float]],
    queries_per_task: int,
    *,
    labels: str = "original",
    definition: bool = False,
) -> WorldEvalResult:
    """Per-task accuracies per k -> the averages over tasks, overall and per rule family."""
    per_family: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k, accuracies in per_k.items():
        for task in tasks:
            per_family[task.metadata.get("family", "other")][k].append(accuracies[task.name])
    random_baseline = sum(100.0 / len(t.labels or ("?",)) for t in tasks) / len(tasks)
    return WorldEvalResult(
        shots={k: sum(acc.values()) / len(acc) for k, acc in per_k.items()},
        random_baseline=random_baseline,
        tasks=len(tasks),
        queries_per_task=queries_per_task,
        per_family={
            f: {k: sum(v) / len(v) for k, v in acc.items()} for f, acc in per_family.items()
        },
        labels=labels,
        definition=definition,
    )


def evaluate_icl(
    loaded: LoadedModel,
    tasks: list[Task],
    shots: tuple[int, ...] = DEFAULT_SHOTS,
    *,
    queries_per_task: int = 20,
    seed: int = 0,
    batch_size: int | None = None,
    definition: bool = False,
) -> WorldEvalResult:
    """Few-shot exact-match accuracy per k, averaged over tasks (each task weighs the same)."""
    per_k = {
        k: accuracy_at_k(
            loaded,
            tasks,
            k,
            queries_per_task=queries_per_task,
            seed=seed,
            batch_size=batch_size,
            definition=definition,
        )
        for k in shots
    }
    return summarize(tasks, per_k, queries_per_task, definition=definition)


@register_experiment
class WorldEvalExperiment(Experiment):
    """``tunelens world eval`` (and a spec's ``world_eval`` section) as cells."""

    cli_module = "tunelens.experiments.world_eval.cli"

    name = "world_eval"
    section_model = WorldEvalSpec

    def fill_section(self, section: WorldEvalSpec, study: Any) -> WorldEvalSpec:
        """What the section inherits from the study (:func:`fill_world_eval`)."""
        return fill_world_eval(section, study)

    code_version = "4"  # 4: prefix groups above the break-even only; 3: token-sized batches
    results_model = WorldEvalResults

    def cells(self, section: WorldEvalSpec, inputs: StudyInputs) -> list[Cell]:
        from tunelens.tasks.world.relabel import relabel_tasks

        tasks = relabel_tasks(list(inputs.tasks(section.tasks)), section.labels)
        digests = {
            "tasks": inputs.task_digest(section.tasks),
            "model": inputs.model_digest(section.model),
        }
        common = section.model_dump(exclude={"shots"})
        return [
            self.cell(
                f"{section.model} k={k}",
                {**common, "k": k},
                section.seed,
                digests,
                {"tasks": tasks},
            )
            for k in section.shots
        ]

    # ------------------------------------------------------------ --limit and preflight
    # (tunelens.experiments.world_eval.plan)
    def limit_section(self, section: WorldEvalSpec, n: int) -> WorldEvalSpec:
        """At most n queries per task and k."""
        from tunelens.experiments.world_eval.plan import limit_section

        return limit_section(section, n)

    def preflight(self, section: WorldEvalSpec, inputs: StudyInputs, source: str | None) -> None:
        """Every task holds the largest k's demonstrations and a query, before a model loads."""
        from tunelens.experiments.world_eval.plan import preflight

        preflight(section, inputs, source)

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        p = cell.params
        loaded = context.load_model(p["model"], dtype=p["dtype"], device=p["device"])
        accuracies = accuracy_at_k(
            loaded,
            cell.data["tasks"],
            p["k"],
            queries_per_task=p["queries_per_task"],
            seed=p["seed"],
            definition=p["definition"],
        )
        return {"k": p["k"], "per_task": accuracies}

    def aggregate(
        self, section: WorldEvalSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        tasks = results[0][0].data["tasks"] if results else ()
        per_k = {int(r["k"]): r["per_task"] for _, r in results}
        from tunelens.experiments.world_eval.results import dump_world_eval

        summary = summarize(
            tasks,
            per_k,
            section.queries_per_task,
            labels=section.labels,
            definition=section.definition,
        ).to_json()
        return {"world_eval": dump_world_eval(summary)}

    # ------------------------------------------------------------ export and report
    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        """family x k accuracies (:mod:`tunelens.experiments.world_eval.tidy`)."""
        from tunelens.experiments.world_eval.tidy import tidy_rows

        return tidy_rows(results)

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        """No section of its own: its key, once read typed (a broken one is an input error),
        is shown as a generic table."""
        from tunelens.api.results import parse_file

        parse_file(WorldEvalResults, results, what="results")
        return None


# A small fixed evaluation recorded beside the shipped model (reference_eval.json);
# a test re-runs it through the generic loader and compares.
# It also records the definition-only accuracy (k = 0 with the definition first).
REFERENCE_SETTINGS: dict = {
    "tasks": 12,
    "shots": [0, 8],
    "queries_per_task": 10,
    "seed": 0,
    "definition_only": True,
}


def reference_eval(loaded: LoadedModel, heldout: list[Task]) -> dict:
    """The fixed small evaluation of REFERENCE_SETTINGS, as a JSON-ready dict."""
    s = REFERENCE_SETTINGS
    tasks = heldout[: s["tasks"]]
    common = {"queries_per_task": s["queries_per_task"], "seed": s["seed"]}
    result = evaluate_icl(loaded, tasks, tuple(s["shots"]), **common)
    definition = evaluate_icl(loaded, tasks, (0,), definition=True, **common)
    return {
        "settings": s,
        "shots": result.to_json()["shots"],
        "definition_only": round(definition.shots[0], 2),
    }
