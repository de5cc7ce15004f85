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
from pydantic import BaseModel, ValidationError

from tunelens.api.results import ConvergenceEntry, StudyResults
from tunelens.errors import TunelensInputError
from tunelens.report.plots import BASELINES, CURVES, Plot, audit_label, write_plots
from tunelens.runs.store import atomic_write_text

REPORT = "report.html"
PLOTS_DIR = "plots"
KNOWN_KEYS = ("convergence", "audit", "baselines", "spec", "environment", "tunelens_version")
CONVERGENCE_KNOWN = ("condition", "n_pairs", "accuracy", "layers")
AUDIT_KNOWN = ("condition", "em", "rouge_l", "per_task", "per_category")


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
    if isinstance(data, StudyResults):
        return data
    if not isinstance(data, Mapping):
        raise TunelensInputError("results.json must hold a JSON object", source=str(source))
    try:
        return StudyResults.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TunelensInputError(
            f"not a tunelens results file: {first['msg']}", source=str(source), where=where
        ) from None


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
        extra = {k: v for k, v in value.items() if k not in ("mean", "ci")}
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
            {k for row in layers for k in row if k not in ("layer", "wilcoxon", *cos_keys)}
        )
        columns = ["layer", *[label for k, label, _ in CURVES if k in cos_keys], *other]
        rows = [
            [
                fmt(row.get("layer")),
                *[fmt(row.get(k)) for k in cos_keys],
                *[fmt(row.get(k)) for k in other],
            ]
            for row in layers
        ]
        tests = [
            [
                fmt(row.layer),
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
                "extras": extras(plain(entry), CONVERGENCE_KNOWN),
            }
        )
    return views


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
    return [*_baseline_sources(results), *audit]


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


def audit_view(results: StudyResults, plots: list[Plot]) -> dict[str, Any]:
    audit = plain(results.audit or [])
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
        for label, entry in _baseline_sources(results)
    ]
    sources = _sources(results)
    return {
        "plot": data_uri(plots[0].path) if plots else None,
        "caption": plots[0].caption if plots else "",
        "grid": {
            "columns": [*condition_keys, "exact match", "ROUGE-L", *extra_keys],
            "rows": grid_rows,
        },
        "baselines": baseline_rows,
        "categories": {m: breakdown(sources, "per_category", m) for m in ("em", "rouge_l")},
        "tasks": {m: breakdown(sources, "per_task", m) for m in ("em", "rouge_l")},
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
