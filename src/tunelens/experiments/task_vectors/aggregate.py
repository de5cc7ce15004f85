"""Task-vector cells pooled into results.json ``task_vectors``: one entry per (model, control).

Per source of the vector (``icl``; ``it``, the tuned model's), per layer: the
patched zero-shot accuracy on dev and on test. The best layer is the one with
the highest dev accuracy pooled over tasks and seeds (ties: the lowest layer);
its test accuracy is reported, with its paired differences from zero-shot and
from ICL on the same test queries. Hendel et al.'s own reading, each task's
layer chosen on that task's dev sets, comes beside it (``per_task_best``).
Dev never enters a test number: it only chooses layers.

Every set is one query with its own demonstrations, so rows are independent
given a seed: intervals are 95% bootstrap intervals over the test queries of
every task and seed (clusters of one row; :func:`tunelens.measures.stats.cluster_mean_ci`),
and ``per_seed`` gives each seed's own numbers. Accuracies are in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelens.api import Cell
from tunelens.measures.stats import cluster_mean_ci, gain_share

__all__ = ["aggregate_task_vectors", "best_index", "condition_of"]

READINGS = ("zero_shot", "icl", "it")


def condition_of(params: dict[str, Any]) -> dict[str, Any]:
    """The factor values that name a condition (seed and task excluded)."""
    return {"model": params["model"], "control": params["control"]}


@dataclass
class Pooled:
    """Every row (set) of a condition's cells: its split, task, seed and readings."""

    split: np.ndarray  # "dev" / "test" per row
    task: list[str]
    seed: list[int]
    correct: dict[str, np.ndarray]  # reading -> [rows] 0/1
    patched: dict[str, np.ndarray]  # source -> [layers, rows] 0/1
    layers: list[int]

    @classmethod
    def of(cls, members: Sequence[tuple[Cell, dict[str, Any]]]) -> Pooled:
        ran = [(c, r) for c, r in members if not r.get("skipped")]
        layers = list(ran[0][1]["layers"]) if ran else []
        readings = [n for n in READINGS if all(n in r["correct"] for _, r in ran)]
        sources = [s for s in ("icl", "it") if all(s in r["patched"] for _, r in ran)]

        def cat(pick: Any) -> np.ndarray:
            return np.concatenate([np.asarray(pick(r), dtype=np.float64) for _, r in ran], axis=-1)

        return cls(
            split=np.asarray([s for _, r in ran for s in r["splits"]]),
            task=[r["task"] for _, r in ran for _ in r["splits"]],
            seed=[c.seed for c, r in ran for _ in r["splits"]],
            correct={n: cat(lambda r, n=n: r["correct"][n]) for n in readings} if ran else {},
            patched={s: cat(lambda r, s=s: r["patched"][s]) for s in sources} if ran else {},
            layers=layers,
        )

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def clusters(self, rows: np.ndarray) -> list[tuple[int, str, int]]:
        """One cluster per row: (seed, task, row), every set its own query."""
        return [(self.seed[i], self.task[i], int(i)) for i in rows]


def percent(values: np.ndarray, clusters: Sequence[object]) -> dict[str, Any]:
    """Mean and 95% bootstrap CI of 0/1 (or difference) values, in percent, with n."""
    if len(values) == 0:
        return {"mean": None, "ci": [None, None], "n": 0}
    stat = cluster_mean_ci(np.asarray(values, dtype=np.float64) * 100.0, clusters)
    return {**stat, "n": int(len(values))}


def best_index(dev_means: Sequence[float]) -> int:
    """The index of the highest dev accuracy; ties go to the lowest layer."""
    return int(np.argmax(np.asarray(dev_means, dtype=np.float64)))


def _transfer(minus_zero_shot: dict[str, Any]) -> dict[str, str]:
    """Does the vector carry the task to other queries? Read from the paired CI of
    (patched - zero-shot) on test at the dev-chosen layer."""
    low, high = minus_zero_shot["ci"]
    if low is not None and low > 0:
        return {"verdict": "above zero-shot", "why": "the paired 95% CI lies above 0"}
    if high is not None and high < 0:
        return {"verdict": "below zero-shot", "why": "the paired 95% CI lies below 0"}
    return {"verdict": "not distinguishable from zero-shot", "why": "the paired 95% CI holds 0"}


def _share(
    patched: np.ndarray, zero: np.ndarray, icl: np.ndarray, clusters: Sequence[object]
) -> dict[str, Any]:
    """Share of the ICL gain the vector recovers, only where the ICL gain is significant."""
    gain = percent(icl - zero, clusters)
    low = gain["ci"][0]
    if low is None or low <= 0:
        return {
            "mean": None,
            "ci": [None, None],
            "undecided": f"the ICL gain over zero-shot ({gain['mean']:.3g} points, 95% CI "
            f"{gain['ci'][0]:.3g} to {gain['ci'][1]:.3g}) is not above 0"
            if gain["mean"] is not None
            else "no test queries",
        }
    return gain_share(patched, zero, icl, clusters)


def _per_task_best(pooled: Pooled, source: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Each task's layer chosen on its own dev sets, its dev and test accuracy there; and
    every test row's hit at its own task's layer."""
    values = pooled.patched[source]
    tasks = list(dict.fromkeys(pooled.task))
    test_hits = np.zeros(len(pooled.split))
    rows_out = []
    for task in tasks:
        mine = np.asarray([t == task for t in pooled.task])
        dev = np.flatnonzero(mine & (pooled.split == "dev"))
        test = np.flatnonzero(mine & (pooled.split == "test"))
        i = best_index(values[:, dev].mean(axis=1)) if dev.size else 0
        test_hits[test] = values[i, test]
        rows_out.append(
            {
                "task": task,
                "layer": pooled.layers[i],
                "dev": float(values[i, dev].mean() * 100.0) if dev.size else None,
                "test": float(values[i, test].mean() * 100.0) if test.size else None,
                "n_test": int(test.size),
            }
        )
    return rows_out, test_hits


def source_block(pooled: Pooled, source: str) -> dict[str, Any]:
    """One source's per-layer curve, its dev-chosen layer read on test, and the per-task
    choice."""
    dev, test = pooled.rows("dev"), pooled.rows("test")
    dev_c, test_c = pooled.clusters(dev), pooled.clusters(test)
    values = pooled.patched[source]
    layers = [
        {
            "layer": layer,
            "dev": percent(values[i, dev], dev_c),
            "test": percent(values[i, test], test_c),
        }
        for i, layer in enumerate(pooled.layers)
    ]
    i = best_index([values[j, dev].mean() if dev.size else 0.0 for j in range(len(pooled.layers))])
    hits = values[i, test]
    zero, icl = pooled.correct["zero_shot"][test], pooled.correct["icl"][test]
    minus_zero = percent(hits - zero, test_c)
    per_task, own = _per_task_best(pooled, source)
    return {
        "layers": layers,
        "best_layer": pooled.layers[i],
        "best": {
            "layer": pooled.layers[i],
            "dev": layers[i]["dev"],
            "test": layers[i]["test"],
            "minus_zero_shot": minus_zero,
            "minus_icl": percent(hits - icl, test_c),
            "share_of_icl_gain": _share(hits, zero, icl, test_c),
        },
        "transfer": _transfer(minus_zero),
        "per_task": per_task,
        "per_task_best": percent(own[test], test_c),
    }


def _per_seed(pooled: Pooled, sources: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each seed's test accuracies: zero-shot, ICL, and each source at the pooled best layer."""
    out = []
    for seed in sorted(set(pooled.seed)):
        rows = np.asarray([i for i in pooled.rows("test") if pooled.seed[i] == seed], dtype=int)
        clusters = pooled.clusters(rows)
        entry: dict[str, Any] = {
            "seed": seed,
            "accuracy": {n: percent(v[rows], clusters) for n, v in pooled.correct.items()},
            "task_vector": {},
        }
        for source, block in sources.items():
            i = pooled.layers.index(block["best_layer"])
            entry["task_vector"][source] = percent(pooled.patched[source][i, rows], clusters)
        out.append(entry)
    return out


def _forwards(members: Sequence[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
    """Prompt forwards summed over the cells, and per task (mean over the condition's cells)."""
    ran = [r["forwards"] for _, r in members if not r.get("skipped")]
    total: dict[str, int] = {}
    for counts in ran:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + int(value)
    per_cell = {key: value / len(ran) for key, value in total.items()} if ran else {}
    return {"total": total, "per_task_seed": per_cell}


def _entry(members: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any]:
    """One condition's entry (see the module docstring)."""
    pooled = Pooled.of(members)
    test = pooled.rows("test")
    clusters = pooled.clusters(test)
    sources = {s: source_block(pooled, s) for s in pooled.patched}
    first = members[0][0].params
    ran = [r for _, r in members if not r.get("skipped")]
    accuracy = {n: percent(v[test], clusters) for n, v in pooled.correct.items()}
    zero = pooled.correct.get("zero_shot", np.zeros(0))[test]
    icl = pooled.correct.get("icl", np.zeros(0))[test]
    return {
        "condition": condition_of(first),
        "settings": {
            key: first.get(key)
            for key in ("k", "dummy_queries", "dev_sets", "test_sets", "template", "definition")
        },
        "seeds": sorted({c.seed for c, _ in members}),
        "tasks": list(dict.fromkeys(r["task"] for r in ran)),
        "skipped": [
            {"task": r["task"], "reason": r["skipped"]}
            for c, r in members
            if r.get("skipped") and c.seed == members[0][0].seed
        ],
        "n_dev": int(pooled.rows("dev").size),
        "n_test": int(test.size),
        "n_layers": ran[0]["n_layers"] if ran else None,
        "layer_labels": ran[0].get("layer_labels") if ran else None,
        "accuracy": accuracy,
        "icl_gain": percent(icl - zero, clusters),
        "sources": sources,
        "per_seed": _per_seed(pooled, sources),
        "forwards": _forwards(members),
    }


def aggregate_task_vectors(results: list[tuple[Cell, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per (model, control), pooled over tasks and seeds, validated as typed."""
    groups: dict[str, list[tuple[Cell, dict[str, Any]]]] = {}
    for cell, result in results:
        key = repr(sorted(condition_of(cell.params).items()))
        groups.setdefault(key, []).append((cell, result))
    entries = []
    for members in groups.values():
        members.sort(key=lambda m: (m[0].seed, str(m[1].get("task"))))
        entries.append(_entry(members))
    from tunelens.experiments.task_vectors.results import dump_task_vectors

    return dump_task_vectors(entries)
