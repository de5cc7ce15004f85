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
ENCODING_LABELS = {"definition_only": "[def only]", "definition_examples": "[def+2ex]"}


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


CALIBRATED_CURVES = (
    ("cos_centered_icl_it", "ICL vs IT, centered", "#1f77b4", "-"),
    ("floor_icl_it", "floor (mismatched pairs), centered", "#1f77b4", ":"),
    ("cos_standardized_icl_it", "ICL vs IT, standardized", "#9467bd", "-"),
    ("floor_standardized_icl_it", "floor, standardized", "#9467bd", ":"),
)
PATCH_CURVES = (("icl", "ICL state", "#1f77b4"), ("it", "IT state", "#2ca02c"))


def _curve(ax: Any, rows: Sequence[Mapping[str, Any]], key: str, **style: Any) -> None:
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


def _mark_stacks(ax: Any, layers: Sequence[Mapping[str, Any]]) -> None:
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


def convergence_figure(entry: Mapping[str, Any]) -> Figure:
    """One condition: raw cosine per layer; centered / standardized ICL-IT with their floors;
    the patching curve (share of the ICL gain) for ICL and IT states, where present."""
    layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
    calibrated = any(key in row for row in layers for key, *_ in CALIBRATED_CURVES)
    patching = [r for r in entry.get("patching") or [] if isinstance(r, Mapping)]
    panels = 1 + int(calibrated) + int(bool(patching))
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    for key, label, colour in CURVES:
        _curve(ax, layers, key, label=label, color=colour)
    ax.set_ylabel("raw cosine similarity")
    used = [ax]
    if calibrated:
        ax = axes[0][1]
        for key, label, colour, line in CALIBRATED_CURVES:
            _curve(ax, layers, key, label=label, color=colour, linestyle=line)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_ylabel("calibrated cosine")
        used.append(ax)
    if patching:
        ax = axes[0][panels - 1]
        for source, label, colour in PATCH_CURVES:
            rows = [
                {"layer": r.get("layer"), "gain_share": r.get("gain_share")}
                for r in patching
                if r.get("source") == source
            ]
            _curve(ax, rows, "gain_share", label=label, color=colour)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.axhline(1.0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_ylabel("share of the ICL gain (patched)")
        used.append(ax)
    for ax in used:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (0 = embeddings)")
        if ax is not used[-1] or not patching:
            _mark_stacks(ax, layers)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(_wrap(condition_label(entry.get("condition")), 60 * panels), fontsize=9)
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
    if c.get("encoding"):
        parts.append(ENCODING_LABELS.get(str(c["encoding"]), str(c["encoding"])))
    return " ".join(parts)


def audit_figure(
    entries: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, Any] | None,
    bound: float | None = None,
    extra_baselines: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> Figure:
    """EM and ROUGE-L per tuning condition and baseline, with CI error bars.

    ``bound``: the definition-blind bound, drawn as a dashed line on the EM axis.
    """
    bars: list[tuple[str, Mapping[str, Any], str]] = []
    for name in [*BASELINES, *sorted(set(baselines or {}) - set(BASELINES))]:
        if baselines and isinstance(baselines.get(name), Mapping):
            bars.append((f"baseline: {name}", baselines[name], "#999999"))
    bars += [(label, data, "#bbbbbb") for label, data in extra_baselines]
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
        if metric == "em" and isinstance(bound, (int, float)) and bound < 100:
            ax.axvline(bound, color="#d62728", linestyle="--", linewidth=1)
            ax.annotate(
                f"definition-blind bound {bound:.1f}",
                (bound, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -10),
                textcoords="offset points",
                fontsize=7,
                color="#d62728",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("score (x100)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [_short(label) for label, _, _ in bars], fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def other_encoding_baselines(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The untuned baseline under every evaluation encoding but the leading one."""
    by_encoding = results.get("baselines_by_encoding")
    if not isinstance(by_encoding, Mapping):
        return []
    lead = untuned_lead = None
    baselines = results.get("baselines")
    if isinstance(baselines, Mapping):
        untuned_lead = baselines.get("untuned")
    spec = results.get("spec")
    encodings = (spec or {}).get("audit", {}) if isinstance(spec, Mapping) else {}
    if isinstance(encodings, Mapping) and encodings.get("eval_encodings"):
        lead = encodings["eval_encodings"][0]
    out = []
    for encoding in sorted(by_encoding):
        untuned = (by_encoding[encoding] or {}).get("untuned")
        if encoding == lead or (lead is None and untuned == untuned_lead):
            continue
        if isinstance(untuned, Mapping):
            label = ENCODING_LABELS.get(str(encoding), str(encoding))
            out.append((f"baseline: untuned {label}", untuned))
    return out


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
        bound_data = results.get("audit_definition_blind_bound")
        bound = bound_data.get("em") if isinstance(bound_data, Mapping) else None
        path = save(
            audit_figure(
                entries,
                baselines if isinstance(baselines, Mapping) else None,
                bound,
                other_encoding_baselines(results),
            ),
            plots_dir / "audit.png",
        )
        caption = (
            "Held-out exact match and ROUGE-L (x100) with 95% CIs over "
            "tasks; grey bars are baselines."
        )
        if isinstance(bound, (int, float)) and bound < 100:
            caption += (
                f" Dashed line: the definition-blind bound ({bound:.1f} EM), the most a method "
                "that ignores the definition can score under definition-only evaluation."
            )
        plots.append(Plot(path, caption, "audit"))
    return plots
