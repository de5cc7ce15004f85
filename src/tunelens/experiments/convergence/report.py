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
from matplotlib.ticker import MaxNLocator

from tunelens.api.experiment import ReportPart
from tunelens.api.results import parse_file
from tunelens.experiments.convergence.results import ConvergenceEntry, ConvergenceResults
from tunelens.experiments.convergence.updates_report import add_update_views
from tunelens.experiments.convergence.words import convergence_sentences, layer_ranges
from tunelens.report.html import condition_text, data_uri, extras, fmt, plain, round_prose
from tunelens.report.plots import (
    Panel,
    Plot,
    condition_label,
    cosine_panel,
    layer_curve,
    layer_figure,
    plt,
    save,
    shorten,
)

__all__ = ["convergence_figure", "convergence_view", "report_part"]

ANCHOR = "convergence"
CONVERGENCE_KNOWN = ("condition", "n_pairs", "accuracy", "layers")
CONVERGENCE_VIEWED = (
    "update_similarity",  # updates_report.py
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

# ---------------------------------------------------------------- words: the one place
# Every results.json key of this section that the page shows is named here, in words,
# with its meaning (the glossary line under each table).

PAIRS = {
    "icl_it": "ICL vs IT",
    "anchor_icl": "anchor vs ICL",
    "anchor_it": "anchor vs IT",
}
"""The three states compared: ICL (the untuned model with k demonstrations), IT (the model
tuned on them, bare query), anchor (the untuned model, bare query)."""
FAMILIES = {
    "cos": ("raw cosine", "cosine of the last-token hidden states of a pair"),
    "cos_centered": (
        "centered cosine",
        "cosine after subtracting the layer's mean state over every anchor, ICL and IT state",
    ),
    "cos_standardized": (
        "standardized cosine",
        "centered and each dimension z-scored (the rogue-dimension correction)",
    ),
    "floor_raw": ("raw floor", "the raw cosine of mismatched pairs (pair i against j \u2260 i)"),
    "floor": ("centered floor", "the centered cosine of mismatched pairs"),
    "floor_standardized": ("standardized floor", "the standardized cosine of mismatched pairs"),
    "cka": ("CKA (biased)", "linear CKA of the two sets of states across anchors"),
    "cka_debiased": ("CKA (debiased)", "linear CKA with the unbiased HSIC estimator"),
    "cross_pair_cos": (
        "cosine across anchors",
        "mean cosine between the states of different anchors: how alike any two prompts look",
    ),
}
"""Per-layer measures: a family and a pair (``cos_centered`` + ``icl_it``)."""
CROSS_STATES = {"anchor": "anchor", "icl": "ICL", "it": "IT"}
MEASURES: dict[str, tuple[str, str]] = {
    "anchor": ("zero-shot anchor", "the untuned model on the bare query"),
    "icl": ("ICL", "the untuned model with the k demonstrations in the prompt"),
    "it": ("IT", "the model tuned on those k demonstrations, on the bare query"),
    "agreement": (
        "same top label",
        "share of pairs where ICL and IT predict the same label",
    ),
    "icl_gain": ("ICL gain (points)", "label accuracy of ICL minus the anchor's"),
    "it_gain": ("tuning gain (points)", "label accuracy of IT minus the anchor's"),
    "kl_icl_it": ("KL(ICL \u2016 IT)", "divergence of IT's label distribution from ICL's, nats"),
    "kl_icl_anchor": (
        "KL(ICL \u2016 anchor)",
        "divergence of the anchor's label distribution from ICL's, nats",
    ),
    "kl_anchor_minus_it": (
        "KL(ICL \u2016 anchor) \u2212 KL(ICL \u2016 IT)",
        "above 0: tuning moved the label distribution toward ICL's",
    ),
    "label_accuracy": ("label accuracy (%)", "the most likely label is the right one"),
    "scoring": ("how labels are scored", "whole label continuations, or first tokens"),
    "n_clusters": ("clusters", "demonstration sets the bootstrap resamples"),
    "seeds": ("seeds", "the seeds pooled in this condition"),
    "gain_share": (
        "share of the ICL gain",
        "patched accuracy minus the anchor's, over ICL's minus the anchor's",
    ),
    "kl_to_icl": ("KL(ICL \u2016 patched)", "divergence of the patched labels from ICL's, nats"),
    "icl_it>anchor_icl": (
        "ICL\u2013IT above anchor\u2013ICL",
        "the ICL state is closer to the IT state than to the anchor's (one-sided Wilcoxon)",
    ),
    "icl_it>anchor_it": (
        "ICL\u2013IT above anchor\u2013IT",
        "the IT state is closer to the ICL state than to the anchor's (one-sided Wilcoxon)",
    ),
    "icl_it>floor": (
        "ICL\u2013IT above its floor",
        "centered ICL-IT cosine above the mismatched-pair floor (one-sided Wilcoxon)",
    ),
    "p_holm": ("p (Holm)", "Holm-corrected across layers 1 and up"),
}
"""Every other key the page names: predictions, behaviour, patching, tests."""
CONDITION_WORDS = {
    "model": "model",
    "k": "demonstrations",
    "flip_fraction": "flipped labels",
    "relevance": "demonstrations from",
    "definition": "definition in the prompt",
    "control": "control",
    "tuning": "tuning",
}
CONTROL_WORDS = {
    "none": "trained model",
    "random_init": "randomly initialised copy",
    "shuffled": "shuffled-token demonstrations",
}


def measure_words(key: str) -> tuple[str, str]:
    """(name, meaning) of a results.json key of this section; an unknown one: its key."""
    if key in MEASURES:
        return MEASURES[key]
    for pair, pair_name in PAIRS.items():
        family = key.removesuffix(f"_{pair}")
        if family != key and family in FAMILIES:
            name, meaning = FAMILIES[family]
            return f"{pair_name}, {name}", meaning
    for state, state_name in CROSS_STATES.items():
        if key == f"cross_pair_cos_{state}":
            return f"{state_name}, {FAMILIES['cross_pair_cos'][0]}", FAMILIES["cross_pair_cos"][1]
    return key, ""


PATCH_KEYS = ("gain_share", "kl_to_icl")


def named(key: str) -> str:
    """A key's name in words (:func:`measure_words`)."""
    return measure_words(key)[0]


def _glossary(keys: Sequence[str]) -> list[list[str]]:
    """The glossary line of a table showing ``keys``: each family or key once."""
    lines: dict[str, list[str]] = {}
    for key in keys:
        family = _family(key)
        if family in FAMILIES and family not in lines:
            lines[family] = [FAMILIES[family][0], FAMILIES[family][1], f"{family}_*"]
        elif family not in FAMILIES and key in MEASURES and key not in lines:
            lines[key] = [*MEASURES[key], key]
    return list(lines.values())


def _family(key: str) -> str:
    for suffix in (*PAIRS, *CROSS_STATES):
        if key.endswith(f"_{suffix}") and key.removesuffix(f"_{suffix}") in FAMILIES:
            return key.removesuffix(f"_{suffix}")
    return key


def report_part(results: Mapping[str, Any], plots_dir: Path) -> ReportPart | None:
    """The section (figures written under ``plots_dir``), or None without ``convergence``.

    Its view: ``verdict`` (the box at the top of the page: each condition's sentences and
    the key figure) and ``conditions`` (one view per condition, :func:`convergence_view`).
    """
    entries = parse_file(ConvergenceResults, results, what="results").convergence
    if entries is None:
        return None
    data = plain(entries)
    plots = write_figures(data, Path(plots_dir))
    key = save(key_figure(data), Path(plots_dir) / "convergence_key.png") if data else None
    return ReportPart(
        anchor=ANCHOR,
        title="Convergence",
        template="convergence.html.j2",
        view={
            "verdict": verdict_view(data, key),
            "conditions": add_update_views(convergence_view(entries, plots), data, plots_dir),
        },
        loader=jinja2.PackageLoader("tunelens.experiments.convergence", "templates"),
    )


def _condition_value(key: str, value: Any) -> str:
    """One factor of a condition in words: '8 demonstrations', 'randomly initialised copy'."""
    if key == "control":
        return CONTROL_WORDS.get(str(value), f"control {value}")
    if key == "k":
        return f"{fmt(value)} demonstrations"
    if key == "definition":
        return "with the definition" if value else "without the definition"
    if key == "flip_fraction" and isinstance(value, (int, float)):
        return f"{fmt(100 * float(value))}% labels flipped"
    if key == "relevance":
        return f"demonstrations from the {value} task"
    return f"{CONDITION_WORDS.get(key, key.replace('_', ' '))} {fmt(value)}"


def condition_names(conditions: Sequence[Any]) -> tuple[list[str], str]:
    """Each condition named by the factors that differ between them, and the factors all
    share: (['trained model', 'randomly initialised copy'], 'model world, 8 demonstrations,
    ...')."""
    dicts = [c if isinstance(c, Mapping) else {"condition": c} for c in conditions]
    keys: list[str] = []
    for c in dicts:
        keys += [str(k) for k in c if str(k) not in keys]
    varying = [k for k in keys if len({repr(c.get(k)) for c in dicts}) > 1]
    common = ", ".join(_condition_value(k, dicts[0].get(k)) for k in keys if k not in varying)
    names = [
        ", ".join(_condition_value(k, c.get(k)) for k in varying) or f"condition {i + 1}"
        for i, c in enumerate(dicts)
    ]
    return names, common


def verdict_view(entries: Sequence[Any], key: Path | None) -> dict[str, Any]:
    """The box at the top of the page: each condition's answer sentences, the key figure."""
    rows = [e for e in entries if isinstance(e, Mapping)]
    names, common = condition_names([e.get("condition") for e in rows])
    lines = [
        [f"Condition {i + 1}, {name}", round_prose(" ".join(sentences))]
        for i, (name, e) in enumerate(zip(names, rows, strict=True))
        if (sentences := convergence_sentences(e))
    ]
    return {
        "title": "Convergence: does ICL do what instruction tuning does?",
        "lines": lines,
        "note": f"Every condition: {common}." if common else "",
        "figure": data_uri(key) if key else None,
        "caption": "Centered ICL-IT cosine per layer (solid, 95% CI) against its floor, the "
        "same cosine between mismatched pairs (dotted), one colour per condition. Above its "
        "floor, the ICL and IT states of a query share more than any two prompts do.",
    }


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


KEY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def key_figure(entries: Sequence[Any]) -> Figure:
    """The section's key figure, small enough for the answer box: per condition, the
    centered ICL-IT cosine and its mismatched-pair floor (raw ones in older results)."""
    rows = [e for e in entries if isinstance(e, Mapping)]
    names, _ = condition_names([e.get("condition") for e in rows])
    fig, ax = plt.subplots(figsize=(5.6, 2.7), dpi=100)
    centered = any("cos_centered_icl_it" in r for e in rows for r in e.get("layers") or [])
    key, floor = (
        ("cos_centered_icl_it", "floor_icl_it") if centered else ("cos_icl_it", "floor_raw_icl_it")
    )
    for i, (name, entry) in enumerate(zip(names, rows, strict=True)):
        colour = KEY_COLOURS[i % len(KEY_COLOURS)]
        layers = [r for r in entry.get("layers") or [] if isinstance(r, Mapping)]
        layer_curve(ax, layers, key, label=shorten(name, 40), color=colour)
        layer_curve(ax, layers, floor, color=colour, linestyle=":")
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings)", fontsize=8)
    ax.set_ylabel(f"{'centered' if centered else 'raw'} ICL-IT cosine", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


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
    layer = fmt(row.get("layer"))
    return f"{layer} ({label})" if label and str(label) != layer else layer


def _measure_order(key: str) -> tuple[int, int, str]:
    """Families in :data:`FAMILIES` order, pairs in :data:`PAIRS` order, others last."""
    family = _family(key)
    families = list(FAMILIES)
    pairs = [*PAIRS, *CROSS_STATES]
    suffix = key.removeprefix(f"{family}_")
    return (
        families.index(family) if family in families else len(families),
        pairs.index(suffix) if suffix in pairs else 0,
        key,
    )


def _layer_tables(layers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every per-layer measure, rows = layers: one table per two families of measures
    (each family's pairs side by side), so that no table is wider than the page."""
    keys = sorted(
        {k for row in layers for k in row if k not in ("layer", "wilcoxon", *LAYER_LABEL_KEYS)},
        key=_measure_order,
    )
    groups: list[list[str]] = []
    for key in keys:
        if groups and _family(groups[-1][-1]) == _family(key) and _family(key) in FAMILIES:
            groups[-1].append(key)
        else:
            groups.append([key])
    tables: list[list[str]] = []
    for group in groups:
        if tables and len(tables[-1]) + len(group) <= 6:
            tables[-1] += group
        else:
            tables.append(list(group))
    return [
        {
            "columns": ["layer", *[measure_words(k)[0] for k in chunk]],
            "rows": [[layer_cell(row), *[fmt(row.get(k)) for k in chunk]] for row in layers],
            "glossary": _glossary(chunk),
        }
        for chunk in tables
    ]


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
                measure_words(str(name))[0],
                *[fmt(getattr(test, k)) for k in ("statistic", "p", "p_holm", "effect")],
            ]
            for row in entry.layers
            for name, test in sorted(row.wilcoxon.items())
        ]
        names = sorted({str(name) for row in entry.layers for name in row.wilcoxon})
        views.append(
            {
                "title": f"Condition {i + 1}",
                "condition": condition_text(plain(entry.condition)),
                "n_pairs": fmt(entry.n_pairs),
                "accuracy": {
                    "columns": ["prediction", "accuracy (%)"],
                    "rows": [
                        [measure_words(str(k))[0], fmt(v)] for k, v in plain(entry.accuracy).items()
                    ],
                    "glossary": _glossary(list(plain(entry.accuracy))),
                },
                "plot": data_uri(plot.path) if plot else None,
                "caption": plot.caption if plot else "",
                "layer_tables": _layer_tables([plain(row) for row in entry.layers]),
                "tests": {
                    "columns": ["layer", "comparison", "statistic", "p", "p (Holm)", "effect"],
                    "rows": tests,
                    "glossary": _glossary(names),
                },
                **convergence_detail_view(data),
                "extras": [(named(k), v) for k, v in extras(data, CONVERGENCE_VIEWED)],
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
        "columns": ["layer", *[label for _, label in present], "p (Holm), above its floor"],
        "rows": [
            [
                layer_cell(row),
                *[fmt(row.get(k)) for k, _ in present],
                fmt((row.get("wilcoxon") or {}).get("icl_it>floor", {}).get("p_holm")),
            ]
            for row in layers
        ],
        "glossary": _glossary([k for k, _ in present] + ["icl_it>floor", "p_holm"]),
    }


def _patching_table(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """Each patched layer and state: accuracy, share of the ICL gain, KL to ICL."""
    patching = [r for r in entry.get("patching") or [] if isinstance(r, Mapping)]
    if not patching:
        return None
    return {
        "columns": ["layer", "state patched in", "accuracy (%)", *map(named, PATCH_KEYS)],
        "glossary": _glossary(PATCH_KEYS),
        "rows": [
            [
                fmt(r.get("layer")),
                named(str(r.get("source"))),
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
                named(str(comp)),
                layer_ranges(row.get("pooled_layers") or []),
                "; ".join(f"seed {s}: {layer_ranges(v)}" for s, v in per_seed.items()),
                layer_ranges(row.get("holds_in_every_seed") or []),
            ]
        )
    return seeds


def _behaviour(behaviour: Mapping[str, Any]) -> dict[str, Any]:
    """The label-distribution measures, named in words; label accuracy one row a prediction."""
    rows = []
    for key, value in behaviour.items():
        if key == "label_accuracy" and isinstance(value, Mapping):
            rows += [[f"{named(key)}: {named(str(k))}", fmt(v)] for k, v in value.items()]
        elif key == "scoring" and isinstance(value, Mapping):
            counts = ", ".join(
                f"{fmt(v)} {k.replace('_', ' ')}" for k, v in value.items() if k != "method"
            )
            rows.append([named(key), f"{value.get('method', '')} ({counts})"])
        else:
            rows.append([named(str(key)), fmt(value)])
    return {
        "columns": ["measure", "value [95% CI]"],
        "rows": rows,
        "glossary": _glossary(list(behaviour)),
    }


def convergence_detail_view(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The answer in words, the calibrated ICL-IT table, behaviour, patching, seeds, tuning."""
    layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
    behaviour = entry.get("behaviour")
    tuning = entry.get("tuning")
    adapted = tuning.get("adapted") if isinstance(tuning, Mapping) else None
    return {
        "sentences": convergence_sentences(entry),
        "calibrated": _calibrated_table(layers),
        "behaviour": _behaviour(behaviour) if isinstance(behaviour, Mapping) else None,
        "patching": _patching_table(entry),
        "seeds": _seed_rows(entry),
        "adapted": "; ".join(str(w) for w in adapted.get("weights", []))
        if isinstance(adapted, Mapping)
        else "",
    }
