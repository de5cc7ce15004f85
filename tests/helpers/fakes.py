"""Fake experiments for the run machinery: cheap, deterministic cells, realistic results.json.

They read the real spec sections (``convergence``: seeds x k; ``audit``: the
definition x examples grid) but compute numbers from a hash of the cell key, so
tests exercise the store, executors, resume and report without a model.
``delay`` seconds of sleep per cell make a run slow enough to kill part-way.
Their results are built through the experiments' typed results models
(``tunelens.experiments.<name>.results``), so a fake has the real results.json
shape, and a renamed key fails here.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from tunelens.api import Cell, Experiment, RunContext, StudyInputs
from tunelens.api.results import Stat, WilcoxonTest
from tunelens.experiments.audit.results import (
    AuditCategoryScores,
    AuditCondition,
    AuditEntry,
    AuditFormatShareRow,
    AuditSections,
    AuditSummary,
    AuditTaskScores,
    Baselines,
    FormatShare,
    MetricShares,
)
from tunelens.experiments.convergence.results import (
    ConvergenceAccuracy,
    ConvergenceCondition,
    ConvergenceEntry,
    ConvergenceLayer,
    LayerStats,
    SeedStats,
)

XSS = "<script>alert(1)</script>"


def noise(key: str, i: int) -> float:
    """A deterministic number in [0, 1) from a cell key and an index."""
    digest = hashlib.sha256(f"{key}|{i}".encode()).digest()
    return int.from_bytes(digest[:6], "big") / 2**48


def stat(mean: float, width: float = 0.05) -> Stat:
    return Stat(mean=round(mean, 6), ci=[round(mean - width, 6), round(mean + width, 6)])


def share(mean: float) -> FormatShare:
    s = stat(mean)
    return FormatShare(mean=s.mean, ci=s.ci, tuning_gain=12.5)


class FakeConvergence(Experiment):
    """One cell per (k, seed); per-layer cosines rise with depth.

    ``die_once``: a path; the first cell to find it absent creates it and kills
    its own process (a worker lost mid-cell), so a retry must finish the run.
    """

    name = "convergence"

    def __init__(self, delay: float = 0.0, layers: int = 4, die_once: str | None = None):
        self.delay = delay
        self.layers = layers
        self.die_once = die_once

    def cells(self, section: Any, inputs: StudyInputs | None = None) -> list[Cell]:
        return [
            Cell("convergence", f"k={k} seed={seed}", {"k": k, "device": "cpu"}, seed)
            for k in section.k
            for seed in section.seeds
        ]

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        if self.die_once is not None:
            import os
            from pathlib import Path

            try:
                Path(self.die_once).touch(exist_ok=False)
            except FileExistsError:
                pass
            else:
                os._exit(1)
        for step in range(3):
            context.progress(f"fake {cell.name}", step + 1, 3)
        time.sleep(self.delay)
        return {
            "cos": {
                pair: [
                    0.5 + 0.1 * layer + 0.05 * noise(cell.key, layer * 3 + j)
                    for layer in range(self.layers)
                ]
                for j, pair in enumerate(("icl_it", "anchor_icl", "anchor_it"))
            },
            "acc": noise(cell.key, 99),
        }

    def _layers(self, members: list[dict[str, Any]], cka: bool) -> list[Any]:
        layers: list[Any] = []
        for layer in range(self.layers):
            cos = {}
            for pair in ("icl_it", "anchor_icl", "anchor_it"):
                values = [m["cos"][pair][layer] for m in members]
                cos[f"cos_{pair}"] = stat(sum(values) / len(values), 0.02)
            wilcoxon = {
                comp: WilcoxonTest(
                    statistic=float(10 + layer),
                    p=0.01 * (layer + 1),
                    p_holm=min(1.0, 0.04 * (layer + 1)),
                    effect=0.5,
                )
                for comp in ("icl_it>anchor_icl", "icl_it>anchor_it")
            }
            if cka:
                layers.append(
                    ConvergenceLayer(
                        layer=layer,
                        **cos,
                        wilcoxon=wilcoxon,
                        cka_icl_it=0.3 + 0.1 * layer,
                        cka_anchor_icl=0.2,
                        cka_anchor_it=0.1,
                    )
                )
            else:
                layers.append(LayerStats(layer=layer, **cos, wilcoxon=wilcoxon))
        return layers

    def aggregate(self, section: Any, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
        entries = []
        for k in section.k:
            members = [(c, r) for c, r in results if c.params["k"] == k]
            acc = sum(r["acc"] for _, r in members) / len(members)
            entry = ConvergenceEntry(
                condition=ConvergenceCondition(
                    model="world",
                    k=k,
                    flip_fraction=0.0,
                    relevance="same",
                    definition=False,
                    control="none",
                ),
                n_pairs=section.n_pairs * len(members),
                seeds=[c.seed for c, _ in members],
                accuracy=ConvergenceAccuracy(
                    anchor=stat(acc / 2), icl=stat(acc), it=stat(acc * 0.9)
                ),
                layers=self._layers([r for _, r in members], cka=True),
                per_seed=[
                    SeedStats(seed=c.seed, n_pairs=section.n_pairs, layers=self._layers([r], False))
                    for c, r in members
                ],
            )
            entries.append(entry.dump())
        return {"convergence": entries}


class FakeAudit(Experiment):
    """Baseline cells plus one cell per (definition, examples, seed); one task name is hostile."""

    name = "audit"
    tasks = ("task_a", f"task_{XSS}")
    categories = ("Sentiment", f"Cat {XSS}")

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def cells(self, section: Any, inputs: StudyInputs | None = None) -> list[Cell]:
        cells = [
            Cell("audit", f"baseline {b}", {"baseline": b}, 0)
            for b in ("untuned", "random", "copy_input", "copy_demo")
        ]
        cells += [
            Cell(
                "audit",
                f"def={d} ex={e} seed={s}",
                {"definition": d, "examples": e, "instances_per_task": 5},
                s,
            )
            for d in section.definitions
            for e in section.examples
            for s in section.seeds
        ]
        return cells

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        time.sleep(self.delay)
        return {
            "per_task": {
                t: {
                    "em": round(100 * noise(cell.key, i), 4),
                    "rouge_l": round(100 * noise(cell.key, 10 + i), 4),
                }
                for i, t in enumerate(self.tasks)
            }
        }

    def _summary(self, result: dict[str, Any]) -> dict[str, Any]:
        per_task = result["per_task"]
        n = len(per_task)
        summary = AuditSummary(
            em=stat(sum(v["em"] for v in per_task.values()) / n, 5.0),
            rouge_l=stat(sum(v["rouge_l"] for v in per_task.values()) / n, 5.0),
            per_category={
                cat: AuditCategoryScores(
                    em=stat(per_task[t]["em"], 3.0),
                    rouge_l=stat(per_task[t]["rouge_l"], 3.0),
                    tasks=1,
                )
                for cat, t in zip(self.categories, self.tasks, strict=True)
            },
            per_task={t: AuditTaskScores(**v) for t, v in per_task.items()},
        )
        return dict(summary)

    def aggregate(self, section: Any, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
        baselines: dict[str, Any] = {}
        grid = []
        for cell, result in results:
            if "baseline" in cell.params:
                baselines[cell.params["baseline"]] = self._summary(result)
            else:
                condition = AuditCondition(
                    **{k: cell.params[k] for k in ("definition", "examples", "instances_per_task")},
                    seed=cell.seed,
                )
                # format_share: a key the models do not name (the report shows it as is)
                entry = AuditEntry(
                    condition=condition, format_share=stat(0.8).dump(), **self._summary(result)
                )
                grid.append(entry)
        return AuditSections(
            audit=grid,
            baselines=Baselines(**baselines),
            audit_format_share=[
                AuditFormatShareRow(
                    instances_per_task=5,
                    seed=0,
                    simplified=MetricShares(em=share(0.9), rouge_l=share(0.85)),
                )
            ],
        ).dump()


def fake_experiments(delay: float = 0.0) -> dict[str, Any]:
    return {"convergence": FakeConvergence(delay), "audit": FakeAudit(delay)}


def small_spec(note: str = f"fake study {XSS}"):
    """A real Spec with small sections: 2 k x 3 seeds + 4 baselines + 2 x 2 x 1 grid = 14 cells."""
    from tunelens.experiments.audit.spec import AuditSpec
    from tunelens.experiments.convergence.spec import ConvergenceSpec
    from tunelens.spec import Spec

    return Spec(
        convergence=ConvergenceSpec(k=[2, 4], seeds=[0, 1, 2], n_pairs=5),
        audit=AuditSpec(definitions=["original", "simplified"], examples=["original", "none"]),
        note=note,
    )
