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
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ValidationError

from tunelens.api.results import StudyResults
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


def convergence_view(entries: list[Any], plots: list[Plot]) -> list[dict[str, Any]]:
    figures = iter(plots)
    views = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        plot = next(figures, None)
        layers = [row for row in entry.get("layers") or [] if isinstance(row, Mapping)]
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
        tests = []
        for row in layers:
            wilcoxon = row.get("wilcoxon")
            if isinstance(wilcoxon, Mapping):
                for name, test in wilcoxon.items():
                    test = test if isinstance(test, Mapping) else {}
                    tests.append(
                        [
                            fmt(row.get("layer")),
                            str(name),
                            *[fmt(test.get(k)) for k in ("statistic", "p", "p_holm", "effect")],
                        ]
                    )
        accuracy = entry.get("accuracy")
        views.append(
            {
                "title": f"Condition {i + 1}",
                "condition": condition_text(entry.get("condition")),
                "n_pairs": fmt(entry.get("n_pairs")),
                "accuracy": [(str(k), fmt(v)) for k, v in accuracy.items()]
                if isinstance(accuracy, Mapping)
                else [],
                "plot": data_uri(plot.path) if plot else None,
                "caption": plot.caption if plot else "",
                "layers": {"columns": columns, "rows": rows},
                "tests": tests,
                "extras": extras(entry, CONVERGENCE_KNOWN),
            }
        )
    return views


def _sources(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, entry) for every baseline and audit condition, in report order."""
    sources: list[tuple[str, Mapping[str, Any]]] = []
    baselines = results.get("baselines")
    if isinstance(baselines, Mapping):
        names = [
            *[b for b in BASELINES if b in baselines],
            *sorted(set(baselines) - set(BASELINES)),
        ]
        sources += [
            (f"baseline: {n}", baselines[n]) for n in names if isinstance(baselines[n], Mapping)
        ]
    audit = results.get("audit")
    if isinstance(audit, list):
        sources += [(audit_label(e), e) for e in audit if isinstance(e, Mapping)]
    return sources


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


def audit_view(results: Mapping[str, Any], plots: list[Plot]) -> dict[str, Any]:
    audit = [e for e in results.get("audit") or [] if isinstance(e, Mapping)]
    condition_keys: list[str] = []
    for e in audit:
        c = e.get("condition")
        if isinstance(c, Mapping):
            condition_keys += [str(k) for k in c if str(k) not in condition_keys]
    extra_keys: list[str] = []
    for e in audit:
        extra_keys += [str(k) for k in e if k not in AUDIT_KNOWN and str(k) not in extra_keys]
    grid_rows = []
    for e in audit:
        c = e.get("condition") if isinstance(e.get("condition"), Mapping) else {}
        grid_rows.append(
            [
                *[fmt(c.get(k)) for k in condition_keys],
                fmt(e.get("em")),
                fmt(e.get("rouge_l")),
                *[fmt(e.get(k)) for k in extra_keys],
            ]
        )
    baselines = results.get("baselines")
    baseline_rows = []
    if isinstance(baselines, Mapping):
        for label, entry in _sources({"baselines": baselines}):
            baseline_rows.append(
                [
                    label.removeprefix("baseline: "),
                    fmt(entry.get("em")),
                    fmt(entry.get("rouge_l")),
                    "; ".join(f"{k}: {v}" for k, v in extras(entry, AUDIT_KNOWN)),
                ]
            )
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


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunelens report</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
background:#fff;line-height:1.45}
main{max-width:1150px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px}h2{border-bottom:2px solid #d0d7de;padding-bottom:4px;
margin-top:36px}h3{margin-top:26px}
.meta{color:#57606a;font-size:14px}.note{background:#f6f8fa;border-left:4px solid #0969da;
padding:8px 12px;white-space:pre-wrap}
nav a{margin-right:14px}
.scroll{overflow-x:auto;margin:8px 0 16px}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fbfcfd}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:13px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
details summary{cursor:pointer;color:#0969da}
</style></head>
<body><main>
<h1>tunelens report</h1>
<div class="meta">tunelens {{ version }}{% if env %} &middot; {{ env_line }}{% endif %}</div>
{% if note %}<p class="note">{{ note }}</p>{% endif %}
<nav>{% for anchor, title in toc %}<a href="#{{ anchor }}">{{ title }}</a>{% endfor %}</nav>

{% macro table(t, numeric_from=1) %}
<div class="scroll"><table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}
</tr></thead><tbody>{% for row in t.rows %}<tr>{% for v in row %}
<td{% if loop.index0 >= numeric_from %} class="num"{% endif %}>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% endmacro %}

{% if convergence is not none %}
<h2 id="convergence">Convergence: ICL vs instruction tuning, layer by layer</h2>
<p>Cosine similarity of last-token hidden states per layer, mean over (demonstration set,
anchor) pairs with 95% bootstrap CIs. Wilcoxon: paired one-sided signed-rank tests across
pairs, Holm-corrected across layers.</p>
{% for c in convergence %}
<h3>{{ c.title }}</h3>
<p><b>Condition:</b> {{ c.condition }} &middot; <b>pairs:</b> {{ c.n_pairs }}</p>
{% if c.accuracy %}<div class="scroll"><table><thead><tr><th>prediction</th><th>accuracy</th>
</tr></thead><tbody>{% for k, v in c.accuracy %}<tr><td>{{ k }}</td><td class="num">{{ v }}</td>
</tr>{% endfor %}</tbody></table></div>{% endif %}
{% if c.plot %}<figure><img src="{{ c.plot }}" alt="{{ c.caption }}">
<figcaption>{{ c.caption }}</figcaption></figure>{% endif %}
{% if c.layers.rows %}<details><summary>Per-layer similarity</summary>
{{ table(c.layers) }}</details>{% endif %}
{% if c.tests %}<h4>Wilcoxon signed-rank tests</h4>
{{ table({"columns": ["layer", "comparison", "statistic", "p", "p (Holm)", "effect"],
          "rows": c.tests}, 2) }}{% endif %}
{% if c.extras %}<details><summary>Other values</summary><div class="scroll"><table><tbody>
{% for k, v in c.extras %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</tbody></table></div></details>{% endif %}
{% endfor %}
{% endif %}

{% if audit is not none %}
<h2 id="audit">Audit: what instruction tuning taught</h2>
<p>Zero-shot scores on held-out tasks (x100), with 95% bootstrap CIs over tasks.</p>
{% if audit.plot %}<figure><img src="{{ audit.plot }}" alt="{{ audit.caption }}">
<figcaption>{{ audit.caption }}</figcaption></figure>{% endif %}
{% if audit.grid.rows %}<h3>Tuning conditions</h3>{{ table(audit.grid, 0) }}{% endif %}
{% if audit.baselines %}<h3>Baselines</h3>
{{ table({"columns": ["baseline", "exact match", "ROUGE-L", "other"],
          "rows": audit.baselines}) }}{% endif %}
{% if audit.categories.em.rows %}<h3>Per category: exact match</h3>
{{ table(audit.categories.em) }}
<h3>Per category: ROUGE-L</h3>{{ table(audit.categories.rouge_l) }}{% endif %}
{% if audit.tasks.em.rows %}<details><summary>Per task ({{ audit.tasks.em.rows|length }}
tasks)</summary><h4>Exact match</h4>{{ table(audit.tasks.em) }}
<h4>ROUGE-L</h4>{{ table(audit.tasks.rouge_l) }}</details>{% endif %}
{% endif %}

{% for anchor, title, block in others %}
<h2 id="{{ anchor }}">{{ title }}</h2>
{% if block.kind == "table" %}{{ table(block, 0) }}{% else %}<pre>{{ block.text }}</pre>{% endif %}
{% endfor %}

{% if spec_yaml %}<h2 id="spec">Spec</h2><pre>{{ spec_yaml }}</pre>{% endif %}
{% if env %}<h2 id="environment">Environment</h2><div class="scroll"><table><tbody>
{% for k, v in env %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</tbody></table></div>{% endif %}
</main></body></html>
"""


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )


def render_report(results: Mapping[str, Any], plots: list[Plot]) -> str:
    """The report's HTML for ``results`` and already written ``plots``."""
    spec = results.get("spec")
    env = results.get("environment")
    env_rows = [(str(k), fmt(v)) for k, v in env.items()] if isinstance(env, Mapping) else []
    note = spec.get("note") if isinstance(spec, Mapping) else None
    convergence = results.get("convergence")
    has_audit = isinstance(results.get("audit"), list) or isinstance(
        results.get("baselines"), Mapping
    )
    toc = []
    if isinstance(convergence, list):
        toc.append(("convergence", "Convergence"))
    if has_audit:
        toc.append(("audit", "Audit"))
    others = []
    for key in sorted(k for k in results if k not in KNOWN_KEYS):
        anchor = "key-" + "".join(ch if ch.isalnum() else "-" for ch in str(key))
        others.append(
            (anchor, str(key).replace("_", " ").capitalize(), generic_block(results[key]))
        )
        toc.append((anchor, str(key)))
    if isinstance(spec, Mapping):
        toc.append(("spec", "Spec"))
    if env_rows:
        toc.append(("environment", "Environment"))
    return (
        _environment()
        .from_string(TEMPLATE)
        .render(
            version=fmt(results.get("tunelens_version")),
            env=env_rows,
            env_line=", ".join(
                f"{k} {v}" for k, v in env_rows if k in ("python", "torch", "device")
            ),
            note=note or "",
            toc=toc,
            convergence=convergence_view(
                convergence, [p for p in plots if p.section == "convergence"]
            )
            if isinstance(convergence, list)
            else None,
            audit=audit_view(results, [p for p in plots if p.section == "audit"])
            if has_audit
            else None,
            others=others,
            spec_yaml=yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
            if isinstance(spec, Mapping)
            else "",
        )
    )


def build_report(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` (and the PNGs under ``out_dir/plots/``) from results.json."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    if plots_dir.is_dir():  # figures of an earlier report may name conditions no longer there
        for old in plots_dir.glob("*.png"):
            old.unlink()
    plots = write_plots(results, plots_dir)
    path = out_dir / REPORT
    atomic_write_text(path, render_report(results, plots))
    return path


def page_style() -> str:
    """The report's ``<style>`` block, for other one-page reports that should look the same."""
    start, end = TEMPLATE.index("<style>"), TEMPLATE.index("</style>") + len("</style>")
    return TEMPLATE[start:end]
