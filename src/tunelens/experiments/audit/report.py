"""The audit section of report.html: verdicts, the bound, scores, shares and breakdowns.

:func:`report_part` is what :meth:`AuditExperiment.report_part` returns: it reads the
audit's keys of results.json through :class:`AuditResults`, writes ``plots/audit.png``
(exact match and ROUGE-L per condition and baseline, with CIs) and builds the view that
``templates/audit.html.j2`` reads as ``section.view``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tunelens.api.experiment import ReportPart
from tunelens.api.results import parse_file
from tunelens.experiments.audit.experiment import BASELINES
from tunelens.experiments.audit.results import AuditResults
from tunelens.experiments.audit.token_shift_report import token_shift_lines, token_shift_view
from tunelens.measures.verdicts import MORE_THAN_FORMAT, MOSTLY_FORMAT
from tunelens.report.html import (
    data_uri,
    extras,
    fmt,
    fmt_number,
    fmt_percent,
    fold_constant,
    glossary,
    key_name,
    plain,
    round_prose,
    split_columns,
    transpose,
)
from tunelens.report.plots import Plot, mean_ci, plt, save, shorten

__all__ = ["audit_figure", "audit_label", "audit_view", "other_encoding_baselines", "report_part"]

ANCHOR = "audit"
AUDIT_KNOWN = (
    "condition",
    "em",
    "rouge_l",
    "in_label_space",
    "per_task",
    "per_category",
    "training",
    "evaluation",
)
METRICS = (("em", "exact match"), ("rouge_l", "ROUGE-L"))
ENCODING_LABELS = {"definition_only": "[def only]", "definition_examples": "[def+2ex]"}
CONTROLS = ("simplified", "delusive", "no_definition", "random_guess")
IN_LABEL = "in label space (%)"

# ---------------------------------------------------------------- words: the one place
# Every results.json key of this section that the page shows is named here, in words,
# with its meaning (the glossary line under each table).

MEASURES: dict[str, tuple[str, str]] = {
    "em": ("exact match", "percent of answers equal to the reference once SuperNI-normalised"),
    "rouge_l": ("ROUGE-L", "longest-common-subsequence F-measure with the reference, x100"),
    "in_label_space": (
        IN_LABEL,
        "percent of answers that are one of the task's labels once normalised, over tasks "
        "with a label space",
    ),
    "headline": (
        "headline metric",
        "Tk-Instruct's metric of the category: exact match for classification-like "
        "categories, ROUGE-L for the others",
    ),
    "tuning_gain": (
        "tuning gain (EM points)",
        "tuned on the original definitions minus untuned, paired over tasks",
    ),
    "simplified": (
        "simplified definition",
        "tuned on definitions cut down to the output space: its share of the tuning gain",
    ),
    "delusive": (
        "delusive examples",
        "tuned on examples whose input-output mapping is wrong: its share of the gain",
    ),
    "no_definition": ("no definition", "tuned without definitions: its share of the gain"),
    "random_guess": (
        "random guess",
        "no tuning, a uniform guess over the label space: its gain over untuned as a share",
    ),
    "definition": ("definition", "the definitions the model was tuned with"),
    "examples": ("examples", "the examples it was tuned with"),
    "encoding": ("evaluated with", "what the evaluation prompt holds"),
    "instances_per_task": ("instances per task", "tuning instances of each training task"),
    "seed": ("seed", "the tuning seed"),
    "training": ("training", "effective batch x epochs, steps, learning rate, template"),
    "tuning": ("tuning", "the method and the modules it adapted"),
    "untuned": ("untuned", "the base model, zero-shot"),
    "random": ("random", "a uniform guess over the label space"),
    "copy_input": ("copy input", "the answer is the instance's input"),
    "copy_demo": ("copy demonstration", "the answer is the first demonstration's output"),
}
"""Every key the section names, as (name, meaning)."""
ENCODING_WORDS = {
    "definition_only": "definition only",
    "definition_examples": "definition + 2 examples",
}


def named(key: str) -> str:
    """A key's name in words (an unknown key: the key as results.json spells it)."""
    return key_name(key, MEASURES)


def _glossary(keys: Sequence[str]) -> list[list[str]]:
    """The glossary line under a table showing ``keys``."""
    return glossary(keys, MEASURES)


def report_part(results: Mapping[str, Any], plots_dir: Path) -> ReportPart | None:
    """The section (``audit.png`` written under ``plots_dir``), or None without the audit's
    conditions or baselines."""
    parsed = parse_file(AuditResults, results, what="results")
    if parsed.audit is None and parsed.baselines is None:
        return None
    data = plain(parsed)
    plots = [write_figure(data, Path(plots_dir))]
    key = save(share_figure(data), Path(plots_dir) / "audit_key.png")
    return ReportPart(
        anchor=ANCHOR,
        title="Audit",
        template="audit.html.j2",
        view={
            **audit_view(parsed, plots),
            "verdict": verdict_view(data, key),
            "token_shift": token_shift_view(data, Path(plots_dir)),
        },
        loader=jinja2.PackageLoader("tunelens.experiments.audit", "templates"),
    )


def write_figure(results: Mapping[str, Any], plots_dir: Path) -> Plot:
    """``audit.png`` from plain results data, with its caption (the bound, where it applies)."""
    audit = results.get("audit")
    baselines = results.get("baselines")
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
        "Held-out exact match and ROUGE-L (x100) with 95% CIs over tasks; grey bars are baselines."
    )
    if isinstance(bound, (int, float)) and bound < 100:
        caption += (
            f" Dashed line: the definition-blind bound ({bound:.1f} EM), the most a method "
            "that ignores the definition can score under definition-only evaluation."
        )
    return Plot(path, caption, ANCHOR)


# ---------------------------------------------------------------- the answer first


def _row_name(
    row: Mapping[str, Any], constant: Sequence[str], lead: str = "Evaluated with the "
) -> str:
    """'Evaluated with the definition only' (+ instances per task and seed where those vary
    between rows); ``lead`` comes before the encoding."""
    name = ENCODING_WORDS.get(str(row.get("encoding")), str(row.get("encoding")))
    more = [
        f"{fmt(row.get('instances_per_task'))} instances per task" if "ipt" not in constant else "",
        f"seed {fmt(row.get('seed'))}" if "seed" not in constant else "",
    ]
    return ", ".join([f"{lead}{name}", *[m for m in more if m]])


def _share_sentence(row: Mapping[str, Any], verdict: Mapping[str, Any]) -> str:
    """The verdict of one share row in words, every number from results.json."""
    gain = (row.get("tuning_gain") or {}).get("em") or {}
    if not verdict.get("significant", True) or not gain:
        text = str(verdict.get("text", ""))
        return round_prose(text.split(": ", 1)[-1])
    shares = [
        f"{named(c)} {fmt_percent(row[c]['em'])} ({row[c]['em'].get('reading', 'undecided')})"
        for c in CONTROLS
        if isinstance(row.get(c), Mapping) and isinstance(row[c].get("em"), Mapping)
    ]
    lead = (
        f"Tuning raised exact match by {fmt_number(gain.get('mean'), signed=True)} points "
        f"[{fmt_number((gain.get('ci') or [None])[0])}, "
        f"{fmt_number((gain.get('ci') or [None, None])[1])}] over the untuned model "
        f"({fmt(gain.get('n'))} tasks)."
    )
    return f"{lead} Share of that gain reached without the task: {'; '.join(shares)}."


def _bound_sentence(bound: Mapping[str, Any]) -> str:
    """Whether any definition-only score lies wholly above the definition-blind bound."""
    above = [r for r in bound.get("above") or [] if isinstance(r, Mapping)]
    over = [str(r.get("what")) for r in above if r.get("above")]
    head = (
        f"The definition-blind bound is {fmt(bound.get('em'))} EM (the most a method that "
        "ignores the definition can score)"
    )
    if not over:
        return (
            f"{head}; no definition-only score lies wholly above it, so none shows that a "
            "model reads the definition."
        )
    return (
        f"{head}; {len(over)} of {len(above)} definition-only scores lie wholly above it: "
        f"{', '.join(over)}."
    )


def verdict_view(data: Mapping[str, Any], key: Path | None) -> dict[str, Any]:
    """The box at the top of the page: the verdict per evaluation encoding, the bound, the
    key figure (shares of the tuning gain)."""
    rows = [r for r in data.get("audit_format_share") or [] if isinstance(r, Mapping)]
    verdicts = {
        (str(v.get("encoding")), str(v.get("instances_per_task")), str(v.get("seed"))): v
        for v in data.get("audit_verdict") or []
        if isinstance(v, Mapping)
    }
    constant = [
        name
        for name, k in (("ipt", "instances_per_task"), ("seed", "seed"))
        if len({str(r.get(k)) for r in rows}) <= 1
    ]
    lines = []
    for row in rows:
        verdict = verdicts.get(
            (str(row.get("encoding")), str(row.get("instances_per_task")), str(row.get("seed"))),
            {},
        )
        lines.append([_row_name(row, constant), _share_sentence(row, verdict)])
    bound = data.get("audit_definition_blind_bound")
    if isinstance(bound, Mapping) and bound.get("em") is not None:
        lines.append(["Does it read the definition?", _bound_sentence(bound)])
    lines += control_lines(data, constant)
    lines += token_shift_lines(data)
    note = ""
    if rows and constant:
        note = (
            f"Tuned on {fmt(rows[0].get('instances_per_task'))} instances per task, "
            f"seed {fmt(rows[0].get('seed'))}; exact match x100."
        )
    return {
        "title": "Audit: did tuning teach the task, or only the format?",
        "lines": lines,
        "note": note,
        "figure": data_uri(key) if key else None,
        "caption": "Share of the tuning gain (exact match) that each control reaches, 95% "
        f"CIs. Past {MOSTLY_FORMAT:.0%} (dashed) the gain is mostly format; under "
        f"{MORE_THAN_FORMAT:.0%} (dotted) tuning taught more than the format.",
    }


VERDICT_WORDS = {
    "lower": "lower",
    "higher": "higher",
    "equivalent": "no gap above {margin:g}",
    "undecided": "undecided",
}


def _signed(stat: Mapping[str, Any]) -> str:
    """A paired difference: '+0.6 [-3.1, 4.2] (n 40)'."""
    if not stat:
        return "n/a"
    lo, hi = stat.get("ci") or [None, None]
    text = f"{fmt_number(stat.get('mean'), signed=True)} [{fmt_number(lo)}, {fmt_number(hi)}]"
    return text + (f" (n {fmt_number(stat['n'])})" if "n" in stat else "")


def _control_cells(row: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Per control of a row: its name, the EM difference with interval and n, the verdict."""
    cells = []
    for comparison in row.get("controls") or []:
        em = (comparison.get("difference") or {}).get("em") or {}
        verdict = VERDICT_WORDS.get(str(comparison.get("verdict")), "undecided")
        cells.append(
            (
                named(str(comparison.get("control"))),
                _signed(em),
                verdict.format(margin=row.get("margin") or 0),
            )
        )
    return cells


def control_lines(data: Mapping[str, Any], constant: Sequence[str]) -> list[list[str]]:
    """Verdict-box lines: each control against the original tuning, lead encoding only."""
    rows = [r for r in data.get("audit_controls") or [] if isinstance(r, Mapping)]
    lead = rows[0].get("encoding") if rows else None
    lines = []
    for row in rows:
        if row.get("encoding") != lead:
            continue
        parts = [
            f"{name} {difference}: {verdict}" for name, difference, verdict in _control_cells(row)
        ]
        lines.append(
            [
                _row_name(row, constant, lead="Controls against the original, "),
                "; ".join(parts) + " (EM points, control - original)",
            ]
        )
    return lines


def _control_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """The section's table: one row per (encoding, instances, seed, control)."""
    rows = []
    for row in data.get("audit_controls") or []:
        for name, difference, verdict in _control_cells(row):
            rows.append(
                [
                    ENCODING_WORDS.get(str(row.get("encoding")), fmt(row.get("encoding"))),
                    fmt(row.get("instances_per_task")),
                    fmt(row.get("seed")),
                    name,
                    difference,
                    verdict,
                ]
            )
    return rows


def share_figure(data: Mapping[str, Any]) -> Figure:
    """The section's key figure: each control's share of the tuning gain, per evaluation
    encoding, with the thresholds of the verdict's readings."""
    rows = [r for r in data.get("audit_format_share") or [] if isinstance(r, Mapping)]
    bars = [
        (named(c), i, (row.get(c) or {}).get("em"))
        for c in CONTROLS
        for i, row in enumerate(rows)
        if isinstance((row.get(c) or {}).get("em"), Mapping)
    ]
    fig, ax = plt.subplots(figsize=(5.6, 0.32 * len(bars) + 1.0 if bars else 2.0), dpi=100)
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
    ys = list(range(len(bars)))
    for y, (_, i, share) in zip(ys, bars, strict=True):
        mean, lo, hi = mean_ci(share)
        if mean is None:
            continue
        err = [
            [100 * (mean - lo) if lo is not None else 0],
            [100 * (hi - mean) if hi is not None else 0],
        ]
        ax.barh(
            [y],
            [100 * mean],
            xerr=err,
            color=colours[i % len(colours)],
            capsize=2,
            error_kw={"linewidth": 0.8},
        )
    handles = [
        Patch(
            color=colours[i % len(colours)],
            label="evaluated with the "
            + ENCODING_WORDS.get(str(row.get("encoding")), str(row.get("encoding"))),
        )
        for i, row in enumerate(rows)
    ]
    ax.axvline(100 * MOSTLY_FORMAT, color="#57606a", linestyle="--", linewidth=0.8)
    ax.axvline(100 * MORE_THAN_FORMAT, color="#57606a", linestyle=":", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.6)
    ax.set_yticks(ys, [name for name, _, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("share of the tuning gain (%)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure


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
    axes[0].set_yticks(ys, [shorten(label) for label, _, _ in bars], fontsize=7)
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


# ---------------------------------------------------------------- view


def _baseline_sources(results: AuditResults) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, entry) for every baseline: the known ones in their order, then the rest."""
    if results.baselines is None:
        return []
    baselines = plain(results.baselines)
    names = [*[b for b in BASELINES if b in baselines], *sorted(set(baselines) - set(BASELINES))]
    return [
        (f"baseline: {named(n)}", baselines[n]) for n in names if isinstance(baselines[n], Mapping)
    ]


def _sources(results: AuditResults) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, entry) for every baseline and audit condition, in report order."""
    audit = [(audit_label(e), e) for e in plain(results.audit or [])]
    others = other_encoding_baselines(plain(results))
    return [*_baseline_sources(results), *others, *audit]


def breakdown(
    sources: list[tuple[str, Mapping[str, Any]]], key: str, metric: str
) -> dict[str, Any]:
    """Rows: categories (or tasks); columns: sources; cells: the metric with its CI."""
    names: list[str] = []
    for _, entry in sources:
        part = entry.get(key)
        if isinstance(part, Mapping):
            names += [str(n) for n in part if str(n) not in names]
    rows = []
    for name in sorted(names):
        row = [name]
        for _, entry in sources:
            part = entry.get(key)
            value = part.get(name) if isinstance(part, Mapping) else None
            row.append(fmt(value.get(metric)) if isinstance(value, Mapping) else "")
        rows.append(row)
    return {"columns": [key.replace("per_", ""), *[label for label, _ in sources]], "rows": rows}


def _tuning_text(training: Any) -> str:
    """'16 x 2 epochs, 38 steps, lr 0.003 (constant), seed 0, tk'."""
    if not isinstance(training, Mapping):
        return ""
    return (
        f"batch {fmt(training.get('effective_batch_size'))} x {fmt(training.get('epochs'))} "
        f"epochs, {fmt(training.get('steps'))} steps, lr {_setting(training.get('learning_rate'))} "
        f"({fmt(training.get('lr_schedule'))}), seed {fmt(training.get('seed'))}, "
        f"{fmt(training.get('template'))}"
    )


def _setting(value: Any) -> str:
    """A setting as it was given ('0.003'), not rounded like a measurement."""
    return f"{value:g}" if isinstance(value, float) else fmt(value)


def _share_text(share: Any) -> str:
    """A share with its interval, or the verdict with the gain's interval."""
    if not isinstance(share, Mapping):
        return ""
    if share.get("verdict") == "share":
        reading = share.get("reading")
        text = fmt_percent(share)
        return f"{text} (n {fmt(share.get('n'))}{', ' + str(reading) if reading else ''})"
    raw = share.get("gain")
    gain: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    return (
        f"tuning gain not significant: {fmt({'mean': gain.get('mean'), 'ci': gain.get('ci')})} "
        f"(n {fmt(gain.get('n'))})"
    )


def _has_label_share(entries: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the results hold the in-label share (results from before it lack the column)."""
    return any("in_label_space" in e for e in entries)


def _scores(entry: Mapping[str, Any], label_share: bool) -> list[str]:
    """EM, then the in-label share beside it (where the results have one), then ROUGE-L."""
    share = [fmt(entry.get("in_label_space"))] if label_share else []
    return [fmt(entry.get("em")), *share, fmt(entry.get("rouge_l"))]


def _score_columns(label_share: bool) -> list[str]:
    return ["exact match", *([IN_LABEL] if label_share else []), "ROUGE-L"]


def _grid(audit: list[Mapping[str, Any]], label_share: bool) -> dict[str, Any]:
    """One row per tuning condition: its factors, scores, training and any other keys."""
    condition_keys: list[str] = []
    for e in audit:
        condition_keys += [str(k) for k in e["condition"] if str(k) not in condition_keys]
    extra_keys: list[str] = []
    for e in audit:
        extra_keys += [str(k) for k in e if k not in AUDIT_KNOWN and str(k) not in extra_keys]
    rows = [
        [
            *[_factor(k, e["condition"].get(k)) for k in condition_keys],
            *_scores(e, label_share),
            _tuning_text(e.get("training")),
            *[_extra_text(k, e.get(k)) for k in extra_keys],
        ]
        for e in audit
    ]
    return {
        "columns": [
            *map(named, condition_keys),
            *_score_columns(label_share),
            "training",
            *map(named, extra_keys),
        ],
        "rows": rows,
        "glossary": _glossary(
            ["em", *(["in_label_space"] if label_share else []), "rouge_l", "training"]
        ),
    }


def _factor(key: str, value: Any) -> str:
    """A condition's factor as a table cell: an encoding in words, any other as it is."""
    return ENCODING_WORDS.get(str(value), fmt(value)) if key == "encoding" else fmt(value)


def _extra_text(key: str, value: Any) -> str:
    """An entry's other key as a cell: 'lora (q_proj, v_proj)' for ``tuning``."""
    if key == "tuning" and isinstance(value, Mapping) and "method" in value:
        modules = value.get("adapted_modules") or []
        return f"{value['method']}" + (f" ({', '.join(map(str, modules))})" if modules else "")
    return fmt(value)


def _baselines(sources: list[tuple[str, Mapping[str, Any]]], label_share: bool) -> dict[str, Any]:
    """Each baseline (every encoding's untuned one too): its scores and any other keys."""
    return {
        "columns": ["baseline", *_score_columns(label_share), "other"],
        "glossary": _glossary(
            [*BASELINES, "em", *(["in_label_space"] if label_share else []), "rouge_l"]
        ),
        "rows": [
            [
                label.removeprefix("baseline: "),
                *_scores(entry, label_share),
                "; ".join(f"{k}: {v}" for k, v in extras(entry, AUDIT_KNOWN)),
            ]
            for label, entry in sources
        ],
    }


def _share_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """Per (encoding, instances per task, seed): the tuning gain and each control's share."""
    rows = []
    for row in data.get("audit_format_share") or []:
        gain = (row.get("tuning_gain") or {}).get("em")
        rows.append(
            [
                ENCODING_WORDS.get(str(row.get("encoding")), fmt(row.get("encoding"))),
                fmt(row.get("instances_per_task")),
                fmt(row.get("seed")),
                fmt(gain) if gain else "",
                *[_share_text((row.get(c) or {}).get("em")) for c in CONTROLS],
            ]
        )
    return rows


def _headline(sources: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per category, Tk-Instruct's headline metric, its name beside the category."""
    headline = breakdown(sources, "per_category", "headline")
    metric_of: dict[str, str] = {}
    for _, entry in sources:
        for cat, scores in (entry.get("per_category") or {}).items():
            if isinstance(scores, Mapping) and scores.get("headline_metric"):
                metric_of[str(cat)] = str(scores["headline_metric"])
    for row in headline["rows"]:
        row[0] = f"{row[0]} ({named(metric_of.get(row[0], '?'))})"
    return headline


def _by_category(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A per-category table turned so that categories are the columns (few) and the
    conditions and baselines the rows (many), split to fit the page."""
    return split_columns(transpose(table, "condition or baseline"), limit=6)


def _label_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """Per held-out task: its label space, where it came from, and labels never used."""
    spaces = data.get("audit_label_spaces") or {}
    return [
        [
            str(name),
            ", ".join(space.get("labels") or []) or "free text",
            fmt(space.get("source")),
            ", ".join(space.get("unseen") or []),
        ]
        for name, space in spaces.items()
        if isinstance(space, Mapping)
    ]


def _above(bound: Mapping[str, Any]) -> dict[str, Any]:
    """Definition-only scores against the definition-blind bound."""
    return {
        "columns": ["definition-only", "exact match", "whole interval above the bound"],
        "rows": [
            [str(r.get("what")), fmt(r.get("em")), "yes" if r.get("above") else "no"]
            for r in bound.get("above") or []
            if isinstance(r, Mapping)
        ],
    }


def audit_view(results: AuditResults, plots: list[Plot]) -> dict[str, Any]:
    """What ``audit.html.j2`` reads: every table of the section, from the typed results."""
    audit = plain(results.audit or [])
    data = plain(results)
    sources = _sources(results)
    baselines = [*_baseline_sources(results), *other_encoding_baselines(data)]
    label_share = _has_label_share([e for _, e in sources])
    label_rows = _label_rows(data)
    bound = data.get("audit_definition_blind_bound") or {}
    return {
        "plot": data_uri(plots[0].path) if plots else None,
        "caption": plots[0].caption if plots else "",
        "verdicts": [str(v.get("text")) for v in data.get("audit_verdict") or []],
        "bound": fmt(bound.get("em")) if bound.get("em") is not None else None,
        "above": _above(bound),
        "grid": fold_constant(
            _grid(audit, label_share),
            [*map(named, ("instances_per_task", "seed", "encoding", "tuning")), "training"],
        ),
        "baselines": _baselines(baselines, label_share),
        "label_share": label_share,
        "shares": {
            "columns": [
                "evaluated with",
                "instances per task",
                "seed",
                named("tuning_gain"),
                *map(named, CONTROLS),
            ],
            "rows": _share_rows(data),
            "glossary": _glossary(["tuning_gain", *CONTROLS]),
        },
        "controls": {
            "columns": [
                "evaluated with",
                "instances per task",
                "seed",
                "tuned with",
                "control - original (EM points)",
                "verdict",
            ],
            "rows": _control_rows(data),
            "glossary": _glossary(["simplified", "delusive", "no_definition"]),
        },
        "categories": {
            m: _by_category(breakdown(sources, "per_category", m)) for m in ("em", "rouge_l")
        }
        | {"headline": _by_category(_headline(sources))},
        "tasks": {
            m: split_columns(breakdown(sources, "per_task", m), limit=8) for m in ("em", "rouge_l")
        },
        "task_count": len(breakdown(sources, "per_task", "em")["rows"]),
        "labels": {
            "columns": ["task", "label space", "from", "named but never used"],
            "rows": label_rows,
        },
        "unseen": [r for r in label_rows if r[3]],
    }
