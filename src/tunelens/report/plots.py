"""Figures from results.json: per-layer similarity curves and audit bars, with CIs.

Only the Agg backend is used (no display, no GUI toolkit). Every function takes
plain results.json data and tolerates missing pieces (a curve whose values are
absent is left out) so a partial or older results file still gives a report.
PNG metadata carries no date, so equal results give equal images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CURVES = (
    ("cos_icl_it", "ICL vs IT", "#1f77b4"),
    ("cos_anchor_icl", "anchor vs ICL", "#ff7f0e"),
    ("cos_anchor_it", "anchor vs IT", "#2ca02c"),
)
METRICS = (("em", "exact match"), ("rouge_l", "ROUGE-L"))
BASELINES = ("untuned", "random", "copy_input", "copy_demo")


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


def convergence_figure(entry: Mapping[str, Any]) -> Figure:
    """Cosine similarity per layer for one condition: three curves with CI bands."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
    for key, label, colour in CURVES:
        xs: list[float] = []
        ms: list[float] = []
        los: list[float] = []
        his: list[float] = []
        for i, row in enumerate(layers):
            mean, lo, hi = mean_ci(row.get(key))
            if mean is None:
                continue
            layer = _num(row.get("layer"))
            xs.append(layer if layer is not None else i)
            ms.append(mean)
            los.append(lo if lo is not None else mean)
            his.append(hi if hi is not None else mean)
        if not xs:
            continue
        ax.plot(xs, ms, marker="o", markersize=3, label=label, color=colour)
        ax.fill_between(xs, los, his, alpha=0.2, color=colour, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cosine similarity")
    ax.set_title(_wrap(condition_label(entry.get("condition"))), fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def audit_label(entry: Mapping[str, Any]) -> str:
    """Short bar label: 'def=original ex=delusive n=5 s0'."""
    c = entry.get("condition")
    if not isinstance(c, Mapping):
        return str(c)
    parts = [f"def={c.get('definition')}", f"ex={c.get('examples')}"]
    if "instances_per_task" in c:
        parts.append(f"n={c['instances_per_task']}")
    if "seed" in c:
        parts.append(f"s{c['seed']}")
    return " ".join(parts)


def audit_figure(
    entries: Sequence[Mapping[str, Any]], baselines: Mapping[str, Any] | None
) -> Figure:
    """EM and ROUGE-L per tuning condition and baseline, with CI error bars."""
    bars: list[tuple[str, Mapping[str, Any], str]] = []
    for name in [*BASELINES, *sorted(set(baselines or {}) - set(BASELINES))]:
        if baselines and isinstance(baselines.get(name), Mapping):
            bars.append((f"baseline: {name}", baselines[name], "#999999"))
    bars += [(audit_label(e), e, "#1f77b4") for e in entries if isinstance(e, Mapping)]
    height = max(3.0, 0.28 * len(bars) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(11, height), dpi=100, sharey=True)
    ys = list(range(len(bars)))
    for ax, (metric, title) in zip(axes, METRICS, strict=True):
        means: list[float] = []
        errs: list[list[float]] = [[], []]
        colours: list[str] = []
        for _, data, colour in bars:
            mean, lo, hi = mean_ci(data.get(metric))
            m = mean if mean is not None else 0.0
            means.append(m)
            errs[0].append(max(0.0, m - lo) if lo is not None else 0.0)
            errs[1].append(max(0.0, hi - m) if hi is not None else 0.0)
            colours.append(colour)
        ax.barh(ys, means, xerr=errs, color=colours, capsize=2, error_kw={"linewidth": 0.8})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("score (x100)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [_short(label) for label, _, _ in bars], fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 90) -> str:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG without a timestamp, and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def write_plots(results: Mapping[str, Any], plots_dir: Path) -> list[Plot]:
    """Every figure that results.json supports, written under ``plots_dir``."""
    plots: list[Plot] = []
    convergence = results.get("convergence")
    if isinstance(convergence, list):
        for i, entry in enumerate(convergence):
            if isinstance(entry, Mapping):
                path = save(convergence_figure(entry), plots_dir / f"convergence_{i:03d}.png")
                caption = f"Condition {i + 1}: {condition_label(entry.get('condition'))}"
                plots.append(Plot(path, caption, "convergence"))
    audit = results.get("audit")
    baselines = results.get("baselines")
    if isinstance(audit, list) or isinstance(baselines, Mapping):
        entries = audit if isinstance(audit, list) else []
        path = save(
            audit_figure(entries, baselines if isinstance(baselines, Mapping) else None),
            plots_dir / "audit.png",
        )
        plots.append(
            Plot(
                path,
                "Held-out exact match and ROUGE-L (x100) with 95% CIs over "
                "tasks; grey bars are baselines.",
                "audit",
            )
        )
    return plots
