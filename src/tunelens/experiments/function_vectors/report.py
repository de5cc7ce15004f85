"""The function-vectors section of report.html: the verdict first, then per model a heads x
layers heat map of the average indirect effect and the accuracy curve by layer.

:func:`report_part` reads results.json ``function_vectors`` through
:class:`FunctionVectorsResults`, writes two figures per model
(``plots/function_vectors_NNN_heads.png``, ``..._curve.png``) and builds the view
``templates/function_vectors.html.j2`` reads as ``section.view``: ``verdict`` (the
box at the top of the page) and ``models``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure

from tunelens.api.experiment import ReportPart
from tunelens.api.results import parse_file
from tunelens.experiments.function_vectors.results import (
    FunctionVectorsEntry,
    FunctionVectorsResults,
)
from tunelens.experiments.function_vectors.words import estimate, head_name
from tunelens.report.html import data_uri, fmt_number
from tunelens.report.plots import layer_curve, plt, save, stat_values

__all__ = ["curve_figure", "heads_figure", "report_part"]

ANCHOR = "function_vectors"
GLOSSARY = (
    (
        "average indirect effect (AIE)",
        "the mean rise in the probability of the correct label (its whole continuation) when "
        "one head's output at the last token is replaced by its mean over in-context prompts, "
        "on prompts whose demonstration labels are shuffled",
        "aie",
    ),
    (
        "function vector",
        "the sum of the top heads' mean outputs as written into the residual stream",
        "top_heads",
    ),
    (
        "test accuracy",
        "on the half of each task's queries that did not choose the layer; "
        "95% CIs resample (seed, task) clusters",
        "curve.accuracy_test",
    ),
)


def report_part(results: Mapping[str, Any], plots_dir: Path) -> ReportPart | None:
    """The section (figures written under ``plots_dir``), or None without the key."""
    entries = parse_file(FunctionVectorsResults, results, what="results").function_vectors
    if entries is None:
        return None
    models = [_model_view(i, e, Path(plots_dir)) for i, e in enumerate(entries)]
    return ReportPart(
        anchor=ANCHOR,
        title="Function vectors",
        template="function_vectors.html.j2",
        view={"verdict": _verdict(models), "models": models},
        loader=jinja2.PackageLoader("tunelens.experiments.function_vectors", "templates"),
    )


def _verdict(models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    lines = [(m["model"], " ".join(m["sentences"])) for m in models]
    first = models[0] if models else {}
    return {
        "title": "Function vectors: do a few heads carry the task?",
        "lines": lines,
        "figure": first.get("curve_plot"),
        "caption": first.get("curve_caption", ""),
    }


def _model_view(index: int, entry: FunctionVectorsEntry, plots_dir: Path) -> dict[str, Any]:
    data = entry.dump()
    heads = save(heads_figure(data), plots_dir / f"function_vectors_{index:03d}_heads.png")
    curve = None
    if entry.curve:
        curve = save(curve_figure(data), plots_dir / f"function_vectors_{index:03d}_curve.png")
    return {
        "model": entry.model,
        "sentences": entry.verdict,
        "setting": (
            f"k = {entry.k} demonstrations; {entry.tasks} tasks; seeds {entry.seeds}; "
            f"{entry.n_prompts} averaged and {entry.n_prompts} shuffled-label prompts and "
            f"{entry.n_queries} queries per task and seed; top {entry.top_h} of "
            f"{entry.n_layers} x {entry.n_heads} heads"
        ),
        "heads_plot": data_uri(heads),
        "heads_caption": "Average indirect effect of each head (layer L: the block that "
        "writes residual layer L); the function vector's heads are boxed.",
        "curve_plot": data_uri(curve) if curve else None,
        "curve_caption": "Accuracy of zero-shot queries with the function vector added after "
        "each layer (95% CI), beside zero-shot and in-context accuracy.",
        "top_heads": _top_table(entry),
        "curve": _curve_table(entry),
        "cost": (
            f"{fmt_number(int(entry.forwards.get('heads', 0)))} forwards for the heads, "
            f"{fmt_number(int(entry.forwards.get('vector', 0)))} for the vector, "
            f"{fmt_number(int(entry.forwards.get('rows', 0)))} prompt rows in all"
        ),
    }


def _top_table(entry: FunctionVectorsEntry) -> dict[str, Any]:
    return {
        "columns": ["rank", "head", "AIE [95% CI]", "prompts"],
        "rows": [
            [i + 1, head_name(t.model_dump()), estimate(t.aie.model_dump(), signed=True), t.aie.n]
            for i, t in enumerate(entry.top_heads)
        ],
        "glossary": [list(GLOSSARY[0]), list(GLOSSARY[1])],
    }


def _curve_table(entry: FunctionVectorsEntry) -> dict[str, Any] | None:
    if not entry.curve:
        return None
    rows = [
        [
            p.layer,
            estimate(p.accuracy.model_dump()),
            fmt_number(p.accuracy_dev),
            estimate(p.accuracy_test.model_dump()),
        ]
        for p in entry.curve
    ]
    rows.append(["zero-shot", estimate(_dump(entry.zero_shot)), "", ""])
    rows.append(["ICL", estimate(_dump(entry.icl)), "", ""])
    return {
        "columns": ["vector added after layer", "accuracy (all)", "dev", "test"],
        "rows": rows,
        "glossary": [list(GLOSSARY[2])],
    }


def _dump(value: Any) -> Any:
    return value.model_dump() if value is not None else None


# ---------------------------------------------------------------- figures


def heads_figure(entry: Mapping[str, Any]) -> Figure:
    """Heads (columns) x layers (rows) heat map of the AIE, the top heads boxed."""
    matrix = entry.get("aie") or [[0.0]]
    n_layers, n_heads = len(matrix), len(matrix[0])
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.35 * n_heads), min(10, 1.5 + 0.35 * n_layers)))
    limit = max((abs(v) for row in matrix for v in row), default=0.0) or 1.0
    image = ax.imshow(
        matrix,
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        aspect="auto",
        origin="lower",
        extent=(-0.5, n_heads - 0.5, 0.5, n_layers + 0.5),
    )
    for top in entry.get("top_heads") or []:
        ax.add_patch(
            plt.Rectangle(
                (top["head"] - 0.5, top["layer"] - 0.5), 1, 1, fill=False, edgecolor="black"
            )
        )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="average indirect effect")
    ax.set_title(f"{entry.get('model')}: AIE per head", fontsize=9)
    fig.tight_layout()
    return fig


def curve_figure(entry: Mapping[str, Any]) -> Figure:
    """Accuracy with the vector added after each layer, zero-shot and ICL as bands."""
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = entry.get("curve") or []
    layer_curve(ax, rows, "accuracy", label="function vector added", color="#1f77b4")
    xs = [row["layer"] for row in rows] or [0]
    for key, label, colour in (("zero_shot", "zero-shot", "#7f7f7f"), ("icl", "ICL", "#2ca02c")):
        mean, lo, hi = stat_values(entry.get(key))
        ax.axhline(mean, color=colour, linestyle="--", label=label)
        ax.fill_between([min(xs), max(xs)], lo, hi, color=colour, alpha=0.12, linewidth=0)
    best = entry.get("best") or {}
    if "layer" in best:
        ax.axvline(best["layer"], color="black", linewidth=0.6, linestyle=":")
    ax.set_xlabel("layer the vector is added after (0 = embeddings)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{entry.get('model')}: function vector by layer", fontsize=9)
    fig.tight_layout()
    return fig
