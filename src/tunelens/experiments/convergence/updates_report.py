"""The update-similarity part of each convergence condition in report.html.

:func:`add_update_views` gives each condition view an ``updates`` entry (None for
results written before convergence code version 12) that
``templates/updates.html.j2`` shows: Dai et al.'s reading and Deutch et al.'s test in
sentences, Rec2FTP with its counts, a per-layer figure (SimAOU of the attention output
and of the residual stream, each with its mismatched-pair floor and the random-init
copy's curve) and the per-layer tables, folded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tunelens.experiments.convergence.updates import SERIES
from tunelens.experiments.convergence.words import layer_ranges
from tunelens.report.html import data_uri, fmt, fmt_number
from tunelens.report.plots import Panel, condition_label, layer_curve, layer_figure, save

__all__ = ["add_update_views", "update_figure", "update_sentences", "update_view"]

SERIES_WORDS = {"attention": "attention output", "residual": "residual stream"}
DAI_READING = (
    "Dai et al. (2023) read a positive SimAOU, above uniform-noise updates, as ICL "
    "updating the model the way fine-tuning does; Deutch et al. (2024) found untrained "
    "models score as high, so their test is whether the trained model's SimAOU exceeds "
    "its mismatched-pair floor and its randomly initialised copy's."
)
GLOSSARY = [
    [
        "SimAOU",
        "cosine of the ICL and IT updates of the last-token vector (each scaled to unit "
        "length, the zero-shot one subtracted), mean over pairs",
        "update_similarity.<series>.layers[].simaou",
    ],
    [
        "floor",
        "the same cosine between pair i's ICL update and pair j's IT update "
        "(j \u2260 i, same task)",
        "floor",
    ],
    [
        "random-init copy",
        "SimAOU of the same pipeline on a randomly initialised copy, same draws",
        "against_random_init.<series>.layers[].random_init",
    ],
    ["Holm p", "one-sided Wilcoxon on cluster means, Holm over layers 1 and up", "p_holm"],
]


def add_update_views(
    conditions: list[dict[str, Any]], entries: Sequence[Any], plots_dir: Path
) -> list[dict[str, Any]]:
    """``conditions`` (the condition views), each given its ``updates`` from the plain
    results.json entry beside it (its figure written under ``plots_dir``)."""
    for i, (view, entry) in enumerate(zip(conditions, entries, strict=False)):
        if isinstance(entry, Mapping):
            path = Path(plots_dir) / f"convergence_updates_{i:03d}.png"
            view["updates"] = update_view(entry, path)
    return conditions


def _rows(updates: Mapping[str, Any], series: str) -> list[Mapping[str, Any]]:
    part = updates.get(series)
    return [r for r in (part or {}).get("layers") or [] if isinstance(r, Mapping)]


def _control_rows(updates: Mapping[str, Any], series: str) -> list[Mapping[str, Any]]:
    against = updates.get("against_random_init") or {}
    return [r for r in (against.get(series) or {}).get("layers") or [] if isinstance(r, Mapping)]


def _panel(updates: Mapping[str, Any], series: str) -> Panel:
    def draw(ax: Any) -> None:
        rows, control = _rows(updates, series), _control_rows(updates, series)
        layer_curve(ax, rows, "simaou", label="SimAOU", color="#1f77b4")
        layer_curve(ax, rows, "floor", label="floor (mismatched pairs)", color="#1f77b4", ls=":")
        if control:
            layer_curve(ax, control, "random_init", label="random-init copy", color="#d62728")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_ylabel(f"SimAOU, {SERIES_WORDS[series]}")

    return draw


def update_figure(entry: Mapping[str, Any]) -> Figure:
    """Per layer: SimAOU of the attention output and of the residual stream, each with its
    floor and, on a real condition, its random-initialised copy's SimAOU."""
    updates = entry.get("update_similarity") or {}
    panels = [(_panel(updates, s), False) for s in SERIES if _rows(updates, s)]
    title = f"SimAOU: {condition_label(entry.get('condition'))}"
    return layer_figure(_rows(updates, "residual"), title, panels)


def _peak(rows: Sequence[Mapping[str, Any]]) -> str:
    """'0.81 [0.77, 0.85] at layer 2': the largest mean SimAOU."""
    best = max(
        (r for r in rows if (r.get("simaou") or {}).get("mean") is not None),
        key=lambda r: r["simaou"]["mean"],
        default=None,
    )
    return f"{fmt(best['simaou'])} at layer {best['layer']}" if best else "n/a"


def _series_sentence(updates: Mapping[str, Any], series: str) -> str | None:
    rows = _rows(updates, series)
    if not rows:
        return None
    test = (updates.get("against_random_init") or {}).get(f"{series}_test")
    text = f"SimAOU of the {SERIES_WORDS[series]} peaks at {_peak(rows)}"
    if test is None:
        floor = [
            r["layer"] for r in rows if ((r.get("above_floor") or {}).get("p_holm") or 1) < 0.05
        ]
        return f"{text}; it is above its floor at {layer_ranges(floor)} (no random-init copy ran)."
    passed = test["passes_layers"]
    verdict = (
        f"Deutch et al.'s test passes at {layer_ranges(passed)}"
        if passed
        else "Deutch et al.'s test passes at no layer"
    )
    return (
        f"{text}; it is above its floor at {layer_ranges(test['above_floor_layers'])} and "
        f"above the random-init copy at {layer_ranges(test['above_random_init_layers'])}: "
        f"{verdict}."
    )


def _rec2ftp_text(rec: Mapping[str, Any] | None) -> str:
    if not rec:
        return "n/a"
    counts = (
        f"ICL also fixed {rec['both_fixed']} of the {rec['it_fixed']} pairs that tuning fixed "
        f"({rec['zs_wrong']} of {rec['n_pairs']} pairs were wrong zero-shot)"
    )
    if rec.get("value") is None:
        return f"undecided: {rec.get('undecided')}; {counts}"
    low, high = (rec.get("above_floor") or {}).get("ci") or (None, None)
    reading = "as much overlap as ICL's own fix rate gives"
    if low is not None and low > 0:
        reading = "more overlap than ICL's own fix rate gives"
    elif high is not None and high < 0:
        reading = "less overlap than ICL's own fix rate gives"
    return (
        f"{fmt(rec['value'])}: {counts}; its mismatched-pair floor is {fmt(rec['floor'])} "
        f"(difference {fmt(rec['above_floor'])} points): {reading}"
    )


def update_sentences(updates: Mapping[str, Any]) -> list[str]:
    """Dai et al.'s reading, each series' result against Deutch et al.'s test, Rec2FTP."""
    lines = [DAI_READING]
    lines += [s for series in SERIES if (s := _series_sentence(updates, series))]
    if updates.get("attention") is None and updates.get("attention_note"):
        lines.append(f"No attention-output series: {updates['attention_note']}.")
    lines.append(f"Rec2FTP: {_rec2ftp_text(updates.get('rec2ftp'))}.")
    copy = (updates.get("against_random_init") or {}).get("rec2ftp")
    if copy:
        lines.append(f"The random-init copy's Rec2FTP: {_rec2ftp_text(copy)}.")
    return lines


def _table(updates: Mapping[str, Any], series: str) -> dict[str, Any] | None:
    rows = _rows(updates, series)
    if not rows:
        return None
    control = {r.get("layer"): r for r in _control_rows(updates, series)}
    columns = ["layer", "SimAOU", "floor", "Holm p (> floor)"]
    if control:
        columns += ["random-init copy", "Holm p (> copy)"]
    body = []
    for row in rows:
        line = [
            fmt_number(row.get("layer")),
            fmt(row.get("simaou")),
            fmt(row.get("floor")),
            fmt_number((row.get("above_floor") or {}).get("p_holm")),
        ]
        if control:
            twin = control.get(row.get("layer")) or {}
            line += [
                fmt(twin.get("random_init")),
                fmt_number((twin.get("above_random_init") or {}).get("p_holm")),
            ]
        body.append(line)
    return {"title": SERIES_WORDS[series], "columns": columns, "rows": body, "glossary": GLOSSARY}


def update_view(entry: Mapping[str, Any], figure_path: Path) -> dict[str, Any] | None:
    """The sentences, figure (written to ``figure_path``) and tables of one condition."""
    updates = entry.get("update_similarity")
    if not isinstance(updates, Mapping):
        return None
    path = save(update_figure(entry), figure_path)
    return {
        "sentences": update_sentences(updates),
        "plot": data_uri(path),
        "caption": f"SimAOU per layer with its floor and the random-init copy: "
        f"{condition_label(entry.get('condition'))}",
        "tables": [t for s in SERIES if (t := _table(updates, s))],
    }
