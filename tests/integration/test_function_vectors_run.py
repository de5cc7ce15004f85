"""The function-vectors experiment end to end through the command line, on a tiny Llama:
run (two rounds of cells), resume, plan, export and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers.cli import invoke

SPEC = """model: {model}
seed: 0
function_vectors:
  tasks: world:heldout
  k: 2
  n_prompts: 2
  n_queries: 2
  top_heads: 3
  layers: [0, 2]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.helpers.models import save_tiny_model

    root = tmp_path_factory.mktemp("fv")
    model = save_tiny_model("llama", root / "model")
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(model=model))
    out = root / "out"
    result = invoke("run", str(spec), "--out", str(out), "--no-progress", "--workers", "1")
    assert result.code == 0, result.stderr
    return spec, out


def test_run_writes_heads_and_the_curve_and_resumes(run_dir: tuple[Path, Path]) -> None:
    spec, out = run_dir
    results = json.loads((out / "results.json").read_text())
    (entry,) = results["function_vectors"]
    assert entry["tasks"] == 40 and entry["n_layers"] == 2 and entry["n_heads"] == 4
    assert len(entry["top_heads"]) == 3 and len(entry["aie"]) == 2
    assert [p["layer"] for p in entry["curve"]] == [0, 2]
    assert entry["best"]["layer"] in (0, 2) and entry["verdict"]
    timings = json.loads((out / "timings.json").read_text())
    names = [c["name"] for c in timings["cells"].values()]
    assert sum(" heads " in n for n in names) == 40 and sum(" vector " in n for n in names) == 40
    before = (out / "results.json").read_bytes()
    again = invoke("run", str(spec), "--out", str(out), "--no-progress", "--workers", "1")
    assert again.code == 0, again.stderr
    assert json.loads((out / "timings.json").read_text())["runs"][-1]["cells_run"] == 0
    assert (out / "results.json").read_bytes() == before


def test_export_and_report(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = run_dir
    exported = invoke("export", str(out), "--out", str(tmp_path / "export"))
    assert exported.code == 0, exported.stderr
    table = (tmp_path / "export" / "function_vectors.csv").read_text().splitlines()
    assert table[0].startswith("model,k,layer,head,n,measure,value,ci_low,ci_high")
    assert sum(",aie," in line for line in table) == 8
    rebuilt = invoke("report", str(out))
    assert rebuilt.code == 0, rebuilt.stderr
    html = (out / "report.html").read_text()
    assert 'id="function_vectors"' in html and "Function vectors: do a few heads" in html
    assert html.count("data:image/png;base64") >= 2


def test_plan_counts_the_forwards_of_both_rounds(run_dir: tuple[Path, Path]) -> None:
    """The plan sees only the heads cells; its forward calls are those both rounds made."""
    spec, out = run_dir
    result = invoke("plan", str(spec), "--json")
    assert result.code == 0, result.stderr
    experiments = json.loads(result.stdout)["experiments"]
    (fv,) = [e for e in experiments if e["experiment"] == "function_vectors"]
    (entry,) = json.loads((out / "results.json").read_text())["function_vectors"]
    assert fv["cells"] == 40 and fv["exact_cells"] == 40
    assert fv["work"]["forward_calls"] == entry["forwards"]["heads"] + entry["forwards"]["vector"]
