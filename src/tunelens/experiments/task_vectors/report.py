"""The task-vector section of report.html: verdict sentences first, then per condition its
per-layer figure and table.

:func:`report_part` reads results.json ``task_vectors`` through
:class:`TaskVectorsResults`, writes one figure per condition
(``plots/task_vectors_NNN.png``: test accuracy per layer of the zero-shot forward
with the ICL and the IT task vector patched in, dev dotted, the zero-shot, ICL and
IT accuracies as lines, the dev-chosen layer marked) and builds the view
``templates/task_vectors.html.j2`` reads as ``section.view``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure

from tunelens.api.experiment import ReportPart
from tunelens.api.results import parse_file
from tunelens.experiments.task_vectors.results import (
    Count,
    SourceResult,
    TaskVectorsEntry,
    TaskVectorsResults,
)
from tunelens.report.html import fmt, fmt_number, plain
from tunelens.report.plots import Panel, Plot, layer_curve, layer_figure, save, stat_values

__all__ = ["report_part", "task_vector_figure", "task_vector_sentences"]

ANCHOR = "task-vectors"
SOURCES = (("icl", "ICL task vector", "#1f77b4"), ("it", "IT task vector", "#2ca02c"))
READING_NAMES = {
    "zero_shot": "zero-shot (the query alone)",
    "icl": "ICL (k demonstrations, then the query)",
    "it": "IT (the model tuned on the k demonstrations, query alone)",
}
LINES = (
    ("zero_shot", "zero-shot", "grey", "-"),
    ("icl", "ICL (demonstrations in the prompt)", "black", "--"),
    ("it", "IT model itself", "#2ca02c", ":"),
)


def report_part(results: Mapping[str, Any], plots_dir: Path) -> ReportPart | None:
    """The section (figures written under ``plots_dir``), or None without ``task_vectors``."""
    entries = parse_file(TaskVectorsResults, results, what="results").task_vectors
    if entries is None:
        return None
    plots = []
    for i, entry in enumerate(entries):
        path = save(task_vector_figure(plain(entry)), Path(plots_dir) / f"task_vectors_{i:03d}.png")
        plots.append(Plot(path, _title(entry), ANCHOR))
    return ReportPart(
        anchor=ANCHOR,
        title="Task vectors",
        template="task_vectors.html.j2",
        view=_page_view(entries, plots),
        loader=jinja2.PackageLoader("tunelens.experiments.task_vectors", "templates"),
    )


def _title(entry: TaskVectorsEntry) -> str:
    control = entry.condition.get("control")
    what = "random-init control" if control == "random_init" else "the model"
    return f"{entry.condition.get('model')}: {what}"


# ---------------------------------------------------------------- words


def _num(stat: Count | Any) -> str:
    """'70.1% [62.3, 77.9]' of a percentage with its CI."""
    low, high = stat.ci
    return f"{fmt_number(stat.mean)}% [{fmt_number(low)}, {fmt_number(high)}]"


def _share(block: SourceResult) -> str:
    share = block.best.share_of_icl_gain
    if share.mean is None:
        return f"share of the ICL gain undecided: {share.undecided}" if share.undecided else ""
    low, high = share.ci
    return (
        f"{fmt_number(share.mean * 100.0)}% of the ICL gain "
        f"[{fmt_number(None if low is None else low * 100.0)}, "
        f"{fmt_number(None if high is None else high * 100.0)}]"
    )


def _source_sentence(entry: TaskVectorsEntry, source: str, block: SourceResult) -> str:
    """One source's reading: where it transfers, how much, against zero-shot and ICL."""
    acc = entry.accuracy
    best = block.best
    who = (
        "The ICL task vector"
        if source == "icl"
        else ("The task vector of the model tuned on the same demonstrations")
    )
    verdict = block.transfer.verdict
    head = {
        "above zero-shot": f"{who} carries the task to other queries",
        "below zero-shot": f"{who} hurts other queries",
    }.get(verdict, f"{who} shows no transferable task state")
    share = _share(block) if source == "icl" and verdict == "above zero-shot" else ""
    own = (
        f"; the tuned model itself reads {_num(acc['it'])}"
        if source == "it" and "it" in acc
        else ""
    )
    own_layers = f"; each task at the layer its own dev sets choose: {_num(block.per_task_best)}"
    return (
        f"{head}: patched after layer {best.layer} (chosen on dev) it gives {_num(best.test)} "
        f"test accuracy, against {_num(acc['zero_shot'])} zero-shot and {_num(acc['icl'])} "
        f"with the demonstrations in the prompt (difference from zero-shot "
        f"{fmt_number(best.minus_zero_shot.mean, signed=True)} points "
        f"[{fmt_number(best.minus_zero_shot.ci[0])}, {fmt_number(best.minus_zero_shot.ci[1])}]"
        f"{'; ' + share if share else ''}{own_layers}{own})."
    )


def task_vector_sentences(entry: TaskVectorsEntry) -> list[str]:
    """The verdict sentences of one condition, the ICL vector first."""
    if not entry.sources:
        return ["No task could be drawn from (see the tasks left out)."]
    sentences = [
        _source_sentence(entry, s, entry.sources[s]) for s, _, _ in SOURCES if s in entry.sources
    ]
    seeds = len(entry.seeds)
    sentences.append(
        f"n = {entry.n_test} test queries over {len(entry.tasks)} tasks and {seeds} "
        f"seed{'s' if seeds != 1 else ''}; 95% bootstrap intervals over queries."
    )
    return sentences


# ---------------------------------------------------------------- figure


def _panel(entry: Mapping[str, Any]) -> Panel:
    sources = entry.get("sources") or {}
    accuracy = entry.get("accuracy") or {}

    def draw(ax: Any) -> None:
        for source, label, colour in SOURCES:
            block = sources.get(source)
            if not block:
                continue
            layers = block.get("layers") or []
            layer_curve(ax, layers, "test", label=f"{label} (test)", color=colour)
            layer_curve(ax, layers, "dev", label=f"{label} (dev)", color=colour, linestyle=":")
            ax.axvline(block.get("best_layer"), color=colour, linewidth=0.8, alpha=0.6)
        for key, label, colour, style in LINES:
            if key in accuracy:
                mean = stat_values(accuracy[key])[0]
                ax.axhline(mean, color=colour, linestyle=style, linewidth=1.0, label=label)
        ax.set_ylim(-2, 102)
        ax.set_ylabel("label accuracy of zero-shot queries, patched (%)")

    return draw


def task_vector_figure(entry: Mapping[str, Any]) -> Figure:
    """Accuracy per patched layer (test solid, dev dotted), reference lines, best layers."""
    rows = (entry.get("sources") or {}).get("icl", {}).get("layers") or []
    title = (
        f"{entry.get('condition', {}).get('model')} ({entry.get('condition', {}).get('control')})"
    )
    return layer_figure(rows, f"Task vectors: {title}", [(_panel(entry), False)])


# ---------------------------------------------------------------- view


def _layer_table(entry: TaskVectorsEntry) -> dict[str, Any]:
    sources = [s for s, _, _ in SOURCES if s in entry.sources]
    labels = {row.get("layer"): row.get("label") for row in entry.layer_labels or []}
    columns = ["layer"] + [
        f"{s.upper()} vector, {split}" for s in sources for split in ("dev", "test")
    ]
    first = entry.sources[sources[0]].layers if sources else []
    rows = []
    for i, layer in enumerate(first):
        label = labels.get(layer.layer)
        cells = [f"{layer.layer} ({label})" if label else str(layer.layer)]
        for s in sources:
            row = entry.sources[s].layers[i]
            cells += [fmt(plain(row.dev)), fmt(plain(row.test))]
        rows.append(cells)
    return {"columns": columns, "rows": rows}


def _per_task(block: SourceResult) -> dict[str, Any]:
    return {
        "columns": ["task", "layer (its dev)", "dev accuracy", "test accuracy", "test queries"],
        "rows": [
            [t.task, str(t.layer), fmt_number(t.dev), fmt_number(t.test), str(t.n_test)]
            for t in block.per_task
        ],
    }


GLOSSARY = [
    ["zero-shot", "label accuracy of the query alone", "accuracy.zero_shot"],
    ["ICL", "the k demonstrations in the prompt, then the query", "accuracy.icl"],
    ["IT", "the model tuned on the k demonstrations, the query alone", "accuracy.it"],
    [
        "vector at its dev layer",
        "the query alone with the task vector patched in after the layer dev chose",
        "sources.<icl|it>.best.test",
    ],
    [
        "each task at its own dev layer",
        "the same, each task's layer chosen on its own dev sets (Hendel et al.'s reading)",
        "sources.<icl|it>.per_task_best",
    ],
]


def _page_view(entries: list[TaskVectorsEntry], plots: list[Plot]) -> dict[str, Any]:
    """The verdict box (every condition's sentences, the first condition's figure) and one
    view per condition."""
    from tunelens.report.html import data_uri

    conditions = [_view(entry, plot) for entry, plot in zip(entries, plots, strict=True)]
    return {
        "verdict": {
            "title": "Task vectors: does the few-shot state carry the task to other queries?",
            "lines": [(c["title"], " ".join(c["sentences"])) for c in conditions],
            "figure": data_uri(plots[0].path) if plots else None,
            "caption": plots[0].caption if plots else "",
        },
        "conditions": conditions,
    }


def _view(entry: TaskVectorsEntry, plot: Plot) -> dict[str, Any]:
    from tunelens.report.html import data_uri

    acc = [
        [READING_NAMES[name], fmt(plain(entry.accuracy[name]))]
        for name in READING_NAMES
        if name in entry.accuracy
    ]
    acc.append(["ICL gain over zero-shot (points)", fmt(plain(entry.icl_gain))])
    for source, block in entry.sources.items():
        acc.append(
            [
                f"{source.upper()} vector at its dev layer {block.best_layer}",
                fmt(plain(block.best.test)),
            ]
        )
        acc.append(
            [
                f"{source.upper()} vector, each task at its own dev layer",
                fmt(plain(block.per_task_best)),
            ]
        )
    return {
        "title": _title(entry),
        "sentences": task_vector_sentences(entry),
        "settings": ", ".join(f"{k} {fmt(v)}" for k, v in entry.settings.items()),
        "glossary": GLOSSARY,
        "accuracy": acc,
        "layers": _layer_table(entry),
        "per_task": {s: _per_task(b) for s, b in entry.sources.items()},
        "skipped": [[s.get("task", ""), s.get("reason", "")] for s in entry.skipped],
        "forwards": [[k, fmt_number(v)] for k, v in entry.forwards.per_task_seed.items()],
        "plot": data_uri(plot.path),
        "caption": plot.caption,
    }
