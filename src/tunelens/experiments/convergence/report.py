"""The convergence section of report.html: one block per condition, with its figure.

:func:`report_part` is what :meth:`ConvergenceExperiment.report_part` returns: it reads
results.json ``convergence`` through :class:`ConvergenceResults`, writes one figure per
condition (``plots/convergence_NNN.png``: raw cosines; calibrated cosines with their
floors; the patching curve, where present) and builds the view that
``templates/convergence.html.j2`` reads as ``section.view``. The sentences come from
:mod:`tunelens.experiments.convergence.words`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure

from tunelens.api.experiment import ReportPart
from tunelens.api.results import parse_file
from tunelens.experiments.convergence.results import ConvergenceEntry, ConvergenceResults
from tunelens.experiments.convergence.words import convergence_sentences, layer_ranges
from tunelens.report.html import condition_text, data_uri, extras, fmt, plain
from tunelens.report.plots import (
    CURVES,
    Panel,
    Plot,
    condition_label,
    cosine_panel,
    layer_curve,
    layer_figure,
    save,
)

__all__ = ["convergence_figure", "convergence_view", "report_part"]

ANCHOR = "convergence"
CONVERGENCE_KNOWN = ("condition", "n_pairs", "accuracy", "layers")
CONVERGENCE_VIEWED = (
    *CONVERGENCE_KNOWN,
    "behaviour",
    "patching",
    "seed_agreement",
    "tuning",
    "per_seed",
    "warnings",
)
LAYER_LABEL_KEYS = ("stack", "block", "label")
ICL_IT_COLUMNS = (
    ("cos_icl_it", "raw"),
    ("floor_raw_icl_it", "raw floor"),
    ("cos_centered_icl_it", "centered"),
    ("floor_icl_it", "centered floor"),
    ("cos_standardized_icl_it", "standardized"),
    ("floor_standardized_icl_it", "standardized floor"),
    ("cka_icl_it", "CKA (biased)"),
    ("cka_debiased_icl_it", "CKA (debiased)"),
)
CALIBRATED_CURVES = (
    ("cos_centered_icl_it", "ICL vs IT, centered", "#1f77b4", "-"),
    ("floor_icl_it", "floor (mismatched pairs), centered", "#1f77b4", ":"),
    ("cos_standardized_icl_it", "ICL vs IT, standardized", "#9467bd", "-"),
    ("floor_standardized_icl_it", "floor, standardized", "#9467bd", ":"),
)
PATCH_CURVES = (("icl", "ICL state", "#1f77b4"), ("it", "IT state", "#2ca02c"))


def report_part(results: Mapping[str, Any], plots_dir: Path) -> ReportPart | None:
    """The section (figures written under ``plots_dir``), or None without ``convergence``."""
    entries = parse_file(ConvergenceResults, results, what="results").convergence
    if entries is None:
        return None
    plots = write_figures(plain(entries), Path(plots_dir))
    return ReportPart(
        anchor=ANCHOR,
        title="Convergence",
        template="convergence.html.j2",
        view=convergence_view(entries, plots),
        loader=jinja2.PackageLoader("tunelens.experiments.convergence", "templates"),
    )


def write_figures(entries: Sequence[Any], plots_dir: Path) -> list[Plot]:
    """One figure per condition (plain results.json entries), in the entries' order."""
    plots = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Mapping):
            path = save(convergence_figure(entry), plots_dir / f"convergence_{i:03d}.png")
            caption = f"Condition {i + 1}: {condition_label(entry.get('condition'))}"
            plots.append(Plot(path, caption, ANCHOR))
    return plots


# ---------------------------------------------------------------- figure


def _calibrated_panel(layers: Sequence[Mapping[str, Any]]) -> Panel:
    """Centered and standardized ICL-IT cosines with their mismatched-pair floors."""

    def draw(ax: Any) -> None:
        for key, label, colour, line in CALIBRATED_CURVES:
            layer_curve(ax, layers, key, label=label, color=colour, linestyle=line)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_ylabel("calibrated cosine")

    return draw


def _patching_panel(patching: Sequence[Mapping[str, Any]]) -> Panel:
    """The share of the ICL gain that patching in the ICL (or IT) state recovers, per layer."""

    def draw(ax: Any) -> None:
        for source, label, colour in PATCH_CURVES:
            rows = [
                {"layer": r.get("layer"), "gain_share": r.get("gain_share")}
                for r in patching
                if r.get("source") == source
            ]
            layer_curve(ax, rows, "gain_share", label=label, color=colour)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.axhline(1.0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_ylabel("share of the ICL gain (patched)")

    return draw


def convergence_figure(entry: Mapping[str, Any]) -> Figure:
    """One condition: raw cosine per layer; centered / standardized ICL-IT with their floors;
    the patching curve (share of the ICL gain) for ICL and IT states, where present."""
    layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
    calibrated = any(key in row for row in layers for key, *_ in CALIBRATED_CURVES)
    patching = [r for r in entry.get("patching") or [] if isinstance(r, Mapping)]
    panels = [(cosine_panel(layers), True)]
    if calibrated:
        panels.append((_calibrated_panel(layers), True))
    if patching:  # the patching axis has no stack labels: its points are patched layers
        panels.append((_patching_panel(patching), False))
    return layer_figure(layers, condition_label(entry.get("condition")), panels)


# ---------------------------------------------------------------- view


def layer_cell(row: Mapping[str, Any]) -> str:
    """A layer's table cell: its index, and its stack label where results carry one.

    '0 (emb)', '3 (enc 2)', '4 (dec emb)': an encoder-decoder's two stacks share
    one axis of indices, so the label keeps encoder and decoder layers apart.
    """
    label = row.get("label")
    return f"{fmt(row.get('layer'))} ({label})" if label else fmt(row.get("layer"))


def _layer_table(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every per-layer measure: the raw cosines first, then the rest by name."""
    cos_keys = [k for k, _, _ in CURVES if any(k in row for row in layers)]
    other = sorted(
        {
            k
            for row in layers
            for k in row
            if k not in ("layer", "wilcoxon", *LAYER_LABEL_KEYS, *cos_keys)
        }
    )
    columns = ["layer", *[label for k, label, _ in CURVES if k in cos_keys], *other]
    rows = [
        [
            layer_cell(row),
            *[fmt(row.get(k)) for k in cos_keys],
            *[fmt(row.get(k)) for k in other],
        ]
        for row in layers
    ]
    return {"columns": columns, "rows": rows}


def convergence_view(
    entries: Sequence[ConvergenceEntry], plots: list[Plot]
) -> list[dict[str, Any]]:
    """What the template shows of each condition: summaries, tables, tests and its figure."""
    figures = iter(plots)
    views = []
    for i, entry in enumerate(entries):
        plot = next(figures, None)
        data = plain(entry)
        tests = [
            [
                layer_cell(plain(row)),
                str(name),
                *[fmt(getattr(test, k)) for k in ("statistic", "p", "p_holm", "effect")],
            ]
            for row in entry.layers
            for name, test in sorted(row.wilcoxon.items())
        ]
        views.append(
            {
                "title": f"Condition {i + 1}",
                "condition": condition_text(plain(entry.condition)),
                "n_pairs": fmt(entry.n_pairs),
                "accuracy": [(str(k), fmt(v)) for k, v in plain(entry.accuracy).items()],
                "plot": data_uri(plot.path) if plot else None,
                "caption": plot.caption if plot else "",
                "layers": _layer_table([plain(row) for row in entry.layers]),
                "tests": tests,
                **convergence_detail_view(data),
                "extras": extras(data, CONVERGENCE_VIEWED),
                "warnings": [str(w) for w in data.get("warnings") or []],
            }
        )
    return views


def _calibrated_table(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ICL-IT measures beside their floors, with the Holm p of 'above the floor'."""
    present = [(k, label) for k, label in ICL_IT_COLUMNS if any(k in row for row in layers)]
    if not any(k != "cos_icl_it" and not k.startswith("cka_") for k, _ in present):
        return None
    return {
        "columns": ["layer", *[label for _, label in present], "p_holm (> floor)"],
        "rows": [
            [
                layer_cell(row),
                *[fmt(row.get(k)) for k, _ in present],
                fmt((row.get("wilcoxon") or {}).get("icl_it>floor", {}).get("p_holm")),
            ]
            for row in layers
        ],
    }


def _patching_table(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """Each patched layer and state: accuracy, share of the ICL gain, KL to ICL."""
    patching = [r for r in entry.get("patching") or [] if isinstance(r, Mapping)]
    if not patching:
        return None
    return {
        "columns": ["layer", "state", "accuracy", "share of ICL gain", "KL(ICL || patched)"],
        "rows": [
            [
                fmt(r.get("layer")),
                str(r.get("source")),
                fmt(r.get("accuracy")),
                fmt(r.get("gain_share")),
                fmt(r.get("kl_to_icl")),
            ]
            for r in sorted(patching, key=lambda r: (str(r.get("source")), r.get("layer", 0)))
        ],
    }


def _seed_rows(entry: Mapping[str, Any]) -> list[list[str]]:
    """Per comparison: the significant layers pooled, per seed, and in every seed."""
    seeds = []
    for comp, row in sorted((entry.get("seed_agreement") or {}).items()):
        if not isinstance(row, Mapping):
            continue
        per_seed = row.get("per_seed_layers") or {}
        seeds.append(
            [
                str(comp),
                layer_ranges(row.get("pooled_layers") or []),
                "; ".join(f"seed {s}: {layer_ranges(v)}" for s, v in per_seed.items()),
                layer_ranges(row.get("holds_in_every_seed") or []),
            ]
        )
    return seeds


def convergence_detail_view(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The answer in words, the calibrated ICL-IT table, behaviour, patching, seeds, tuning."""
    layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
    behaviour = entry.get("behaviour")
    tuning = entry.get("tuning")
    adapted = tuning.get("adapted") if isinstance(tuning, Mapping) else None
    return {
        "sentences": convergence_sentences(entry),
        "calibrated": _calibrated_table(layers),
        "behaviour": [(str(k), fmt(v)) for k, v in behaviour.items()]
        if isinstance(behaviour, Mapping)
        else [],
        "patching": _patching_table(entry),
        "seeds": _seed_rows(entry),
        "adapted": "; ".join(str(w) for w in adapted.get("weights", []))
        if isinstance(adapted, Mapping)
        else "",
    }
