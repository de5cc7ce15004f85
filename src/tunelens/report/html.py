"""results.json -> one self-contained report.html (inline CSS, plots as data URIs).

The report reads only ``DIR/results.json``, through the typed models of
:mod:`tunelens.api.results`; it never loads a model. Task names, definitions,
categories, spec notes and model outputs are untrusted text: the templates
(``templates/*.html.j2``, one base that every page extends, one section
template per experiment) are rendered by Jinja2 with autoescaping on and no
value is marked safe, and a Content-Security-Policy forbids scripts and any
external resource, so a hostile task name renders as text. Sections appear
only for keys that results.json has; unknown keys get a generic table.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel

from tunelens.api.results import ConvergenceEntry, StudyResults, parse_file
from tunelens.errors import TunelensInputError
from tunelens.report.plots import (
    BASELINES,
    CURVES,
    Plot,
    audit_label,
    other_encoding_baselines,
    write_plots,
)
from tunelens.runs.store import atomic_write_text

REPORT = "report.html"
PLOTS_DIR = "plots"
KNOWN_KEYS = (
    "convergence",
    "audit",
    "baselines",
    "baselines_by_encoding",
    "audit_format_share",
    "audit_verdict",
    "audit_label_spaces",
    "audit_definition_blind_bound",
    "spec",
    "environment",
    "tunelens_version",
)
CONVERGENCE_KNOWN = ("condition", "n_pairs", "accuracy", "layers")
AUDIT_KNOWN = (
    "condition",
    "em",
    "rouge_l",
    "per_task",
    "per_category",
    "training",
    "evaluation",
)


def load_results(out_dir: Path) -> dict[str, Any]:
    """``out_dir/results.json`` as a dict, or a TunelensInputError naming the problem."""
    from tunelens.io import read_json

    path = Path(out_dir) / "results.json"
    if not path.exists():
        raise TunelensInputError(
            "no results.json; run `tunelens run SPEC --out DIR` first", source=str(path)
        )
    data = read_json(path, what="results file")
    if not isinstance(data, dict):
        raise TunelensInputError("results.json must hold a JSON object", source=str(path))
    return data


def parse_results(data: Any, source: str | Path = "results.json") -> StudyResults:
    """results.json data as :class:`StudyResults`, or a TunelensInputError naming the key."""
    if not isinstance(data, (Mapping, StudyResults)):
        raise TunelensInputError("results.json must hold a JSON object", source=str(source))
    return parse_file(StudyResults, data, source=str(source), what="results")


def plain(value: Any) -> Any:
    """A model (or any value) as JSON data with sorted keys: the order results.json has."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {k: plain(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ---------------------------------------------------------------- value formatting


def is_stat(value: Any) -> bool:
    """A {"mean": x, "ci": [lo, hi]} summary."""
    return isinstance(value, Mapping) and "mean" in value


def fmt_number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def fmt(value: Any) -> str:
    """One table cell: '0.912 [0.90, 0.93]' for a summary, compact JSON for structures."""
    if isinstance(value, BaseModel):
        value = plain(value)
    if is_stat(value):
        text = fmt_number(value.get("mean"))
        ci = value.get("ci")
        if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
            text += f" [{fmt_number(ci[0])}, {fmt_number(ci[1])}]"
        if "n" in value and "method" in value:  # an interval over units: show n beside it
            text += f" (n {fmt_number(value['n'])}{', t' if value['method'] == 't' else ''})"
        extra = {k: v for k, v in value.items() if k not in ("mean", "ci", "n", "method")}
        if extra:
            text += " (" + ", ".join(f"{k}: {fmt(v)}" for k, v in extra.items()) + ")"
        return text
    if (
        isinstance(value, Mapping)
        and value
        and all(is_stat(v) or not isinstance(v, (Mapping, list, tuple)) for v in value.values())
    ):
        return "; ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return fmt_number(value)


def condition_text(condition: Any) -> str:
    if isinstance(condition, Mapping):
        return ", ".join(f"{k}={fmt(v)}" for k, v in condition.items())
    return fmt(condition)


def table_of_records(records: Sequence[Any]) -> dict[str, Any]:
    """A list of dicts -> {"columns", "rows"} (columns: union of keys, first-seen order)."""
    columns: list[str] = []
    for record in records:
        if isinstance(record, Mapping):
            columns += [str(k) for k in record if str(k) not in columns]
    rows = [
        [fmt(record.get(c)) if isinstance(record, Mapping) else fmt(record) for c in columns]
        or [fmt(record)]
        for record in records
    ]
    return {"columns": columns or ["value"], "rows": rows}


def generic_block(value: Any) -> dict[str, Any]:
    """How an unknown results.json value is shown: a table where possible, else JSON."""
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return {"kind": "table", **table_of_records(value)}
    if isinstance(value, Mapping):
        return {
            "kind": "table",
            "columns": ["key", "value"],
            "rows": [[str(k), fmt(v)] for k, v in value.items()],
        }
    return {"kind": "pre", "text": json.dumps(value, indent=2, ensure_ascii=False, default=str)}


def extras(entry: Mapping[str, Any], known: Sequence[str]) -> list[tuple[str, str]]:
    return [(str(k), fmt(v)) for k, v in entry.items() if k not in known]


# ---------------------------------------------------------------- sections


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def convergence_view(
    entries: Sequence[ConvergenceEntry], plots: list[Plot]
) -> list[dict[str, Any]]:
    figures = iter(plots)
    views = []
    for i, entry in enumerate(entries):
        plot = next(figures, None)
        layers = [plain(row) for row in entry.layers]
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
                "layers": {"columns": columns, "rows": rows},
                "tests": tests,
                **convergence_detail_view(plain(entry)),
                "extras": extras(plain(entry), CONVERGENCE_VIEWED),
                "warnings": [str(w) for w in plain(entry).get("warnings") or []],
            }
        )
    return views


LAYER_LABEL_KEYS = ("stack", "block", "label")


def layer_cell(row: Mapping[str, Any]) -> str:
    """A layer's table cell: its index, and its stack label where results carry one.

    '0 (emb)', '3 (enc 2)', '4 (dec emb)': an encoder-decoder's two stacks share
    one axis of indices, so the label keeps encoder and decoder layers apart.
    """
    label = row.get("label")
    return f"{fmt(row.get('layer'))} ({label})" if label else fmt(row.get("layer"))


CONVERGENCE_VIEWED = (
    *CONVERGENCE_KNOWN,
    "behaviour",
    "patching",
    "seed_agreement",
    "tuning",
    "per_seed",
    "warnings",
)
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


def convergence_detail_view(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The answer in words, the calibrated ICL-IT table, behaviour, patching, seeds, tuning."""
    from tunelens.report.convergence_words import convergence_sentences, layer_ranges

    layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
    present = [(k, label) for k, label in ICL_IT_COLUMNS if any(k in row for row in layers)]
    calibrated = None
    if any(k != "cos_icl_it" and not k.startswith("cka_") for k, _ in present):
        calibrated = {
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
    patching = [r for r in entry.get("patching") or [] if isinstance(r, Mapping)]
    patch_table = None
    if patching:
        patch_table = {
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
    behaviour = entry.get("behaviour")
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
    tuning = entry.get("tuning")
    adapted = tuning.get("adapted") if isinstance(tuning, Mapping) else None
    return {
        "sentences": convergence_sentences(entry),
        "calibrated": calibrated,
        "behaviour": [(str(k), fmt(v)) for k, v in behaviour.items()]
        if isinstance(behaviour, Mapping)
        else [],
        "patching": patch_table,
        "seeds": seeds,
        "adapted": "; ".join(str(w) for w in adapted.get("weights", []))
        if isinstance(adapted, Mapping)
        else "",
    }


def _baseline_sources(results: StudyResults) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, entry) for every baseline: the known ones in their order, then the rest."""
    if results.baselines is None:
        return []
    baselines = plain(results.baselines)
    names = [*[b for b in BASELINES if b in baselines], *sorted(set(baselines) - set(BASELINES))]
    return [(f"baseline: {n}", baselines[n]) for n in names if isinstance(baselines[n], Mapping)]


def _sources(results: StudyResults) -> list[tuple[str, Mapping[str, Any]]]:
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
        f"epochs, {fmt(training.get('steps'))} steps, lr {fmt(training.get('learning_rate'))} "
        f"({fmt(training.get('lr_schedule'))}), seed {fmt(training.get('seed'))}, "
        f"{fmt(training.get('template'))}"
    )


def _share_text(share: Any) -> str:
    """A share with its interval, or the verdict with the gain's interval."""
    if not isinstance(share, Mapping):
        return ""
    if share.get("verdict") == "share":
        reading = share.get("reading")
        text = fmt({"mean": share.get("mean"), "ci": share.get("ci")})
        return f"{text} (n {fmt(share.get('n'))}{', ' + str(reading) if reading else ''})"
    raw = share.get("gain")
    gain: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    return (
        f"tuning gain not significant: {fmt({'mean': gain.get('mean'), 'ci': gain.get('ci')})} "
        f"(n {fmt(gain.get('n'))})"
    )


def audit_view(results: StudyResults, plots: list[Plot]) -> dict[str, Any]:
    audit = plain(results.audit or [])
    data = plain(results)
    condition_keys: list[str] = []
    for e in audit:
        condition_keys += [str(k) for k in e["condition"] if str(k) not in condition_keys]
    extra_keys: list[str] = []
    for e in audit:
        extra_keys += [str(k) for k in e if k not in AUDIT_KNOWN and str(k) not in extra_keys]
    grid_rows = [
        [
            *[fmt(e["condition"].get(k)) for k in condition_keys],
            fmt(e["em"]),
            fmt(e["rouge_l"]),
            _tuning_text(e.get("training")),
            *[fmt(e.get(k)) for k in extra_keys],
        ]
        for e in audit
    ]
    baseline_rows = [
        [
            label.removeprefix("baseline: "),
            fmt(entry.get("em")),
            fmt(entry.get("rouge_l")),
            "; ".join(f"{k}: {v}" for k, v in extras(entry, AUDIT_KNOWN)),
        ]
        for label, entry in [
            *_baseline_sources(results),
            *other_encoding_baselines(data),
        ]
    ]
    sources = _sources(results)
    controls = ("simplified", "delusive", "no_definition", "random_guess")
    share_rows = []
    for row in data.get("audit_format_share") or []:
        gain = (row.get("tuning_gain") or {}).get("em")
        share_rows.append(
            [
                fmt(row.get("encoding")),
                fmt(row.get("instances_per_task")),
                fmt(row.get("seed")),
                fmt(gain) if gain else "",
                *[_share_text((row.get(c) or {}).get("em")) for c in controls],
            ]
        )
    headline = breakdown(sources, "per_category", "headline")
    metric_of: dict[str, str] = {}
    for _, entry in sources:
        for cat, scores in (entry.get("per_category") or {}).items():
            if isinstance(scores, Mapping) and scores.get("headline_metric"):
                metric_of[str(cat)] = str(scores["headline_metric"])
    for row in headline["rows"]:
        row[0] = f"{row[0]} ({metric_of.get(row[0], '?')})"
    spaces = data.get("audit_label_spaces") or {}
    label_rows = [
        [
            str(name),
            ", ".join(space.get("labels") or []) or "free text",
            fmt(space.get("source")),
            ", ".join(space.get("unseen") or []),
        ]
        for name, space in spaces.items()
        if isinstance(space, Mapping)
    ]
    bound = data.get("audit_definition_blind_bound") or {}
    return {
        "plot": data_uri(plots[0].path) if plots else None,
        "caption": plots[0].caption if plots else "",
        "verdicts": [str(v.get("text")) for v in data.get("audit_verdict") or []],
        "bound": fmt(bound.get("em")) if bound.get("em") is not None else None,
        "above": {
            "columns": ["definition-only", "exact match", "whole interval above the bound"],
            "rows": [
                [str(r.get("what")), fmt(r.get("em")), "yes" if r.get("above") else "no"]
                for r in bound.get("above") or []
                if isinstance(r, Mapping)
            ],
        },
        "grid": {
            "columns": [*condition_keys, "exact match", "ROUGE-L", "training", *extra_keys],
            "rows": grid_rows,
        },
        "baselines": baseline_rows,
        "shares": {
            "columns": ["encoding", "instances per task", "seed", "tuning gain (EM)", *controls],
            "rows": share_rows,
        },
        "categories": {m: breakdown(sources, "per_category", m) for m in ("em", "rouge_l")}
        | {"headline": headline},
        "tasks": {m: breakdown(sources, "per_task", m) for m in ("em", "rouge_l")},
        "labels": {
            "columns": ["task", "label space", "from", "named but never used"],
            "rows": label_rows,
        },
        "unseen": [r for r in label_rows if r[3]],
    }


@dataclass(frozen=True)
class Section:
    """One experiment's part of report.html: its anchor, nav title, template and view.

    ``present(results)`` says whether results.json has the section;
    ``view(results, plots)`` builds what ``templates/<template>`` reads as
    ``section.view`` (``plots``: the figures of this section).
    """

    anchor: str
    title: str
    template: str
    present: Callable[[StudyResults], bool]
    view: Callable[[StudyResults, list[Plot]], Any]


SECTIONS: list[Section] = [
    Section(
        "convergence",
        "Convergence",
        "sections/convergence.html.j2",
        lambda r: r.convergence is not None,
        lambda r, plots: convergence_view(r.convergence or [], plots),
    ),
    Section(
        "audit",
        "Audit",
        "sections/audit.html.j2",
        lambda r: r.audit is not None or r.baselines is not None,
        audit_view,
    ),
]


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of every tunelens page: the package's templates, autoescaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tunelens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(results: StudyResults | Mapping[str, Any], plots: list[Plot]) -> str:
    """The report's HTML for ``results`` and already written ``plots``."""
    results = parse_results(results)
    spec = results.spec
    env_rows = [(str(k), fmt(v)) for k, v in plain(results.environment or {}).items()]
    note = spec.get("note") if spec is not None else None
    if results.limit is not None:  # a limited run says so first (tunelens.runs.limit)
        from tunelens.runs.limit import limit_note

        note = f"{limit_note(results.limit).capitalize()}. {note or ''}".strip()
    toc: list[tuple[str, str]] = []
    sections = []
    for section in SECTIONS:
        if section.present(results):
            mine = [p for p in plots if p.section == section.anchor]
            sections.append({"template": section.template, "view": section.view(results, mine)})
            toc.append((section.anchor, section.title))
    data = plain(results)
    others = []
    for key in sorted(k for k in data if k not in KNOWN_KEYS):
        anchor = "key-" + "".join(ch if ch.isalnum() else "-" for ch in str(key))
        others.append((anchor, str(key).replace("_", " ").capitalize(), generic_block(data[key])))
        toc.append((anchor, str(key)))
    if spec is not None:
        toc.append(("spec", "Spec"))
    if env_rows:
        toc.append(("environment", "Environment"))
    return (
        template_environment()
        .get_template("study.html.j2")
        .render(
            title="tunelens report",
            version=fmt(results.tunelens_version),
            env=env_rows,
            env_line=", ".join(
                f"{k} {v}" for k, v in env_rows if k in ("python", "torch", "device")
            ),
            note=note or "",
            toc=toc,
            sections=sections,
            others=others,
            spec_yaml=yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
            if spec is not None
            else "",
        )
    )


def build_report(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` (and the PNGs under ``out_dir/plots/``) from results.json."""
    out_dir = Path(out_dir)
    results = parse_results(load_results(out_dir), source=out_dir / "results.json")
    plots_dir = out_dir / PLOTS_DIR
    if plots_dir.is_dir():  # figures of an earlier report may name conditions no longer there
        for old in plots_dir.glob("*.png"):
            old.unlink()
    plots = write_plots(plain(results), plots_dir)
    path = out_dir / REPORT
    atomic_write_text(path, render_report(results, plots))
    return path
