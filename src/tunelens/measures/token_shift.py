"""Token distribution shift: which tuned-model output tokens the untuned model would not pick.

After Lin et al., "The Unlocking Spell on Base LLMs: Rethinking Alignment via
In-Context Learning" (2023; URIAL, the AlignTDS analysis): decode greedily with
the tuned model; at every position of that output, rank the tuned model's token
under the untuned model given the same prefix (:mod:`tunelens.models.token_ranks`).
A position is

- **unshifted** where the token is the untuned model's top-1 (rank 1),
- **marginal** at rank 2 or 3,
- **shifted** below that (rank > 3).

They found 7.8% shifted for Llama-2-7b-chat against its base, mostly stylistic
and format tokens. Here each token is also put in one category:

- **label**: one of the tokens of the task's labels (each label tokenised as the
  answer it is trained as, ``" " + label``, and alone);
- **format**: a special token (end of sequence) or a token with no letter or digit
  (whitespace, newline, punctuation, symbols);
- **other**: everything else.

A shifted label token is further split by what the untuned model preferred there:
*into the label space* (its top-1 was not a label token: tuning made the model answer
inside the label space, a format change) or *between labels* (its top-1 was another
label token: tuning changed which answer, the input-output mapping). For Kung & Peng's
question the "format-like" share of the shifted positions is format + into the label
space.

Statistics (:func:`summarise`): shares are percents of positions within a unit (a
task in the audit, an item in ``decide``), then a mean over units with the interval of
:func:`tunelens.measures.stats.unit_mean_ci` (a t-interval below 10 units), ``n`` the
units; the shares of kinds among shifted positions are taken over the units that have
a shifted position. Everything here is arithmetic on stored ranks: no model.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelens.measures.stats import unit_mean_ci

__all__ = [
    "BUCKETS",
    "CATEGORIES",
    "KINDS",
    "MARGINAL_MAX_RANK",
    "Position",
    "is_format_text",
    "positions_of",
    "rank_bucket",
    "shift_kind",
    "shift_reading",
    "summarise",
    "token_category",
    "top_shifted",
]

#: The untuned model's top-1: unshifted. Ranks up to this are marginal; below, shifted.
MARGINAL_MAX_RANK = 3
BUCKETS = ("unshifted", "marginal", "shifted")
CATEGORIES = ("label", "format", "other")
#: What a shifted position is: a format token, a label token where the untuned model's top-1
#: was not a label (into the label space), a label token where it was another label
#: (between labels), or another token.
KINDS = ("format", "into_label_space", "between_labels", "other")
FORMAT_LIKE = ("format", "into_label_space")
TOP_TOKENS = 10


def rank_bucket(rank: int) -> str:
    """``unshifted`` (rank 1), ``marginal`` (2-3) or ``shifted`` (> 3)."""
    if rank < 1:
        raise ValueError(f"a rank starts at 1, got {rank}")
    if rank == 1:
        return "unshifted"
    return "marginal" if rank <= MARGINAL_MAX_RANK else "shifted"


def is_format_text(text: str) -> bool:
    """Whether a token's text has no letter and no digit (whitespace, punctuation, symbols)."""
    return not any(unicodedata.category(ch)[0] in "LN" for ch in text)


def token_category(
    token_id: int, text: str, label_ids: Collection[int], special_ids: Collection[int]
) -> str:
    """``label`` (a token of the task's labels), ``format`` (special, or no letter or digit)
    or ``other``. A label token stays ``label`` even where it is punctuation."""
    if token_id in label_ids:
        return "label"
    if token_id in special_ids or is_format_text(text):
        return "format"
    return "other"


def shift_kind(category: str, top_id: int, label_ids: Collection[int]) -> str:
    """A shifted position's kind (:data:`KINDS`) from its token's category and the untuned
    model's top-1 there."""
    if category != "label":
        return category
    return "between_labels" if top_id in label_ids else "into_label_space"


@dataclass(frozen=True)
class Position:
    """One output token of a tuned model, read under the untuned model."""

    unit: str  # the task (audit) or item (decide) it belongs to
    token_id: int
    text: str
    rank: int
    top_id: int
    category: str

    @property
    def bucket(self) -> str:
        return rank_bucket(self.rank)


def positions_of(
    samples: Sequence[Mapping[str, Any]],
    label_ids: Mapping[str, Collection[int]],
    special_ids: Collection[int],
    *,
    unit_key: str = "task",
) -> tuple[list[Position], dict[str, set[int]]]:
    """Every output position of ``samples`` (each with ``output_ids``, ``output_texts``,
    ``base_ranks``, ``base_top_ids`` and its task), and per unit the label ids its positions
    were categorised with. Samples without ranks (older cells) give none."""
    out: list[Position] = []
    labels_of_unit: dict[str, set[int]] = {}
    for sample in samples:
        ranks = sample.get("base_ranks")
        if ranks is None:
            continue
        unit = str(sample[unit_key])
        labels = set(label_ids.get(str(sample.get("task", "")), ()))
        labels_of_unit[unit] = labels
        for token, text, rank, top in zip(
            sample["output_ids"],
            sample["output_texts"],
            ranks,
            sample["base_top_ids"],
            strict=True,
        ):
            category = token_category(int(token), str(text), labels, special_ids)
            out.append(Position(unit, int(token), str(text), int(rank), int(top), category))
    return out, labels_of_unit


def _percent_over_units(
    values: Mapping[str, float], n_boot: int, seed: int
) -> dict[str, Any] | None:
    """Mean over units of a per-unit percent with its interval and n; None without units."""
    if not values:
        return None
    stat = unit_mean_ci(np.array(list(values.values()), dtype=float), seed=seed, n_resamples=n_boot)
    ci = [c if isinstance(c, float) and math.isfinite(c) else None for c in stat["ci"]]  # type: ignore[union-attr]
    return {**stat, "ci": ci}


def top_shifted(positions: Sequence[Position], limit: int = TOP_TOKENS) -> dict[str, list[Any]]:
    """Per category, the tokens shifted most often: text, id, times shifted, times output
    (most shifted first, then by text)."""
    shifted: dict[str, Counter[tuple[int, str]]] = {c: Counter() for c in CATEGORIES}
    seen: Counter[tuple[int, str]] = Counter()
    for p in positions:
        seen[(p.token_id, p.text)] += 1
        if p.bucket == "shifted":
            shifted[p.category][(p.token_id, p.text)] += 1
    return {
        category: [
            {"token": text, "id": token, "shifted": n, "occurrences": seen[(token, text)]}
            for (token, text), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1]))[
                :limit
            ]
        ]
        for category, counts in shifted.items()
    }


def summarise(
    positions: Sequence[Position],
    labels_of_unit: Mapping[str, Collection[int]],
    *,
    n_boot: int,
    seed: int = 0,
    unit: str = "task",
) -> dict[str, Any] | None:
    """Shares of unshifted / marginal / shifted positions (percent, a mean over units with its
    interval and ``n`` units), their counts, the shifted positions by kind (counts, and the
    label-or-format and format-like percents over units), the most shifted tokens, and each
    unit's shares. None without positions."""
    if not positions:
        return None
    by_unit: dict[str, list[Position]] = defaultdict(list)
    for p in positions:
        by_unit[p.unit].append(p)
    out: dict[str, Any] = {"unit": unit, "n_units": len(by_unit), "n_positions": len(positions)}
    per_unit: dict[str, dict[str, Any]] = {}
    for name, members in by_unit.items():
        buckets = Counter(p.bucket for p in members)
        per_unit[name] = {b: 100.0 * buckets[b] / len(members) for b in BUCKETS}
        per_unit[name]["positions"] = len(members)
    for bucket in BUCKETS:
        out[bucket] = _percent_over_units({n: v[bucket] for n, v in per_unit.items()}, n_boot, seed)
    out["counts"] = dict(Counter(p.bucket for p in positions))
    out["counts"] = {b: int(out["counts"].get(b, 0)) for b in BUCKETS}
    out.update(_kinds(by_unit, labels_of_unit, n_boot, seed))
    out["top_shifted"] = top_shifted(positions)
    out["per_unit"] = {n: {k: round(v, 4) for k, v in s.items()} for n, s in per_unit.items()}
    return out


def _kinds(
    by_unit: Mapping[str, Sequence[Position]],
    labels_of_unit: Mapping[str, Collection[int]],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Shifted positions by kind: counts, and per unit with a shifted position the percent
    that is a label or format token and the percent that is format-like."""
    counts: Counter[str] = Counter()
    label_or_format: dict[str, float] = {}
    format_like: dict[str, float] = {}
    for name, members in by_unit.items():
        kinds = [
            shift_kind(p.category, p.top_id, labels_of_unit.get(name, ()))
            for p in members
            if p.bucket == "shifted"
        ]
        counts.update(kinds)
        if kinds:
            label_or_format[name] = 100.0 * sum(k != "other" for k in kinds) / len(kinds)
            format_like[name] = 100.0 * sum(k in FORMAT_LIKE for k in kinds) / len(kinds)
    return {
        "shifted_by_kind": {k: int(counts.get(k, 0)) for k in KINDS},
        "label_or_format": _percent_over_units(label_or_format, n_boot, seed),
        "format_like": _percent_over_units(format_like, n_boot, seed),
    }


def _pct(stat: Mapping[str, Any] | None) -> str:
    """'7.8% [5.1, 10.4]' (three significant figures), or 'n/a'."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    lo, hi = stat["ci"]

    def g(x: Any) -> str:
        return f"{x:.3g}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"

    return f"{g(stat['mean'])}% [{g(lo)}, {g(hi)}]"


def shift_reading(summary: Mapping[str, Any] | None, what: str = "tuning") -> str:
    """One sentence: how much ``what`` shifted the output, what shifted, and what that says
    about Kung & Peng's question (is the gain format?)."""
    if not summary:
        return "No token shift was measured (no tuned output with ranks)."
    unit = "tasks" if summary.get("unit") == "task" else "items"
    shifted = summary.get("shifted") or {}
    head = (
        f"{what} moved {_pct(shifted)} of its output tokens below the untuned model's top 3 "
        f"(n = {summary['n_units']} {unit}, {summary['n_positions']} tokens)"
    )
    like = summary.get("format_like")
    if not like or like.get("mean") is None:
        return f"{head}; none was shifted, so there is no shift to call format or content."
    label_or_format = _pct(summary.get("label_or_format"))
    body = (
        f"; {label_or_format} of the shifted tokens are label-space or format tokens and "
        f"{_pct(like)} are format-like (format tokens, or a label where the untuned model "
        "preferred no label), n = "
        f"{like['n']} {unit}"
    )
    lo, hi = like["ci"]
    if lo is not None and lo > 50:
        reading = (
            ": mostly format, so by Kung & Peng's reading the gain is the output format, "
            "not the task"
        )
    elif hi is not None and hi < 50:
        reading = (
            ": mostly not format (a different label or other content), so tuning changed "
            "the answers, not only their form"
        )
    else:
        reading = ": the interval spans 50%, so format against content is undecided here"
    return head + body + reading + "."
