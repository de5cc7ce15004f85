"""Per-architecture sanity checks on captured hidden states.

**Cross-pair similarity.** Every prompt of a study ends in the same tokens
(``Output:``), so a model whose last-token state is dominated by that token's
own embedding gives nearly the same state for every pair; then every cosine,
ICL-IT included, reads about 1.0 and says nothing about ICL or tuning. A tiny
randomly initialised Gemma is the example: with ``initializer_range`` 0.02
its blocks add about 1/50 of the embedding's norm, and Gemma multiplies the
embeddings by sqrt(hidden size), so states of different pairs have cosine
0.999 at every layer (docs/how_to/own_model.md, "Per-architecture sanity").

:func:`cross_pair_cosine` measures it: per layer, the mean cosine between the
states of *different* pairs of one side (anchor, ICL or IT). :func:`annotate`
adds it to a convergence entry's layers, with the stack labels of
:mod:`tunelens.models.layers`, and a warning when one side's states are nearly
identical across pairs at every layer of a stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["NEAR_IDENTICAL", "annotate", "cross_pair_cosine", "cross_pair_readings"]

NEAR_IDENTICAL = 0.99
"""Cross-pair cosine at or above which a layer's states count as nearly identical."""

SIDES = ("anchor", "icl", "it")


def cross_pair_cosine(states: np.ndarray) -> list[float | None]:
    """Per layer, the mean cosine between states of different pairs; ``states`` [pairs, L, d].

    None for a layer where fewer than two pairs have a non-zero state.
    """
    states = np.asarray(states, dtype=np.float64)
    out: list[float | None] = []
    for layer in range(states.shape[1]):
        h = states[:, layer]
        norms = np.linalg.norm(h, axis=-1)
        h = h[norms > 0] / norms[norms > 0, None]
        n = h.shape[0]
        if n < 2:
            out.append(None)
            continue
        gram = h @ h.T
        out.append(round(float((gram.sum() - np.trace(gram)) / (n * n - n)), 7))
    return out


def cross_pair_readings(
    h_anchor: np.ndarray, h_icl: np.ndarray, h_it: np.ndarray
) -> dict[str, list[float | None]]:
    """:func:`cross_pair_cosine` of each side, for a cell's result."""
    return {
        "anchor": cross_pair_cosine(h_anchor),
        "icl": cross_pair_cosine(h_icl),
        "it": cross_pair_cosine(h_it),
    }


def _mean_over_seeds(readings: Sequence[Mapping[str, Sequence[float | None]]], side: str, n: int):
    values = []
    for layer in range(n):
        xs = [r[side][layer] for r in readings if len(r[side]) == n]
        present = [float(x) for x in xs if x is not None]
        values.append(round(float(np.mean(present)), 6) if present else None)
    return values


def annotate(entry: dict[str, Any], results: Sequence[Mapping[str, Any]]) -> None:
    """Label ``entry``'s layers by stack and add cross-pair cosines and warnings (in place).

    ``results`` are the condition's cell results (one per seed). Cells without
    ``layer_labels`` / ``cross_pair_cos`` (from before these checks) add nothing.
    """
    layers = entry.get("layers") or []
    n = len(layers)
    labels = next((r["layer_labels"] for r in results if r.get("layer_labels")), None)
    if labels is not None and len(labels) == n:
        for row, label in zip(layers, labels, strict=True):
            row.update(label)
        for seed in entry.get("per_seed") or []:
            for row, label in zip(seed.get("layers") or [], labels, strict=False):
                row.update(label)
    readings = [r["cross_pair_cos"] for r in results if r.get("cross_pair_cos")]
    if not readings or not n:
        return
    stacks = [(row.get("stack") or "all") for row in layers]
    values = {side: _mean_over_seeds(readings, side, n) for side in SIDES}
    for side in SIDES:
        for row, value in zip(layers, values[side], strict=True):
            row[f"cross_pair_cos_{side}"] = value
    warnings = list(entry.get("warnings") or [])
    for stack in dict.fromkeys(stacks):
        flat: list[tuple[str, float]] = []
        for side in SIDES:
            mine = [v for v, s in zip(values[side], stacks, strict=True) if s == stack]
            known = [v for v in mine if v is not None]
            if mine and len(known) == len(mine) and min(known) >= NEAR_IDENTICAL:
                flat.append((side.upper() if side != "anchor" else side, min(known)))
        if not flat:
            continue
        where = "every layer" if stack in ("all", "decoder-only") else f"every {stack} layer"
        sides = ", ".join(side for side, _ in flat)
        low = min(v for _, v in flat)
        warnings.append(
            f"{sides} states are nearly identical across pairs at {where} (cross-pair "
            f"cosine >= {low:.3f}): the last token's own embedding dominates them, so "
            "cosines there read near 1 whatever ICL or tuning do; read the centered "
            "cosines instead (docs/how_to/own_model.md: Per-architecture sanity)"
        )
    if warnings:
        entry["warnings"] = warnings
