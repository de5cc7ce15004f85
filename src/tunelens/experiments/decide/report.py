"""decide.json -> decide.html: one self-contained page (the run report's style and safety).

decide.json is read through :class:`tunelens.experiments.decide.schema.DecideResults`.
The page is ``templates/decide.html.j2`` of this package, which extends the base
every tunelens page shares (:mod:`tunelens.report`'s stylesheet,
Content-Security-Policy, nav, table macro): rendered by Jinja2 with autoescaping and
nothing marked safe (task names, labels, definitions and model answers are untrusted
text), with figures as inline PNGs written without timestamps
(:func:`tunelens.report.plots.save`). :func:`report_part` gives the same page to
``tunelens report`` (decide's ``results_file`` is decide.json, so the report makes it
a page of its own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from tunelens.api.experiment import ReportPart
from tunelens.api.results import parse_file
from tunelens.errors import TunelensInputError
from tunelens.experiments.decide.schema import DecideResults
from tunelens.experiments.decide.token_shift_report import token_shift_images, token_shift_view
from tunelens.experiments.decide.verdict import fmt_count, fmt_flops, identical
from tunelens.report.html import (
    data_uri,
    fmt,
    fmt_difference,
    fmt_number,
    fmt_percent,
    plain,
    round_prose,
    template_environment,
)
from tunelens.report.plots import (
    condition_label,
    cosine_panel,
    layer_figure,
    plt,
    save,
    stat_values,
)
from tunelens.runs.store import atomic_write_text

PLOTS_DIR = "plots"
COLOURS = {
    "icl": "#1f77b4",
    "tuning": "#d62728",
    "control": "#9467bd",
    "zero_shot": "#2ca02c",
    "baseline": "#7f7f7f",
}


def _methods(data: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {m["id"]: m for m in data.get("methods", [])}


def _series(data: Mapping[str, Any], key: str) -> list[tuple[int, Mapping[str, Any]]]:
    methods = _methods(data)
    return [(n, methods[i]) for n, i in data.get("curves", {}).get(key, []) if i in methods]


def learning_curve_figure(data: Mapping[str, Any]):
    """Accuracy vs labelled examples: ICL and tuning curves with 95% CIs, baselines as lines."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for key, label in (("icl", "ICL (k demonstrations)"), ("tuning", "tuned (n examples)")):
        points = _series(data, key)
        if not points:
            continue
        xs = [n for n, _ in points]
        stats = [stat_values(m["accuracy"]) for _, m in points]
        ms = [s[0] for s in stats]
        ax.errorbar(
            xs,
            ms,
            yerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]],
            marker="o",
            capsize=3,
            label=label,
            color=COLOURS[key],
        )
    for i, (n, method) in enumerate(_series(data, "controls"), start=1):
        m, lo, hi = stat_values(method["accuracy"])
        ax.errorbar(
            [n * 1.07**i],
            [m],
            yerr=[[m - lo], [hi - m]],
            marker="s" if i == 1 else "D",
            capsize=3,
            linestyle="none",
            color=COLOURS["control"],
            label=short_name(method),
        )
    methods = _methods(data)
    for key, style in (("zero_shot", "-"), ("label_guess", "--")):
        line = methods.get(data.get("curves", {}).get(key, ""))
        if line is None:
            continue
        m, lo, hi = stat_values(line["accuracy"])
        colour = COLOURS["zero_shot" if key == "zero_shot" else "baseline"]
        ax.axhline(m, linestyle=style, color=colour, linewidth=1, label=line["name"])
        if hi > lo:
            ax.axhspan(lo, hi, color=colour, alpha=0.08, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled examples used (log scale)")
    ax.set_ylabel("accuracy (exact match, %)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def short_name(method: Mapping[str, Any]) -> str:
    """A label short enough for a plot: 'ICL k=4', 'tuned n=32', 'control: delusive'."""
    family, n = method["family"], method["examples"]
    if family == "icl":
        return f"ICL k={n}"
    if family == "tuning":
        return f"tuned n={n}"
    if family == "control":
        return f"control: {method['id'].removeprefix('control_')} n={n}"
    return {"zero_shot": "zero-shot", "label_guess": "label guess"}.get(method["id"], method["id"])


def compute_figure(data: Mapping[str, Any]):
    """Accuracy vs inference FLOPs per 1,000 items: the cheaper path at equal quality.

    Methods that share a prompt length (zero-shot and every tuned model) sit at one x;
    their labels are stacked beside the column.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=100)
    columns: dict[float, list[tuple[float, str]]] = {}
    for method in data.get("methods", []):
        flops = method["compute"]["per_1000_items"]["flops"]
        if not flops:
            continue
        m, lo, hi = stat_values(method["accuracy"])
        ax.errorbar(
            [flops],
            [m],
            yerr=[[m - lo], [hi - m]],
            marker="o",
            capsize=3,
            color=COLOURS.get(method["family"], "#333333"),
            linestyle="none",
            alpha=0.8,
        )
        columns.setdefault(round(flops, 3), []).append((m, short_name(method)))
    for flops, entries in columns.items():
        entries.sort(reverse=True)
        text = "\n".join(f"{name}: {m:.1f}" for m, name in entries)
        ax.annotate(
            text,
            (flops, entries[0][0]),
            fontsize=6,
            xytext=(5, 0),
            textcoords="offset points",
            va="top",
        )
    ax.set_xscale("log")
    ax.margins(x=0.2)
    ax.set_xlabel("inference FLOPs per 1,000 items (log scale; tuning's one-off cost excluded)")
    ax.set_ylabel("accuracy (exact match, %)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def similarity_figure(data: Mapping[str, Any]):
    """Per-layer cosines (ICL-IT, anchor-ICL, anchor-IT): the raw-cosine panel of
    :func:`tunelens.report.plots.cosine_panel`, one panel, stacks marked."""
    sim = data["similarity"]
    layers = [
        {
            "layer": row["layer"],
            "stack": row.get("stack"),
            "label": row.get("label"),
            "cos_icl_it": row["icl_it"],
            "cos_anchor_icl": row["anchor_icl"],
            "cos_anchor_it": row["anchor_it"],
        }
        for row in sim["layers"]
    ]
    title = condition_label({"k": sim["k"], "items": sim["n_items"]})
    return layer_figure(layers, title, [(cosine_panel(layers), True)])


def _confusion_view(method: Mapping[str, Any]) -> dict[str, Any]:
    conf = method["confusion"]
    rows = []
    for label, counts in zip(conf["labels"], conf["counts"], strict=True):
        rows.append(
            [label, *[fmt_count(c) if float(c).is_integer() else f"{c:.1f}" for c in counts]]
        )
    return {
        "name": method["name"],
        "columns": ["true \\ predicted", *conf["predicted"]],
        "rows": rows,
    }


def _method_rows(data: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    has_costs = any("cost_per_1000" in m for m in data.get("methods", []))
    columns = ["method", "examples", "accuracy % [95% CI]", "answers outside the labels"]
    if has_costs:
        columns.append("error cost per 1,000 items [95% CI]")
    columns += [
        "prompt tokens per item",
        "prompt tokens per 1,000 items",
        "inference FLOPs per 1,000 items",
        "tuning FLOPs (once)",
        "tuning steps",
    ]
    rows = []
    for m in data.get("methods", []):
        per = m["compute"]["per_1000_items"]
        training = m["compute"].get("training")
        row = [
            m["name"],
            str(m["examples"]),
            fmt(m["accuracy"]),
            str(m["out_of_space"]),
        ]
        if has_costs:
            row.append(fmt(m.get("cost_per_1000")))
        row += [
            fmt_number(per["prompt_tokens_per_item"]),
            fmt_count(per["prompt_tokens"]),
            fmt_flops(per["flops"]),
            fmt_flops(training["flops"]) if training else "-",
            str(m["train"]["steps"]) if "train" in m else "-",
        ]
        rows.append(row)
    return columns, rows


def _comparison_rows(data: Mapping[str, Any]) -> list[list[str]]:
    methods = _methods(data)
    rows = []
    comparisons = data.get("comparisons", {})
    for group, title in (("at_equal_size", "tuning vs ICL"), ("vs_zero_shot", "vs zero-shot")):
        for comp in comparisons.get(group, []):
            winner = (
                methods[comp["winner"]]["name"]
                if comp["winner"]
                else "no difference"
                if identical(comp)
                else "too close to call"
            )
            needed = comp.get("items_to_resolve")
            rows.append(
                [
                    title,
                    str(comp.get("examples", "")),
                    methods[comp["a"]]["name"],
                    methods[comp["b"]]["name"],
                    fmt_difference(comp["difference"]),
                    winner,
                    fmt_count(needed) if needed else "-",
                ]
            )
    return rows


def _share_rows(data: Mapping[str, Any]) -> list[list[str]]:
    share = data.get("format_share")
    if not share:
        return []
    methods = _methods(data)
    return [
        [
            methods[c]["name"],
            fmt(methods[c]["accuracy"]),
            fmt_percent(v["share"])
            if isinstance(v["share"].get("mean"), (int, float))
            else "undefined (no tuning gain to share)",
            fmt_difference(v["vs_tuned"]),
        ]
        for c, v in share.get("controls", {}).items()
    ]


def _kv(mapping: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not isinstance(mapping, Mapping):
        return []
    return [
        (
            str(k),
            v if isinstance(v, str) else repr(v) if not isinstance(v, (int, float)) else str(v),
        )
        for k, v in mapping.items()
    ]


def parse_decide(data: Any, source: str | Path | None = "decide.json") -> DecideResults:
    """decide.json data as :class:`DecideResults`, or a TunelensInputError naming the key
    (and ``source``; None: the caller names the file)."""
    return parse_file(
        DecideResults, data, source=str(source) if source is not None else None, what="decide"
    )


def _toc(results: DecideResults) -> list[tuple[str, str]]:
    toc = [
        ("verdict", "Verdict"),
        ("curves", "Learning curves"),
        ("methods", "Methods"),
        ("compute", "Compute"),
    ]
    if results.format_share is not None:
        toc.append(("format", "Format-only controls"))
    if any(m.token_shift is not None for m in results.methods):
        toc.append(("token-shift", "Token shift"))
    toc.append(("confusion", "Confusion"))
    if results.similarity is not None:
        toc.append(("similarity", "Hidden states"))
    return [*toc, ("split", "Split"), ("settings", "Settings")]


def _loader() -> jinja2.BaseLoader:
    """This package's templates (``decide.html.j2``)."""
    return jinja2.PackageLoader("tunelens.experiments.decide", "templates")


def render(data: DecideResults | Mapping[str, Any], images: Mapping[str, str]) -> str:
    """The page's HTML for decide.json ``data`` and figure data URIs."""
    return (
        template_environment(_loader())
        .get_template("decide.html.j2")
        .render(**page_view(data, images))
    )


def page_view(data: DecideResults | Mapping[str, Any], images: Mapping[str, str]) -> dict[str, Any]:
    """Every variable of ``decide.html.j2``, from decide.json ``data`` and figure data URIs."""
    results = parse_decide(data)
    view: dict[str, Any] = plain(results)  # JSON data in decide.json's (sorted) key order
    method_columns, method_rows = _method_rows(view)
    verdict = results.verdict
    wide = [
        [
            f"{w.a} vs {w.b}",
            fmt_difference(plain(w.difference)),
            fmt_number(w.width),
            fmt_count(w.items_to_resolve) if w.items_to_resolve else "-",
        ]
        for w in verdict.too_wide
    ]
    costs = results.costs
    cost_view = None
    if costs:
        cost_view = {
            "source": costs.source,
            "columns": ["true \\ predicted", *costs.predicted],
            "rows": [
                [label, *[f"{c:g}" for c in row]]
                for label, row in zip(costs.labels, costs.costs, strict=True)
            ],
        }
    similarity = results.similarity
    sim_view = None
    if similarity:
        sim_view = {
            "k": similarity.k,
            "n_items": similarity.n_items,
            "warnings": [str(w) for w in plain(similarity).get("warnings") or []],
            "accuracy": [
                [name, fmt(plain(stat))] for name, stat in sorted(similarity.accuracy.items())
            ],
        }
    split = results.split
    model = results.model
    return dict(
        title=f"tunelens decide: {results.task.name}",
        toc=_toc(results),
        task=results.task,
        model=model,
        labels=", ".join(results.task.labels),
        model_params=fmt_count(model.non_embedding_parameters),
        version=str(results.tunelens_version),
        verdict=verdict,
        answer={
            "title": "Verdict: prompt with examples, or tune?",
            "lines": [["", round_prose(line)] for line in verdict.summary],
            "caption": "Accuracy against the number of labelled examples: ICL with k "
            "demonstrations and tuning on n examples, 95% CIs; horizontal lines: zero-shot "
            "and the label-space guess; squares: format-only controls.",
        },
        wide=wide,
        split=split,
        config=view["config"],
        curves_png=images["curves"],
        compute_png=images["compute"],
        similarity_png=images.get("similarity", ""),
        methods={"columns": method_columns, "rows": method_rows},
        comparison_rows=_comparison_rows(view),
        shares=_share_rows(view),
        costs=cost_view,
        confusions=[_confusion_view(m) for m in view["methods"]],
        similarity=sim_view,
        token_shift=token_shift_view(view),
        token_shift_png=images.get("token_shift", ""),
        split_rows=[
            [label, str(c["test"]), str(c["demo_pool"]), str(c["tuning_pool"])]
            for label, c in sorted(split.per_label.items())
        ],
        settings=_settings(view),
        environment=_kv(view["environment"]),
    )


def _settings(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    config = dict(data.get("config", {}))
    tuning = config.pop("tuning", {})
    rows = _kv(config) + [(f"tuning.{k}", str(v)) for k, v in (tuning or {}).items()]
    return [*rows, ("model sizes from", str(data["model"].get("sizes_from", "")))]


def write_report(out_dir: str | Path, data: DecideResults | Mapping[str, Any]) -> Path:
    """Write DIR/plots/decide_*.png and DIR/decide.html; returns the HTML path."""
    path = Path(out_dir) / "decide.html"
    atomic_write_text(path, render_page(out_dir, data))
    return path


def render_page(out_dir: str | Path, data: DecideResults | Mapping[str, Any]) -> str:
    """Write DIR/plots/decide_*.png and return the text of decide.html (written by the caller,
    with decide.json, so that neither is left without the other)."""
    out = Path(out_dir)
    results = parse_decide(data, source=out / "decide.json")
    return render(results, write_figures(results, out / PLOTS_DIR))


def write_figures(results: DecideResults, plots: Path) -> dict[str, str]:
    """Write ``plots/decide_*.png``; returns their data URIs by name (curves, compute, and
    similarity where measured)."""
    view: dict[str, Any] = plain(results)
    images = {
        "curves": data_uri(save(learning_curve_figure(view), plots / "decide_curves.png")),
        "compute": data_uri(save(compute_figure(view), plots / "decide_compute.png")),
    }
    if results.similarity is not None:
        images["similarity"] = data_uri(
            save(similarity_figure(view), plots / "decide_similarity.png")
        )
    images.update(token_shift_images(view, plots))
    return images


def report_part(data: Mapping[str, Any], plots_dir: Path) -> ReportPart:
    """decide.html as ``tunelens report`` asks for it: the page's template and variables
    (figures written under ``plots_dir``)."""
    results = parse_decide(data, source=None)
    return ReportPart(
        anchor="verdict",
        title=f"tunelens decide: {results.task.name}",
        template="decide.html.j2",
        view=page_view(results, write_figures(results, Path(plots_dir))),
        loader=_loader(),
    )


def rebuild_report(out_dir: str | Path) -> Path:
    """Write DIR/decide.html again from DIR/decide.json (after a change to this module, say)."""
    from tunelens.io import read_json

    path = Path(out_dir) / "decide.json"
    if not path.exists():
        raise TunelensInputError("no decide.json; run `tunelens decide` first", source=str(path))
    data = read_json(path, what="results file")  # a key given twice is an error, as everywhere
    return write_report(out_dir, parse_decide(data, source=path))


__all__: Sequence[str] = [
    "page_view",
    "parse_decide",
    "rebuild_report",
    "render",
    "render_page",
    "report_part",
    "write_report",
]
