"""results.json -> one self-contained report.html (inline CSS, plots as data URIs).

The report reads only the run directory's results files; it never loads a model and
never names an experiment. It asks the registry (:func:`tunelens.api.get_experiments`):
in registry order, each experiment whose ``results_keys()`` appear in results.json gives
its section through its ``report_part`` hook (typed read, figures, view, template); keys
no experiment claims get a generic table, the common keys (spec, environment) their
own blocks. An experiment with a results file of its own (``Experiment.results_file``)
gets a page of its own: its ``report_part``'s template rendered with the view's keys as
the page's variables (:func:`build_page`).

The answer comes first: a section whose view is a mapping with a ``verdict`` ({"title",
"lines": [(label, sentence)], "figure", "caption", "note"}) also gives a box at the top
of the page, its verdict sentences beside the other studies' and one key figure
(``verdict_box`` in templates/macros.html.j2). Every number goes through one formatter,
:func:`fmt_number` (three significant figures; the Jinja filter ``num``); each
experiment names its measures in words in one table of its own, and a table says what
they mean in a glossary line under it.

Task names, definitions, categories, spec notes and model outputs are untrusted text:
the templates (``templates/*.html.j2``: one base that every page extends, the study
page, the macros; each experiment's own under its package) are rendered by Jinja2 with
autoescaping on and no value is marked safe, and a Content-Security-Policy forbids
scripts and any external resource, so a hostile task name renders as text.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml
from pydantic import BaseModel

from tunelens.api.results import StudyResults, parse_file
from tunelens.errors import TunelensInputError
from tunelens.measures.token_shift import CATEGORIES
from tunelens.runs.store import atomic_write_text

if TYPE_CHECKING:
    from tunelens.api.experiment import Experiment, ReportPart

REPORT = "report.html"
RESULTS = "results.json"
PLOTS_DIR = "plots"
COMMON_KEYS = ("spec", "environment", "tunelens_version")
"""Keys of results.json the page shows in blocks of its own (``limit`` is shown as a key)."""


def load_results(out_dir: Path) -> dict[str, Any]:
    """``out_dir/results.json`` as a dict, or a TunelensInputError naming the problem."""
    from tunelens.io import read_json

    path = Path(out_dir) / RESULTS
    if not path.exists():
        raise TunelensInputError(
            "no results.json; run `tunelens run SPEC --out DIR` first", source=str(path)
        )
    data = read_json(path, what="results file")
    if not isinstance(data, dict):
        raise TunelensInputError("results.json must hold a JSON object", source=str(path))
    return data


def parse_results(data: Any, source: str | Path = RESULTS) -> StudyResults:
    """results.json's common keys as :class:`StudyResults` (each experiment reads its own
    keys), or a TunelensInputError naming the key."""
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


SIGNIFICANT = 3
"""Every number the reports show has this many significant figures (one formatter:
:func:`fmt_number`; intervals, tables and the Jinja filter ``num`` all go through it)."""


def fmt_number(value: Any, signed: bool = False) -> str:
    """A value at three significant figures: '0.857', '1.11', '0', '22.6', '1,234'.

    Integers are counts and stay exact; floats keep trailing zeros ('0.810') so that a
    column reads at one precision; |x| >= 1,000 is shown whole with thousands
    separators, |x| < 0.001 in scientific notation ('1.23e-05': p-values). ``signed``
    puts a '+' before a positive value (differences).
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        text = _significant(value)
    else:
        return str(value)
    return f"+{text}" if signed and value > 0 else text


def _significant(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 999.5:
        return f"{value:,.0f}"
    if abs(value) < 1e-3:
        return f"{value:.{SIGNIFICANT - 1}e}"
    return f"{value:#.{SIGNIFICANT}g}".rstrip(".")


def fmt_percent(share: Any) -> str:
    """A share given as a fraction, as '102% [85.5, 124]' (three significant figures)."""
    if not isinstance(share, Mapping) or not isinstance(share.get("mean"), (int, float)):
        return "n/a"
    ci = share.get("ci") or [None, None]
    lo, hi = (fmt_number(100 * b) if isinstance(b, (int, float)) else "n/a" for b in ci[:2])
    return f"{fmt_number(100 * share['mean'])}% [{lo}, {hi}]"


def fmt_difference(stat: Any, unit: str = "") -> str:
    """A paired difference with its sign: '+12.3 points [4.10, 20.0]'."""
    if not isinstance(stat, Mapping):
        return "n/a"
    ci = stat.get("ci") or [None, None]
    return (
        f"{fmt_number(stat.get('mean'), signed=True)}{unit} "
        f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]"
    )


_LONG_DECIMAL = re.compile(r"(?<![\w.])([+-]?)(\d+\.\d+)(?![\w.]*\d)")


def round_prose(text: str) -> str:
    """Decimals in stored prose (a verdict written into results.json by an older or a
    wordier formatter) at three significant figures: '+22.63 EM [16.48, 28.89]' ->
    '+22.6 EM [16.5, 28.9]'. Numbers with three significant figures or fewer, integers
    and versions ('0.1.0') are left as they are."""

    def shorter(match: re.Match[str]) -> str:
        sign, digits = match.group(1), match.group(2)
        if len(digits.replace(".", "").lstrip("0")) <= SIGNIFICANT:
            return match.group(0)
        return sign + _significant(float(digits))

    return _LONG_DECIMAL.sub(shorter, text)


def fmt(value: Any) -> str:
    """One table cell: '0.912 [0.90, 0.93]' for a summary, compact JSON for structures."""
    if isinstance(value, BaseModel):
        value = plain(value)
    if is_stat(value):
        text = fmt_number(value.get("mean"))
        ci = value.get("ci")
        if value.get("mean") is None and not any(v is not None for v in ci or []):
            return "n/a"
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


def key_name(key: str, words: Mapping[str, tuple[str, str]]) -> str:
    """A results.json key as the report names it: its words from an experiment's one
    table of measures (``{key: (name, meaning)}``), else the key itself (a key no table
    names yet is shown as results.json spells it)."""
    entry = words.get(key)
    return entry[0] if entry else key


def glossary(keys: Sequence[str], words: Mapping[str, tuple[str, str]]) -> list[list[str]]:
    """The glossary line under a table: [name, meaning, results.json key] of each key
    shown that ``words`` explains, in the order shown, each once."""
    seen: list[str] = []
    for key in keys:
        if key in words and key not in seen:
            seen.append(key)
    return [[words[k][0], words[k][1], k] for k in seen]


COLUMNS_PER_TABLE = 7
"""Value columns one table holds; a wider one is split (1,280 px without scrolling)."""


def split_columns(
    table: Mapping[str, Any], keep: int = 1, limit: int = COLUMNS_PER_TABLE
) -> list[dict[str, Any]]:
    """A wide ``{"columns", "rows"}`` table as several, each with the first ``keep``
    columns (the row labels) and at most ``limit`` of the others; other keys of
    ``table`` (its glossary) go with the last one."""
    columns, rows = list(table["columns"]), [list(r) for r in table["rows"]]
    values = range(keep, len(columns))
    chunks = [list(values[i : i + limit]) for i in range(0, len(values), limit)] or [[]]
    parts = []
    for chunk in chunks:
        picked = [*range(keep), *chunk]
        parts.append(
            {
                "columns": [columns[i] for i in picked],
                "rows": [[row[i] for i in picked if i < len(row)] for row in rows],
            }
        )
    parts[-1].update({k: v for k, v in table.items() if k not in ("columns", "rows")})
    return parts


def fold_constant(table: Mapping[str, Any], only: Sequence[str]) -> dict[str, Any]:
    """``table`` without the columns named in ``only`` whose value is the same in every
    row of two or more; those go to ``table["same"]`` as (column, value) pairs, said once
    above the table instead of on every row."""
    columns, rows = list(table["columns"]), [list(r) for r in table["rows"]]
    same = [
        i
        for i, column in enumerate(columns)
        if column in only and len(rows) > 1 and len({repr(r[i]) for r in rows if i < len(r)}) == 1
    ]
    picked = [i for i in range(len(columns)) if i not in same]
    return {
        **table,
        "columns": [columns[i] for i in picked],
        "rows": [[r[i] for i in picked if i < len(r)] for r in rows],
        "same": [(columns[i], rows[0][i]) for i in same],
    }


def transpose(table: Mapping[str, Any], corner: str = "") -> dict[str, Any]:
    """Rows become columns: a table of few rows and many columns made tall instead."""
    columns, rows = list(table["columns"]), list(table["rows"])
    return {
        "columns": [corner or columns[0], *[str(row[0]) for row in rows]],
        "rows": [
            [columns[i], *[row[i] if i < len(row) else "" for row in rows]]
            for i in range(1, len(columns))
        ],
    }


def most_shifted_table(top_shifted: Mapping[str, Any] | None, shown: int) -> dict[str, Any]:
    """The most shifted tokens of one tuned condition or method (token distribution shift), a
    column per category, each cell '"yes" 27 of 37': the token (quoted, whitespace escaped),
    times shifted, times written. Audit and decide show the same table."""

    def cell(entry: Mapping[str, Any]) -> str:
        text = json.dumps(str(entry.get("token")), ensure_ascii=False)
        shifted, written = fmt_number(entry.get("shifted")), fmt_number(entry.get("occurrences"))
        return f"{text} {shifted} of {written}"

    top = top_shifted or {}
    columns = [[cell(t) for t in (top.get(c) or [])[:shown]] for c in CATEGORIES]
    depth = max((len(c) for c in columns), default=0)
    return {
        "columns": ["label tokens", "format tokens", "other tokens"],
        "rows": [[c[i] if i < len(c) else "" for c in columns] for i in range(depth)],
    }


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


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """An input error an experiment raises about a file's data names that file."""
    try:
        yield
    except TunelensInputError as error:
        if error.source:
            raise
        raise TunelensInputError(error.message, source=str(path), where=error.where) from None


def study_experiments() -> list[Experiment]:
    """The registered experiments whose results go to results.json, in registry order."""
    from tunelens.api import get_experiments

    return [e for e in get_experiments().values() if e.results_file == RESULTS]


def report_parts(
    data: Mapping[str, Any], plots_dir: Path, source: Path | None = None
) -> tuple[list[ReportPart], set[str]]:
    """Each present experiment's section (its figures written) and the keys they claim.

    An experiment is present when one of its ``results_keys()`` is in ``data``; one whose
    ``report_part`` is None leaves its keys to the generic tables.
    """
    parts: list[ReportPart] = []
    claimed: set[str] = set()
    for experiment in study_experiments():
        keys = experiment.results_keys()
        if not any(key in data for key in keys):
            continue
        with reading(source or Path(RESULTS)):
            part = experiment.report_part(data, plots_dir)
        if part is not None:
            parts.append(part)
            claimed.update(keys)
    return parts, claimed


def template_environment(*loaders: jinja2.BaseLoader | None) -> jinja2.Environment:
    """The Jinja2 environment of every tunelens page: the package's templates (base, macros,
    study page), then each experiment's (``loaders``), autoescaped."""
    own = jinja2.PackageLoader("tunelens.report", "templates")
    environment = jinja2.Environment(
        loader=jinja2.ChoiceLoader([own, *(loader for loader in loaders if loader)]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = fmt  # the one number formatter, for values a template holds
    environment.filters["prose"] = round_prose  # stored sentences at three figures too
    return environment


def _notes(results: StudyResults) -> tuple[str, str]:
    """The limit of a limited run (tunelens.runs.limit; shown above the answers, which it
    qualifies) and the spec's note (shown under them)."""
    spec = results.spec
    note = spec.get("note") if spec is not None else None
    limited = ""
    if results.limit is not None:
        from tunelens.runs.limit import limit_note

        limited = f"{limit_note(results.limit).capitalize()}."
    return limited, str(note or "")


def render_report(
    results: StudyResults | Mapping[str, Any],
    parts: Sequence[ReportPart] = (),
    claimed: Sequence[str] | set[str] = (),
) -> str:
    """The report's HTML: the experiments' ``parts`` (in order), then every key of
    ``results`` that neither they (``claimed``) nor the common blocks show, as a table."""
    results = parse_results(results)
    spec = results.spec
    limited, note = _notes(results)
    env_rows = [(str(k), fmt(v)) for k, v in plain(results.environment or {}).items()]
    toc = [(part.anchor, part.title) for part in parts]
    data = plain(results)
    known = {*COMMON_KEYS, *claimed}
    others = []
    for key in sorted(k for k in data if k not in known):
        anchor = "key-" + "".join(ch if ch.isalnum() else "-" for ch in str(key))
        block = generic_block(data[key])
        pieces = split_columns(block, keep=1) if block["kind"] == "table" else [block]
        for piece in pieces:
            piece["kind"] = block["kind"]
        others.append((anchor, str(key).replace("_", " ").capitalize(), pieces))
        toc.append((anchor, str(key)))
    if spec is not None:
        toc.append(("spec", "Spec"))
    if env_rows:
        toc.append(("environment", "Environment"))
    return (
        template_environment(*(part.loader for part in parts))
        .get_template("study.html.j2")
        .render(
            title="tunelens report",
            version=fmt(results.tunelens_version),
            env=env_rows,
            env_line=", ".join(
                f"{k} {v}" for k, v in env_rows if k in ("python", "torch", "device")
            ),
            limited=limited,
            note=note,
            toc=toc,
            sections=parts,
            others=others,
            spec_yaml=yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
            if spec is not None
            else "",
        )
    )


def _fresh_plots(plots_dir: Path) -> Path:
    """``plots_dir`` without the figures of an earlier report (they may name conditions no
    longer there)."""
    if plots_dir.is_dir():
        for old in plots_dir.glob("*.png"):
            old.unlink()
    return plots_dir


def build_report(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` (and the PNGs under ``out_dir/plots/``) from results.json."""
    out_dir = Path(out_dir)
    source = out_dir / RESULTS
    data = load_results(out_dir)
    results = parse_results(data, source=source)
    parts, claimed = report_parts(data, _fresh_plots(out_dir / PLOTS_DIR), source)
    path = out_dir / REPORT
    atomic_write_text(path, render_report(results, parts, claimed))
    return path


def build_page(out_dir: Path, experiment: Experiment) -> Path:
    """Write the page of an experiment with a results file of its own (``X.json`` ->
    ``X.html``) from that file: its ``report_part``'s template, the view's keys as the
    page's variables; figures under ``out_dir/plots/``."""
    from tunelens.io import read_json

    out_dir = Path(out_dir)
    source = out_dir / experiment.results_file
    data = read_json(source, what="results file")  # a key given twice is an error
    with reading(source):
        part = experiment.report_part(data, out_dir / PLOTS_DIR)
    if part is None:
        raise TunelensInputError(f"experiment {experiment.name!r} has no page", source=str(source))
    page = template_environment(part.loader).get_template(part.template).render(**part.view)
    path = source.with_suffix(".html")
    atomic_write_text(path, page)
    return path
