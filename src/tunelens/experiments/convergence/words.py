"""The convergence study's answer in sentences, computed from one results.json entry.

Every sentence is derived from numbers in the entry (no sentence is written
without the number that supports it), with these rules:

- a layer counts as "above the floor" when the one-sided Wilcoxon test
  ``icl_it>floor`` (matched centered ICL-IT cosine against its mismatched-pair
  floor) has ``p_holm`` below 0.05; the sentence quotes the largest threshold
  of 0.001 / 0.01 / 0.05 that every listed layer meets; layer 0 (the
  embeddings) is outside the family and never listed;
- a pooled finding is checked in each seed (``seed_agreement``);
- a share of the ICL gain is given only where that gain (ICL minus anchor
  label accuracy; "next-token accuracy" in results written before label
  scoring) is significant (its 95% CI excludes 0); a share or a
  difference whose CI is wider than :data:`UNDECIDED_WIDTH` (or includes 0,
  for a difference) is called "undecided";
- the last layer is left out of "which layer recovers the gain": there the
  ICL state gives ICL's distribution of the labels' first tokens exactly by
  construction (the whole label distribution where labels are single tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["UNDECIDED_WIDTH", "convergence_sentences", "layer_ranges"]

UNDECIDED_WIDTH = 0.6
"""A share whose 95% CI is wider than this (60 points) is reported as undecided."""

ALPHA = 0.05


def layer_ranges(layers: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> 'layers 1-3 and 5'; [4] -> 'layer 4'."""
    values = sorted(set(layers))
    if not values:
        return "no layer"
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    word = "layer" if len(values) == 1 else "layers"
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{word} {text}"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None


def _stat(value: Any) -> tuple[float | None, float | None, float | None]:
    if not isinstance(value, Mapping):
        return None, None, None
    ci = value.get("ci") or [None, None]
    return _num(value.get("mean")), _num(ci[0]), _num(ci[1])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _stat_text(value: Any, digits: int = 2) -> str:
    mean, lo, hi = _stat(value)
    return f"{_fmt(mean, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _share_text(value: Any) -> str:
    mean, lo, hi = _stat(value)
    return f"{_pct(mean)} [{_pct(lo)}, {_pct(hi)}]"


def _threshold(pvalues: Sequence[float]) -> str:
    worst = max(pvalues)
    for cut in (0.001, 0.01, 0.05):
        if worst < cut:
            return f"p_holm < {cut:g}"
    return f"p_holm < {ALPHA:g}"


def _floor_sentences(entry: Mapping[str, Any]) -> list[str]:
    layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
    tests = {
        row["layer"]: row.get("wilcoxon", {}).get("icl_it>floor")
        for row in layers
        if row.get("layer", 0) > 0
    }
    tests = {k: v for k, v in tests.items() if isinstance(v, Mapping)}
    if not tests:
        return []
    significant = {
        layer: p
        for layer, t in tests.items()
        if (p := _num(t.get("p_holm"))) is not None and p < ALPHA
    }
    out = []
    if significant:
        best = max(
            significant, key=lambda la: _stat(_row(layers, la).get("cos_centered_icl_it"))[0] or 0
        )
        row = _row(layers, best)
        out.append(
            f"ICL-IT centered cosine exceeds its mismatched-pair floor at "
            f"{layer_ranges(list(significant))} ({_threshold(list(significant.values()))}); "
            f"at layer {best} it is {_stat_text(row.get('cos_centered_icl_it'))} against a floor "
            f"of {_stat_text(row.get('floor_icl_it'))}."
        )
    else:
        smallest = min(
            (p for t in tests.values() if (p := _num(t.get("p_holm"))) is not None), default=None
        )
        out.append(
            "ICL-IT centered cosine does not exceed its mismatched-pair floor at any layer "
            f"after the embeddings (smallest p_holm {_fmt(smallest, 3)}): no convergence beyond "
            "what unrelated prompts share."
        )
    agreement = (entry.get("seed_agreement") or {}).get("icl_it>floor")
    if significant and isinstance(agreement, Mapping):
        per_seed = agreement.get("per_seed_layers") or {}
        holds = agreement.get("holds_in_every_seed") or []
        if len(per_seed) > 1:
            if sorted(holds) == sorted(significant):
                out.append(f"The finding holds in each of the {len(per_seed)} seeds on its own.")
            elif holds:
                out.append(
                    f"In each of the {len(per_seed)} seeds on its own it holds at "
                    f"{layer_ranges(holds)} only."
                )
            else:
                seeds = [s for s, v in per_seed.items() if set(v) & set(significant)]
                out.append(
                    "No layer is significant in every seed on its own "
                    f"(seeds with a significant layer: {', '.join(seeds) or 'none'}): the pooled "
                    "finding rests on pooling."
                )
    # Raw cosine against its raw floor: how much of the raw number is shared by anything.
    with_raw = [row for row in layers if row.get("layer", 0) > 0 and "floor_raw_icl_it" in row]
    if with_raw:
        row = with_raw[len(with_raw) // 2]
        raw, floor = _stat(row.get("cos_icl_it"))[0], _stat(row.get("floor_raw_icl_it"))[0]
        if raw is not None and floor is not None:
            shared = raw > 0 and floor >= 0.8 * raw
            out.append(
                f"Raw ICL-IT cosine reads {_fmt(raw)} at layer {row['layer']} and mismatched "
                f"pairs reach {_fmt(floor)}: "
                + (
                    "most of the raw number is shared by unrelated prompts."
                    if shared
                    else "the raw number is not mostly a shared offset here."
                )
            )
    return out


def _row(layers: Sequence[Mapping[str, Any]], layer: int) -> Mapping[str, Any]:
    return next((row for row in layers if row.get("layer") == layer), {})


def _accuracy_name(behaviour: Mapping[str, Any]) -> str:
    """What the entry's accuracy measures: label accuracy, or the first-token reading of
    results written before label scoring."""
    old = "next_token_accuracy" in behaviour and "label_accuracy" not in behaviour
    return "next-token accuracy" if old else "label accuracy"


def _patching_sentences(entry: Mapping[str, Any]) -> list[str]:
    rows = [r for r in entry.get("patching") or [] if isinstance(r, Mapping)]
    behaviour = entry.get("behaviour") or {}
    if not rows:
        return []
    measure = _accuracy_name(behaviour)
    gain, gain_lo, gain_hi = _stat(behaviour.get("icl_gain"))
    if gain is None or gain_lo is None or gain_hi is None or not (gain_lo > 0 or gain_hi < 0):
        return [
            f"ICL does not change {measure} significantly over the zero-shot anchor "
            f"(gain {_stat_text(behaviour.get('icl_gain'), 1)} points), so no share of an ICL "
            "gain is given for the patched states."
        ]
    layers = sorted({int(r["layer"]) for r in rows})
    last = max(layers)
    middle = [layer for layer in layers if 0 < layer < last] or [last]
    by = {(r["source"], int(r["layer"])): r for r in rows}
    icl = [(layer, by[("icl", layer)]) for layer in middle if ("icl", layer) in by]
    if not icl:
        return []
    best_layer, best = max(icl, key=lambda lr: _stat(lr[1].get("gain_share"))[0] or -1e9)
    mean, lo, hi = _stat(best.get("gain_share"))
    wide = lo is None or hi is None or hi - lo > UNDECIDED_WIDTH
    text = (
        f"ICL raises {measure} by {_stat_text(behaviour.get('icl_gain'), 1)} points; "
        f"patching the ICL state after layer {best_layer} recovers "
        f"{_share_text(best.get('gain_share'))} of that gain"
    )
    if wide:
        text += " (undecided: the interval is too wide)"
    it = by.get(("it", best_layer))
    if it is not None:
        _, it_lo, it_hi = _stat(it.get("gain_share"))
        it_wide = it_lo is None or it_hi is None or it_hi - it_lo > UNDECIDED_WIDTH
        text += f"; the IT state recovers {_share_text(it.get('gain_share'))}"
        if it_wide:
            text += " (undecided)"
    out = [text + "."]
    sufficient = [
        layer
        for layer, r in icl
        if (lo_ := _stat(r.get("gain_share"))[1]) is not None and lo_ > 0.5
    ]
    if sufficient:
        out.append(
            f"The ICL state alone carries most of the ICL behaviour (share's CI above 50%) from "
            f"{layer_ranges(sufficient)} on the way up; at the last layer it reproduces ICL's "
            "distribution of the labels' first tokens exactly, by construction."
        )
    else:
        out.append(
            "No intermediate layer's ICL state recovers more than half of the ICL gain with "
            "confidence (the last layer reproduces ICL's first label tokens by construction)."
        )
    return out


def _behaviour_sentences(entry: Mapping[str, Any]) -> list[str]:
    b = entry.get("behaviour")
    if not isinstance(b, Mapping):
        return []
    diff_mean, diff_lo, diff_hi = _stat(b.get("kl_anchor_minus_it"))
    old = _accuracy_name(b) == "next-token accuracy"
    where = "At the answer position" if old else "Over the labels"
    text = (
        f"{where} KL(ICL || IT) is {_stat_text(b.get('kl_icl_it'))} nats and "
        f"KL(ICL || anchor) {_stat_text(b.get('kl_icl_anchor'))}"
    )
    if diff_lo is not None and diff_hi is not None and diff_lo > 0:
        what = "next-token" if old else "label"
        text += f": tuning moves the {what} distribution toward ICL's"
    elif diff_lo is not None and diff_hi is not None and diff_hi < 0:
        text += ": the tuned model is further from ICL than the untuned anchor"
    else:
        text += ": whether tuning moves it toward ICL is undecided"
    text += f"; ICL and IT predictions agree on {_share_text(b.get('agreement'))} of pairs."
    scoring = b.get("scoring")
    free = scoring.get("first_token_rows") if isinstance(scoring, Mapping) else None
    if isinstance(free, int) and free > 0:
        text += (
            f" {free} pairs of free-text tasks (no label space) are read by the first-token "
            "distribution over the vocabulary."
        )
    return [text]


def _cka_sentence(entry: Mapping[str, Any]) -> list[str]:
    layers = [
        row
        for row in entry.get("layers") or []
        if isinstance(row, Mapping) and row.get("layer", 0) > 0
    ]
    values = [
        (row["layer"], v, _num(row.get("cka_icl_it")))
        for row in layers
        if (v := _num(row.get("cka_debiased_icl_it"))) is not None
    ]
    if not values:
        return []
    layer, debiased, biased = max(values, key=lambda t: t[1])
    return [
        f"Debiased linear CKA of ICL and IT states across anchors peaks at {_fmt(debiased)} "
        f"(layer {layer}; the biased estimator reads {_fmt(biased)} there)."
    ]


def convergence_sentences(entry: Mapping[str, Any]) -> list[str]:
    """The sentences that open one condition's block (may be empty for a bare entry)."""
    return [
        *_floor_sentences(entry),
        *_patching_sentences(entry),
        *_behaviour_sentences(entry),
        *_cka_sentence(entry),
    ]
