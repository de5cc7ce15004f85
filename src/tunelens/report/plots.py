"""Figure helpers every report uses: per-layer curves with CIs, stat reading, PNG saving.

Only the Agg backend is used (no display, no GUI toolkit). Every function takes
plain results data and tolerates missing pieces (a curve whose values are
absent is left out) so a partial or older results file still gives a report.
PNG metadata carries no date, so equal results give equal images. Each
experiment draws its own figures from these (its ``report_part`` writes them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "CURVES",
    "Panel",
    "Plot",
    "condition_label",
    "cosine_panel",
    "layer_curve",
    "layer_figure",
    "mark_stacks",
    "mean_ci",
    "plt",
    "save",
    "shorten",
    "stat_values",
    "wrap_text",
]

CURVES = (
    ("cos_icl_it", "ICL vs IT", "#1f77b4"),
    ("cos_anchor_icl", "anchor vs ICL", "#ff7f0e"),
    ("cos_anchor_it", "anchor vs IT", "#2ca02c"),
)
"""The raw per-layer cosines of hidden states: (key, label, colour) of each curve."""

Panel = Callable[[Any], None]  # draws one panel of a layer figure on the axes it is given


@dataclass(frozen=True)
class Plot:
    """A written figure: its file, a caption and its section in the report."""

    path: Path
    caption: str
    section: str


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def mean_ci(stat: Any) -> tuple[float | None, float | None, float | None]:
    """(mean, lo, hi) of a {"mean", "ci": [lo, hi]} dict; None where absent."""
    if not isinstance(stat, Mapping):
        return _num(stat), None, None
    ci = stat.get("ci")
    lo, hi = (ci[0], ci[1]) if isinstance(ci, Sequence) and len(ci) == 2 else (None, None)
    return _num(stat.get("mean")), _num(lo), _num(hi)


def stat_values(stat: Any) -> tuple[float, float, float]:
    """(mean, lo, hi) as floats to plot: a missing mean is NaN (no point), a missing bound
    the mean (no error bar)."""
    mean, lo, hi = mean_ci(stat)
    m = mean if mean is not None else float("nan")
    return m, lo if lo is not None else m, hi if hi is not None else m


def condition_label(condition: Any) -> str:
    """'k=8, flip_fraction=0.0, ...' from a condition dict (any other value: its str)."""
    if isinstance(condition, Mapping):
        return ", ".join(f"{k}={v}" for k, v in condition.items())
    return str(condition)


def layer_curve(ax: Any, rows: Sequence[Mapping[str, Any]], key: str, **style: Any) -> None:
    """One per-layer mean with its CI band; an encoder-decoder's stacks drawn as two pieces."""
    stacks = [row.get("stack") for row in rows]
    if "encoder" in stacks and "decoder" in stacks:
        for n, stack in enumerate(("encoder", "decoder")):
            part = [row for row in rows if row.get("stack") == stack]
            _curve_piece(ax, part, key, **(style if n == 0 else {**style, "label": None}))
        return
    _curve_piece(ax, rows, key, **style)


def _curve_piece(ax: Any, rows: Sequence[Mapping[str, Any]], key: str, **style: Any) -> None:
    """One per-layer mean with its CI band from ``rows`` (absent values are skipped)."""
    xs: list[float] = []
    ms: list[float] = []
    los: list[float] = []
    his: list[float] = []
    for i, row in enumerate(rows):
        mean, lo, hi = mean_ci(row.get(key))
        if mean is None:
            continue
        layer = _num(row.get("layer"))
        xs.append(layer if layer is not None else i)
        ms.append(mean)
        los.append(lo if lo is not None else mean)
        his.append(hi if hi is not None else mean)
    if not xs:
        return
    ax.plot(xs, ms, marker="o", markersize=3, **style)
    ax.fill_between(xs, los, his, alpha=0.15, color=style.get("color"), linewidth=0)


def mark_stacks(ax: Any, layers: Sequence[Mapping[str, Any]]) -> None:
    """An encoder-decoder's layers on one axis: a line between the stacks, labelled ticks."""
    stacks = [(row.get("stack"), _num(row.get("layer")), row.get("label")) for row in layers]
    decoder = [x for stack, x, _ in stacks if stack == "decoder" and x is not None]
    if not decoder or not any(stack == "encoder" for stack, _, _ in stacks):
        return
    boundary = min(decoder) - 0.5
    ax.axvline(boundary, color="black", linewidth=0.8, linestyle="--")
    ax.text(
        boundary,
        1.0,
        "encoder | decoder ",
        transform=ax.get_xaxis_transform(),
        ha="center",
        va="bottom",
        fontsize=7,
    )
    if len(stacks) <= 16:
        ticks = [(x, str(label)) for _, x, label in stacks if x is not None and label]
        ax.set_xticks([x for x, _ in ticks], [label for _, label in ticks], rotation=90, fontsize=7)
    ax.set_xlabel("layer (enc: encoder, dec: decoder, emb: embeddings)")


def cosine_panel(layers: Sequence[Mapping[str, Any]]) -> Panel:
    """The panel of the raw cosines (:data:`CURVES`) of ``layers``, with its axis label."""

    def draw(ax: Any) -> None:
        for key, label, colour in CURVES:
            layer_curve(ax, layers, key, label=label, color=colour)
        ax.set_ylabel("raw cosine similarity")

    return draw


def layer_figure(
    layers: Sequence[Mapping[str, Any]], title: str, panels: Sequence[tuple[Panel, bool]]
) -> Figure:
    """Panels side by side over the layer axis, each ``(draw, mark_stacks)``; the title wraps.

    Every panel gets integer layer ticks, a grid and its legend; those marked also get an
    encoder-decoder's stack boundary and labels (:func:`mark_stacks`).
    """
    count = len(panels)
    fig, axes = plt.subplots(1, count, figsize=(5 * count, 4), dpi=100, squeeze=False)
    for ax, (draw, _) in zip(axes[0], panels, strict=True):
        draw(ax)
    for ax, (_, stacks) in zip(axes[0], panels, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (0 = embeddings)")
        if stacks:
            mark_stacks(ax, layers)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(wrap_text(title, 60 * count), fontsize=9)
    fig.tight_layout()
    return fig


def wrap_text(text: str, width: int = 90) -> str:
    """``text`` broken at spaces into lines of at most ``width`` characters (figure titles)."""
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)


def shorten(text: str, limit: int = 48) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (axis labels stay readable)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG without a timestamp (atomically: :mod:`tunelens.io`), and free it."""
    import io

    from tunelens.io import atomic_write_bytes

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
