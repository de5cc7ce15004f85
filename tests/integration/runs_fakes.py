"""Fake experiments for the run machinery: cheap, deterministic cells, realistic results.json.

They read the real spec sections (``convergence``: seeds x k; ``audit``: the
definition x examples grid) but compute numbers from a hash of the cell key, so
tests exercise the store, executors, resume and report without a model.
``delay`` seconds of sleep per cell make a run slow enough to kill part-way.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from tunelens.api import Cell, Experiment, RunContext, StudyInputs

XSS = "<script>alert(1)</script>"


def noise(key: str, i: int) -> float:
    """A deterministic number in [0, 1) from a cell key and an index."""
    digest = hashlib.sha256(f"{key}|{i}".encode()).digest()
    return int.from_bytes(digest[:6], "big") / 2**48


def stat(mean: float, width: float = 0.05) -> dict[str, Any]:
    return {"mean": round(mean, 6), "ci": [round(mean - width, 6), round(mean + width, 6)]}


class FakeConvergence(Experiment):
    """One cell per (k, seed); per-layer cosines rise with depth."""

    name = "convergence"

    def __init__(self, delay: float = 0.0, layers: int = 4):
        self.delay = delay
        self.layers = layers

    def cells(self, section: Any, inputs: StudyInputs | None = None) -> list[Cell]:
        return [
            Cell("convergence", f"k={k} seed={seed}", {"k": k, "device": "cpu"}, seed)
            for k in section.k
            for seed in section.seeds
        ]

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
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

    def aggregate(self, section: Any, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
        entries = []
        for k in section.k:
            members = [r for c, r in results if c.params["k"] == k]
            layers = []
            for layer in range(self.layers):
                entry: dict[str, Any] = {"layer": layer}
                for pair in ("icl_it", "anchor_icl", "anchor_it"):
                    values = [m["cos"][pair][layer] for m in members]
                    entry[f"cos_{pair}"] = stat(sum(values) / len(values), 0.02)
                entry["wilcoxon"] = {
                    comp: {
                        "statistic": float(10 + layer),
                        "p": 0.01 * (layer + 1),
                        "p_holm": min(1.0, 0.04 * (layer + 1)),
                        "effect": 0.5,
                    }
                    for comp in ("icl_it>anchor_icl", "icl_it>anchor_it")
                }
                layers.append(entry)
            acc = sum(m["acc"] for m in members) / len(members)
            entries.append(
                {
                    "condition": {
                        "model": "world",
                        "k": k,
                        "flip_fraction": 0.0,
                        "relevance": "same",
                        "definition": False,
                        "control": "none",
                    },
                    "n_pairs": section.n_pairs * len(members),
                    "accuracy": {"anchor": stat(acc / 2), "icl": stat(acc), "it": stat(acc * 0.9)},
                    "layers": layers,
                }
            )
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
        out: dict[str, Any] = {}
        for metric in ("em", "rouge_l"):
            out[metric] = stat(sum(v[metric] for v in per_task.values()) / len(per_task), 5.0)
        out["per_category"] = {
            cat: {
                "em": stat(per_task[t]["em"], 3.0),
                "rouge_l": stat(per_task[t]["rouge_l"], 3.0),
                "tasks": 1,
            }
            for cat, t in zip(self.categories, self.tasks, strict=True)
        }
        out["per_task"] = per_task
        return out

    def aggregate(self, section: Any, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
        baselines: dict[str, Any] = {}
        grid = []
        for cell, result in results:
            if "baseline" in cell.params:
                baselines[cell.params["baseline"]] = self._summary(result)
            else:
                condition = {
                    k: cell.params[k] for k in ("definition", "examples", "instances_per_task")
                }
                entry = {"condition": {**condition, "seed": cell.seed}, **self._summary(result)}
                entry["format_share"] = stat(0.8)
                grid.append(entry)
        return {
            "audit": grid,
            "baselines": baselines,
            "audit_format_share": [
                {"instances_per_task": 5, "seed": 0, "simplified": {"em": stat(0.9)}}
            ],
        }


def fake_experiments(delay: float = 0.0) -> dict[str, Any]:
    return {"convergence": FakeConvergence(delay), "audit": FakeAudit(delay)}


def small_spec(note: str = f"fake study {XSS}"):
    """A real Spec with small sections: 2 k x 3 seeds + 4 baselines + 2 x 2 x 1 grid = 14 cells."""
    from tunelens.spec import AuditSpec, ConvergenceSpec, Spec

    return Spec(
        convergence=ConvergenceSpec(k=[2, 4], seeds=[0, 1, 2], n_pairs=5),
        audit=AuditSpec(definitions=["original", "simplified"], examples=["original", "none"]),
        note=note,
    )
