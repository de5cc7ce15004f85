"""decide.html's token-shift part: per tuned method, how the untuned model ranks the tokens
of its answers (Lin et al. 2023), with its reading, a figure and the most shifted tokens.

Reads decide.json's ``methods[].token_shift`` (:mod:`tunelens.experiments.decide.token_shift`)
as plain data; ``templates/token_shift.html.j2`` (included by ``decide.html.j2``) shows
the ``token_shift`` variable. A decide.json without it shows nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tunelens.measures.token_shift import BUCKETS
from tunelens.report.html import data_uri, fmt, glossary, most_shifted_table
from tunelens.report.plots import mean_ci, plt, save

__all__ = ["MEASURES", "token_shift_figure", "token_shift_images", "token_shift_view"]

MEASURES: dict[str, tuple[str, str]] = {
    "unshifted": (
        "unshifted (%)",
        "percent of the tuned method's answer tokens that the untuned model ranks first given "
        "the same prefix, mean over test items",
    ),
    "marginal": ("marginal (%)", "percent it ranks second or third"),
    "shifted": ("shifted (%)", "percent it ranks below third"),
    "label_or_format": (
        "label or format (% of shifted)",
        "shifted tokens that are tokens of the labels or format tokens (no letter or digit, "
        "or end of sequence), over items with a shifted token",
    ),
    "format_like": (
        "format-like (% of shifted)",
        "shifted format tokens, and shifted label tokens where the untuned model's top-1 was "
        "not a label",
    ),
    "n_positions": ("tokens", "answer tokens read, stop token included"),
}
COLOURS = {"unshifted": "#2ca02c", "marginal": "#ffbf00", "shifted": "#d62728"}
TOKENS_SHOWN = 8


def _shifted_methods(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        m
        for m in data.get("methods") or []
        if isinstance(m, Mapping) and isinstance(m.get("token_shift"), Mapping)
    ]


def token_shift_figure(methods: Sequence[Mapping[str, Any]]) -> Figure:
    """Per tuned method, its answer tokens by rank under the untuned model (stacked means),
    with the shifted share's 95% interval over items."""
    fig, ax = plt.subplots(figsize=(7, max(1.8, 0.36 * len(methods) + 1.2)), dpi=100)
    ys = list(range(len(methods)))
    start = [0.0] * len(methods)
    for bucket in BUCKETS:
        means = [mean_ci(m["token_shift"].get(bucket))[0] or 0.0 for m in methods]
        ax.barh(ys, means, left=start, color=COLOURS[bucket], label=MEASURES[bucket][0])
        start = [a + b for a, b in zip(start, means, strict=True)]
    for y, method in zip(ys, methods, strict=True):
        mean, lo, hi = mean_ci(method["token_shift"].get("shifted"))
        if mean is not None and lo is not None and hi is not None:
            ax.errorbar(
                [100 - mean],
                [y],
                xerr=[[hi - mean], [mean - lo]],
                color="black",
                capsize=2,
                linewidth=0.8,
            )
    ax.set_yticks(ys, [str(m.get("name")) for m in methods], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("percent of answer tokens (mean over test items)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def token_shift_view(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``token_shift`` variable of decide.html.j2 (None without a measured method)."""
    methods = _shifted_methods(data)
    if not methods:
        return None
    keys = [*BUCKETS, "label_or_format", "format_like", "n_positions"]
    return {
        "readings": [str(m["token_shift"].get("reading") or "") for m in methods],
        "table": {
            "columns": ["method", *(MEASURES[k][0] for k in keys)],
            "rows": [
                [str(m.get("name")), *(fmt(m["token_shift"].get(k)) for k in keys)] for m in methods
            ],
            "glossary": glossary(keys, MEASURES),
        },
        "tokens": [
            {
                "name": str(m.get("name")),
                "table": most_shifted_table(m["token_shift"].get("top_shifted"), TOKENS_SHOWN),
            }
            for m in methods
        ],
    }


def token_shift_images(view: Mapping[str, Any], plots: Path) -> dict[str, str]:
    """``plots/decide_token_shift.png`` as ``{"token_shift": data URI}``, where a tuned method
    has a token shift (else nothing)."""
    methods = _shifted_methods(view)
    if not methods:
        return {}
    path = save(token_shift_figure(methods), plots / "decide_token_shift.png")
    return {"token_shift": data_uri(path)}
