"""The audit's token-shift part of report.html: a table per tuned condition, a figure, the
most shifted tokens and one verdict line for the box at the top.

Reads results.json ``audit_token_shift`` (:mod:`tunelens.experiments.audit.token_shift`)
as plain data; ``templates/token_shift.html.j2`` (included by ``audit.html.j2``) shows
``section.view.token_shift``. Results without the key show nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tunelens.measures.token_shift import BUCKETS
from tunelens.report.html import data_uri, fmt, glossary, most_shifted_table
from tunelens.report.plots import mean_ci, plt, save

__all__ = [
    "MEASURES",
    "condition_name",
    "token_shift_figure",
    "token_shift_lines",
    "token_shift_view",
]

KEY = "audit_token_shift"
FIGURE = "audit_token_shift.png"
MEASURES: dict[str, tuple[str, str]] = {
    "unshifted": (
        "unshifted (%)",
        "percent of the tuned model's output tokens that the untuned model ranks first given "
        "the same prefix, mean over tasks",
    ),
    "marginal": ("marginal (%)", "percent it ranks second or third"),
    "shifted": ("shifted (%)", "percent it ranks below third"),
    "label_or_format": (
        "label or format (% of shifted)",
        "shifted tokens that are tokens of the task's labels or format tokens (no letter or "
        "digit, or end of sequence), over tasks with a shifted token",
    ),
    "format_like": (
        "format-like (% of shifted)",
        "shifted format tokens, and shifted label tokens where the untuned model's top-1 was "
        "not a label (tuning moved the answer into the label space)",
    ),
    "n_positions": ("tokens", "output tokens read, stop token included"),
}
COLOURS = {"unshifted": "#2ca02c", "marginal": "#ffbf00", "shifted": "#d62728"}
ENCODING_WORDS = {
    "definition_only": "definition only",
    "definition_examples": "definition + 2 examples",
}
TOKENS_SHOWN = 8
# above each panel, clear of the bars
LEGEND: dict[str, Any] = {
    "fontsize": 7,
    "loc": "lower center",
    "bbox_to_anchor": (0.5, 1.0),
    "ncol": 3,
    "frameon": False,
}


def _rows(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    section = data.get(KEY)
    if not isinstance(section, Mapping):
        return []
    return [r for r in section.get("conditions") or [] if isinstance(r, Mapping)]


def condition_name(condition: Mapping[str, Any], varying: Sequence[str] = ()) -> str:
    """'original definition, delusive examples' (+ 'n=5', 'seed 1' where those vary)."""
    parts = [
        f"{condition.get('definition')} definition, {condition.get('examples')} examples",
        f"n={condition.get('instances_per_task')}" if "instances_per_task" in varying else "",
        f"seed {condition.get('seed')}" if "seed" in varying else "",
    ]
    return ", ".join(p for p in parts if p)


def _varying(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        key
        for key in ("instances_per_task", "seed")
        if len({str((r.get("condition") or {}).get(key)) for r in rows}) > 1
    ]


def _encoding(row: Mapping[str, Any]) -> str:
    encoding = str((row.get("condition") or {}).get("encoding"))
    return ENCODING_WORDS.get(encoding, encoding)


def _table(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    keys = [*BUCKETS, "label_or_format", "format_like", "n_positions"]
    varying = _varying(rows)
    return {
        "columns": ["tuned with", "evaluated with", *(MEASURES[k][0] for k in keys)],
        "rows": [
            [condition_name(r.get("condition") or {}, varying), _encoding(r)]
            + [fmt(r.get(k)) for k in keys]
            for r in rows
        ],
        "glossary": glossary(keys, MEASURES),
    }


def token_shift_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Per tuned condition: the three shares stacked (left) and the shifted share and its
    format-like part with 95% intervals over tasks (right)."""
    varying = _varying(rows)
    labels = [f"{condition_name(r['condition'], varying)} [{_encoding(r)}]" for r in rows]
    height = max(2.6, 0.34 * len(rows) + 1.6)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, height), dpi=100, sharey=True)
    ys = list(range(len(rows)))
    start = [0.0] * len(rows)
    for bucket in BUCKETS:
        means = [mean_ci(r.get(bucket))[0] or 0.0 for r in rows]
        left.barh(ys, means, left=start, color=COLOURS[bucket], label=MEASURES[bucket][0])
        start = [a + b for a, b in zip(start, means, strict=True)]
    left.set_xlim(0, 100)
    left.set_xlabel("percent of output tokens (mean over tasks)", fontsize=8)
    left.legend(**LEGEND)
    for offset, key, colour in ((-0.18, "shifted", "#d62728"), (0.18, "format_like", "#7f7f7f")):
        stats = [mean_ci(r.get(key)) for r in rows]
        means = [m if m is not None else 0.0 for m, _, _ in stats]
        errors = [
            [m - lo if lo is not None and m is not None else 0.0 for m, lo, _ in stats],
            [hi - m if hi is not None and m is not None else 0.0 for m, _, hi in stats],
        ]
        right.barh(
            [y + offset for y in ys],
            means,
            height=0.36,
            xerr=errors,
            color=colour,
            capsize=2,
            error_kw={"linewidth": 0.8},
            label=MEASURES[key][0],
        )
    right.axvline(50, color="#57606a", linestyle="--", linewidth=0.8)
    right.set_xlim(0, 105)
    right.set_xlabel("percent, 95% CI over tasks", fontsize=8)
    right.legend(**LEGEND)
    left.set_yticks(ys, labels, fontsize=7)
    left.invert_yaxis()
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def token_shift_view(data: Mapping[str, Any], plots_dir: Path) -> dict[str, Any] | None:
    """What ``token_shift.html.j2`` reads (``plots/audit_token_shift.png`` written), or None
    where the results hold no token shift."""
    rows = _rows(data)
    if not rows:
        return None
    section = data[KEY]
    path = save(token_shift_figure(rows), Path(plots_dir) / FIGURE)
    varying = _varying(rows)
    return {
        "verdict": str(section.get("verdict") or ""),
        "figure": data_uri(path),
        "caption": "Left: the tuned model's output tokens by their rank under the untuned "
        "model (1: unshifted, 2-3: marginal, lower: shifted). Right: the shifted share and, "
        "of the shifted tokens, the format-like share, 95% CIs over tasks; past 50% (dashed) "
        "the shift is mostly format.",
        "table": _table(rows),
        "tokens": [
            {
                "name": f"{condition_name(r['condition'], varying)}, {_encoding(r)}",
                "table": most_shifted_table(r.get("top_shifted"), TOKENS_SHOWN),
            }
            for r in rows
        ],
        "definition": [[str(k), str(v)] for k, v in (section.get("definition") or {}).items()],
    }


def token_shift_lines(data: Mapping[str, Any]) -> list[list[str]]:
    """The verdict box's line on token shift (none without it)."""
    section = data.get(KEY)
    if not isinstance(section, Mapping) or not section.get("verdict"):
        return []
    return [["Which output tokens did tuning change?", str(section["verdict"])]]
