"""The default report answers first and fits a 1,280 px screen (issue 28).

``tests/data/default_results.json.gz`` is the results.json of a real default run
(``tunelens run --out DIR``, no spec), so these tests render the page a new user gets
without running the study (scripts/report_screenshot.py refreshes it: ``--fixture``).
Headless Chromium lays the page out at 1,280 x 900: a copy of report.html, without its
Content-Security-Policy and with a small script at the end, writes the positions it
measures into the DOM, which ``--dump-dom`` prints. Where Chromium is absent the layout
tests skip and say how to install it.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.chromium import run_chromium

from tunelens.report.html import build_report

FIXTURE = Path(__file__).parents[1] / "data" / "default_results.json.gz"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, FOLD = 1280, 900
STUDIES = ("convergence", "audit")  # the default spec's two questions

PROBE = """<script>(() => {
  const out = {viewport: [innerWidth, innerHeight], verdicts: [], tables: []};
  for (const box of document.querySelectorAll('.answers .verdict')) {
    const r = box.querySelector('.sentences').getBoundingClientRect();
    out.verdicts.push({id: box.id, top: r.top + scrollY, bottom: r.bottom + scrollY,
                       text: box.querySelector('.sentences').textContent.trim().length});
  }
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  for (const t of document.querySelectorAll('table')) {
    const box = t.parentElement;
    const head = t.closest('details') ? t.closest('details').querySelector('summary') : null;
    out.tables.push({head: (head ? head.textContent : t.querySelector('th').textContent).trim(),
                     scroll: box.scrollWidth, client: box.clientWidth,
                     width: t.getBoundingClientRect().width});
  }
  const page = document.documentElement;
  out.page = [page.scrollWidth, page.clientWidth];
  document.body.setAttribute('data-layout', JSON.stringify(out));
})();</script>"""


@pytest.fixture(scope="module")
def default_report(tmp_path_factory) -> Path:
    """report.html of the default run's results (figures and all), built by this code."""
    out = tmp_path_factory.mktemp("default")
    (out / "results.json").write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    return build_report(out)


def layout(report: Path, tmp_path: Path) -> dict[str, Any]:
    """What Chromium measures on ``report`` at 1,280 x 900 (see the module docstring)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH; install it (apt-get install -y chromium) to run this")
    text = report.read_text(encoding="utf-8")
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    page = tmp_path / "probe.html"
    page.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = run_chromium(
        CHROMIUM, tmp_path / "profile", f"--window-size={WIDTH},{FOLD}", "--dump-dom", page.as_uri()
    )
    found = re.search(r'data-layout="([^"]*)"', result.stdout)
    assert found, f"the probe wrote nothing: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_each_studys_verdict_lies_above_the_fold(default_report, tmp_path):
    measured = layout(default_report, tmp_path)
    assert measured["viewport"][0] == WIDTH
    boxes = {box["id"]: box for box in measured["verdicts"]}
    assert set(boxes) == {f"{study}-verdict" for study in STUDIES}, boxes
    for name, box in boxes.items():
        assert box["text"] > 100, f"{name}: a verdict box without its sentences"
        assert box["bottom"] <= FOLD, f"{name}: its verdict ends at {box['bottom']:.0f} px"


def test_no_table_is_wider_than_its_container(default_report, tmp_path):
    """Every table, those folded in <details> opened, fits the page without scrolling."""
    measured = layout(default_report, tmp_path)
    assert len(measured["tables"]) > 20  # the default report's tables, details opened
    wide = [t for t in measured["tables"] if t["scroll"] > t["client"] or t["width"] > WIDTH]
    assert not wide, wide
    width, client = measured["page"]
    assert width <= client, f"the page scrolls sideways: {width} px in {client} px"


def visible_text(report: Path) -> str:
    """The page's text a reader sees: no figures, no spec YAML, no environment."""
    text = report.read_text(encoding="utf-8")
    text = re.sub(r'src="data:[^"]*"', "", text)
    text = re.sub(r"<pre>.*?</pre>", "", text, flags=re.S)
    text = text.split('<h2 id="environment">')[0]
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def test_numbers_have_three_significant_figures(default_report):
    """No '0.8574 [0.8258, 0.8864]': every decimal shown has at most three significant
    figures (integers are counts; versions like 0.1.0 are not numbers)."""
    text = visible_text(default_report)
    decimals = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)", text)
    assert len(decimals) > 500
    long = [d for d in decimals if len(d.replace(".", "").lstrip("0")) > 3]
    assert not long, long[:20]
    assert re.search(r"\d\.\d+ \[\d", text)  # intervals are shown beside their means


def test_tables_name_measures_in_words(default_report):
    """No results.json key (snake_case) as a column or row label; each table that names
    measures has its glossary line, which gives the key for the reader who looks it up."""
    text = default_report.read_text(encoding="utf-8").split('<h2 id="environment">')[0]
    headers = re.findall(r"<th>([^<]*)</th>", text)
    first_cells = re.findall(r"<tr><td>([^<]*)</td>", text)
    key = re.compile(r"^[a-z]+(?:_[a-z]+)+$")
    raw = [h for h in [*headers, *first_cells] if key.match(html.unescape(h).strip())]
    assert not raw, sorted(set(raw))
    for words, key_name in (
        ("KL(ICL ‖ anchor) − KL(ICL ‖ IT)", "kl_anchor_minus_it"),
        ("ICL gain (points)", "icl_gain"),
    ):
        assert words in html.unescape(text)
        assert f"<code>{key_name}</code>" in text  # in the glossary line
    assert text.count('class="glossary"') >= 10
