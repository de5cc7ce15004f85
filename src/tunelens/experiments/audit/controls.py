"""Each format-only control against tuning on the original definitions and examples.

A format share says how much of the tuning gain a control keeps, but it exists only
where the gain is significant and reads "undecided" over a wide band. Kung & Peng's
comparison is more direct: does tuning on a simplified definition, on no definition
or on delusive examples score lower than tuning on the original ones? Per (evaluation
encoding, instances per task, seed) each control gets the paired difference
control - original over the held-out tasks with its interval and n, and a verdict
(:func:`tunelens.measures.verdicts.difference_verdict`): lower or higher where the
interval excludes zero, equivalent where it lies within +/- the margin, else
undecided with roughly how many tasks would decide it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tunelens.measures.stats import unit_mean_ci
from tunelens.measures.verdicts import difference_verdict, units_to_decide

__all__ = ["compare_controls", "control_sentence"]

Scores = Mapping[str, Mapping[str, float]]  # task name -> metric -> score


def _difference(
    control: Scores, original: Scores, names: Sequence[str], metric: str, n_boot: int, seed: int
) -> dict[str, Any]:
    """mean(control - original) over the tasks both scored, with its interval, n and method."""
    d = np.array([control[n][metric] - original[n][metric] for n in names], dtype=float)
    return unit_mean_ci(d, seed=seed, n_resamples=n_boot)


def _comparison(
    name: str,
    condition: Mapping[str, str],
    control: Scores,
    original: Scores,
    metrics: Sequence[str],
    margin: float,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """One control: its differences per metric and the verdict on exact match."""
    names = [n for n in original if n in control]
    difference = {m: _difference(control, original, names, m, n_boot, seed) for m in metrics}
    em = difference["em"]
    verdict = difference_verdict(em, margin)
    return {
        "control": name,
        "definition": condition["definition"],
        "examples": condition["examples"],
        "difference": difference,
        "verdict": verdict,
        "decided": verdict != "undecided",
        "tasks_to_decide": units_to_decide(em) if verdict == "undecided" else None,
        "text": control_sentence(name, em, verdict, margin),
    }


def compare_controls(
    raw: Mapping[tuple[Any, ...], Scores],
    controls: Mapping[str, Mapping[str, str]],
    metrics: Sequence[str],
    margin: float,
    n_boot: int,
) -> list[dict[str, Any]]:
    """One row per (encoding, instances per task, seed) tuned on the original definitions
    and examples, with every control tuned at the same setting.

    ``raw`` maps (definition, examples, instances per task, seed, encoding) to per-task
    scores; ``controls`` names each control's (definition, examples).
    """
    rows = []
    for (definition, examples, n, seed, encoding), original in raw.items():
        if (definition, examples) != ("original", "original"):
            continue
        compared = [
            _comparison(name, cond, other, original, metrics, margin, n_boot, seed)
            for name, cond in controls.items()
            if (other := raw.get((cond["definition"], cond["examples"], n, seed, encoding)))
        ]
        if compared:
            rows.append(
                {
                    "encoding": encoding,
                    "instances_per_task": n,
                    "seed": seed,
                    "margin": margin,
                    "controls": compared,
                }
            )
    return rows


WORDS = {
    "simplified": "a simplified definition",
    "delusive": "delusive examples",
    "no_definition": "no definition",
}


def control_sentence(name: str, em: Mapping[str, Any], verdict: str, margin: float) -> str:
    """The verdict in words: the difference, its interval and n, and what it decides."""
    lo, hi = em["ci"]
    span = f"{em['mean']:+.1f} EM [{lo:.1f}, {hi:.1f}], n = {em['n']}"
    what = f"tuned on {WORDS.get(name, name)} against the original"
    reading = {
        "lower": "lower (the interval excludes zero)",
        "higher": "higher (the interval excludes zero)",
        "equivalent": f"no gap larger than {margin:g} EM (the interval lies within +/- {margin:g})",
        "undecided": f"undecided (the interval spans zero and reaches beyond +/- {margin:g})",
    }[verdict]
    return f"{what}: {span}: {reading}"
