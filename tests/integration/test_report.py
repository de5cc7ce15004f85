"""report.html: self-contained, sections only for present keys, untrusted text escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.chromium import run_chromium
from tests.helpers.fakes import XSS, fake_experiments, small_spec

from tunelens.api.results import Stat, StudyResults, WilcoxonTest
from tunelens.errors import TunelensInputError
from tunelens.experiments.audit.results import (
    AuditCategoryScores,
    AuditCondition,
    AuditEntry,
    AuditTaskScores,
    Baselines,
    RandomBaseline,
)
from tunelens.experiments.convergence.results import (
    ConvergenceAccuracy,
    ConvergenceCondition,
    ConvergenceEntry,
    ConvergenceLayer,
    LayerStats,
    SeedStats,
)
from tunelens.report import build_any_report
from tunelens.report.html import build_report
from tunelens.runs.study import run_study

CHROMIUM = Path("/usr/bin/chromium")
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_study(small_spec(), out, progress=False, experiments=fake_experiments())
    return out


def audit_entry(definition: str = "original") -> AuditEntry:
    """One audit entry with untrusted text in its task, category and condition names."""
    stat = Stat(mean=40.0, ci=[35.0, 45.0])
    return AuditEntry(
        condition=AuditCondition(
            definition=definition, examples="original", instances_per_task=5, seed=0
        ),
        em=stat,
        rouge_l=stat,
        per_task={XSS: AuditTaskScores(em=10.0, rouge_l=20.0)},
        per_category={f"cat {XSS}": AuditCategoryScores(em=stat, rouge_l=stat, tasks=1)},
        # keys the models do not name: shown as they are, escaped
        format_share={"mean": 0.5, "ci": [0.4, 0.6]},
        prediction=f'"><img src=x onerror=alert(1)> {XSS}',
    )


def convergence_entry(k: int = 8, layers: int = 2) -> ConvergenceEntry:
    stat = Stat(mean=0.9, ci=[0.85, 0.95])
    tests = {"icl_it>anchor_icl": WilcoxonTest(statistic=12.0, p=0.01, p_holm=0.02, effect=0.4)}
    rows = [
        LayerStats(
            layer=i, cos_icl_it=stat, cos_anchor_icl=stat, cos_anchor_it=stat, wilcoxon=tests
        )
        for i in range(layers)
    ]
    return ConvergenceEntry(
        condition=ConvergenceCondition(
            model="world",
            k=k,
            flip_fraction=0.0,
            relevance="same",
            definition=True,
            control="none",
        ),
        n_pairs=30,
        seeds=[0],
        accuracy=ConvergenceAccuracy(anchor=stat, icl=stat, it=stat),
        layers=[
            ConvergenceLayer(**dict(row), cka_icl_it=0.5, cka_anchor_icl=0.4, cka_anchor_it=0.3)
            for row in rows
        ],
        per_seed=[SeedStats(seed=0, n_pairs=30, layers=rows)],
    )


def write_results(out: Path, results: StudyResults) -> Path:
    (out / "results.json").write_text(json.dumps(results.dump()), encoding="utf-8")
    return out


def hostile_results() -> StudyResults:
    """Hand-written results.json: untrusted text in task, category, definition and note."""
    entry = audit_entry(definition=XSS)
    random = RandomBaseline(**{k: v for k, v in entry if k != "condition"})
    return StudyResults(
        audit=[entry],
        baselines=Baselines(random=random),
        spec={"note": XSS, "model": XSS},
        environment={"python": XSS},
        tunelens_version="0.1.0",
        **{f"extra_{XSS}": [{"name": XSS}]},
    )


def test_report_is_self_contained_with_plots(run_dir):
    path = build_report(run_dir)
    html = path.read_text(encoding="utf-8")
    assert path == run_dir / "report.html"
    pngs = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    # each condition's figure, the audit's bars, and each section's key figure (its answer box)
    assert pngs == [
        "audit.png",
        "audit_key.png",
        "convergence_000.png",
        "convergence_001.png",
        "convergence_key.png",
    ]
    assert html.count('src="data:image/png;base64,') == 5
    # No external resource: every src/href is a data URI or an in-page anchor.
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert url.startswith(("data:image/png;base64,", "#")), url
    assert "<script" not in html and "<link" not in html
    for section in (
        'id="convergence"',
        'id="audit"',
        'id="spec"',
        'id="environment"',
        "Wilcoxon signed-rank tests",
        "Per category: exact match",
        "Baselines",
        "format_share",
        "icl_it&gt;anchor_icl",
    ):
        assert section in html, section


def test_untrusted_text_is_escaped(tmp_path):
    html = build_report(write_results(tmp_path, hostile_results())).read_text(encoding="utf-8")
    assert XSS not in html
    assert "<script" not in html.lower()
    assert "<img src=x" not in html
    assert html.count(ESCAPED) >= 6  # task, category, definition, note, spec, environment, ...
    assert "default-src 'none'" in html  # CSP: even an injected tag could not run or fetch


def test_sections_only_for_present_keys(tmp_path):
    results = StudyResults(convergence=[convergence_entry()], tunelens_version="0.1.0")
    html = build_report(write_results(tmp_path, results)).read_text(encoding="utf-8")
    assert 'id="convergence"' in html
    for absent in ('id="audit"', 'id="spec"', 'id="environment"', "Baselines"):
        assert absent not in html
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "convergence_000.png",
        "convergence_key.png",
    ]


def test_missing_or_invalid_results_are_input_errors(tmp_path):
    with pytest.raises(TunelensInputError, match="no results.json"):
        build_report(tmp_path)
    (tmp_path / "results.json").write_text('{"audit": [1, 2')
    with pytest.raises(TunelensInputError, match="invalid JSON"):
        build_report(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(TunelensInputError, match="JSON object"):
        build_report(tmp_path)


def test_a_renamed_key_is_an_input_error_naming_it(tmp_path):
    """The report reads results.json through the typed models: a renamed key fails clearly."""
    data = StudyResults(convergence=[convergence_entry()], audit=[audit_entry()]).dump()
    data["audit"][0]["rouge"] = data["audit"][0].pop("rouge_l")
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(TunelensInputError, match="Field required") as error:
        build_report(tmp_path)
    assert "audit.0.rouge_l" in str(error.value)


def test_build_any_report_dispatches_on_the_files_present(run_dir, tmp_path):
    assert build_any_report(run_dir) == [run_dir / "report.html"]
    with pytest.raises(TunelensInputError, match="no results.json"):
        build_any_report(tmp_path)


def test_chromium_renders_a_nontrivial_page(run_dir, tmp_path):
    """Headless Chromium screenshot of the report (Debian: apt-get install -y chromium)."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium; install it (apt-get install -y chromium) to run this")
    from PIL import Image

    report = build_report(run_dir)
    shot = tmp_path / "report.png"
    result = run_chromium(
        CHROMIUM,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        report.as_uri(),
    )
    assert shot.exists(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    pixels = np.asarray(image.resize((300, 500)), dtype=np.int32).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    ink = float((pixels.sum(axis=1) < 600).mean())
    assert colours > 50, f"only {colours} colours: a blank or broken page?"
    assert ink > 0.03, f"only {ink:.1%} of the page is not near-white"
