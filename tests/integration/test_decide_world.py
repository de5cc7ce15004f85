"""`tunelens decide` end to end on a world task given as JSONL, with the embedded world model.

Sizes are small so the test stays fast; accuracy values are not asserted (the
world model may be retrained), only that every part of the report is there and
consistent, that a re-run resumes from the stored cells, and that bad input
exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelens.experiments.decide.config import make_config
from tunelens.experiments.decide.runner import run_decide
from tunelens.models.paths import world_model_dir
from tunelens.spec import TuningSpec
from tunelens.tasks.jsonl import write_jsonl
from tunelens.tasks.world.generator import generate_world

pytestmark = pytest.mark.skipif(
    not (world_model_dir() / "config.json").is_file(),
    reason="the embedded world model is not installed",
)

HOSTILE = "<script>alert(1)</script>"
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def world_task(tmp_path: Path) -> Path:
    task = generate_world(0).heldout[0]  # 56 one-word inputs, 4 labels
    task = task.with_changes(definition=f"{task.definition} {HOSTILE}")
    return write_jsonl(task, tmp_path / "world_task.jsonl")


def small_config(**overrides):
    fields = dict(
        k=[1, 4],
        tune_sizes=[8, "all"],
        test_size=16,
        demo_size=4,
        bootstrap=200,
        similarity_items=8,
        tuning=TuningSpec(epochs=2, batch_size=8),
    )
    return make_config(**{**fields, **overrides})


def test_decide_on_a_world_task(tmp_path):
    task_path = world_task(tmp_path)
    labels = json.loads(task_path.read_text().splitlines()[0])["labels"]
    costs = tmp_path / "costs.yaml"
    lines = []
    for i, true in enumerate(labels):
        wrong = ", ".join(f"{p}: {i + j + 1}" for j, p in enumerate(labels) if p != true)
        lines.append(f"{true}: {{{wrong}}}")
    costs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    outcome = run_decide(task_path, "world", small_config(), out, costs_path=costs, progress=False)
    data = json.loads((out / "decide.json").read_text())
    assert data == outcome.results

    assert data["split"]["test"] == 16 and data["split"]["demo_pool"] == 4
    assert data["split"]["tuning_pool"] == 56 - 16 - 4
    assert sum(c["test"] for c in data["split"]["per_label"].values()) == 16
    ids = [m["id"] for m in data["methods"]]
    assert ids == [
        "zero_shot",
        "icl_k1",
        "icl_k4",
        "tune_n8",
        "tune_n36",
        "control_simplified",
        "control_delusive",
        "label_guess",
    ]
    for method in data["methods"]:
        assert 0 <= method["accuracy"]["mean"] <= 100
        lo, hi = method["accuracy"]["ci"]
        assert lo <= method["accuracy"]["mean"] <= hi
        counts = method["confusion"]["counts"]
        assert method["confusion"]["predicted"] == [*labels, "(other)"]
        assert sum(map(sum, counts)) == pytest.approx(16)
        assert "cost_per_1000" in method
        per = method["compute"]["per_1000_items"]
        assert per["flops"] >= 0 and per["prompt_tokens"] >= 0
    methods = {m["id"]: m for m in data["methods"]}
    # ICL prompts are longer, so they cost more per item than zero-shot and the tuned models
    assert (
        methods["icl_k4"]["compute"]["per_1000_items"]["prompt_tokens"]
        > methods["zero_shot"]["compute"]["per_1000_items"]["prompt_tokens"]
        == methods["tune_n8"]["compute"]["per_1000_items"]["prompt_tokens"]
    )
    assert (
        methods["tune_n36"]["compute"]["training"]["flops"]
        > methods["tune_n8"]["compute"]["training"]["flops"]
        > 0
    )
    assert methods["tune_n8"]["train"]["steps"] == 2  # 8 pairs, batch 8, 2 epochs
    assert methods["label_guess"]["accuracy"]["mean"] == pytest.approx(25.0)
    assert methods["label_guess"]["cost_per_1000"]["mean"] > 0

    assert data["curves"]["icl"] == [[1, "icl_k1"], [4, "icl_k4"]]
    assert data["curves"]["tuning"] == [[8, "tune_n8"], [36, "tune_n36"]]
    assert [c["b"] for c in data["comparisons"]["at_equal_size"]] == ["icl_k4", "icl_k4"]
    share = data["format_share"]
    assert share["tuned"] == "tune_n36"
    assert set(share["controls"]) == {"control_simplified", "control_delusive", "label_guess"}
    assert data["similarity"]["n_items"] == 8
    blocks = json.loads((world_model_dir("world") / "config.json").read_text())["num_hidden_layers"]
    assert len(data["similarity"]["layers"]) == blocks + 1  # embeddings + every block
    assert data["similarity"]["k"] in (1, 4)
    assert "tuning n=all" not in " ".join(data["notes"])  # 'all' is measured as n=36
    verdict = data["verdict"]
    assert verdict["summary"] and verdict["by_size"] and verdict["format"]
    assert verdict["summary"][0].startswith("Best: ")

    html = (out / "decide.html").read_text()
    for anchor in (
        "verdict",
        "curves",
        "methods",
        "compute",
        "format",
        "costs",
        "confusion",
        "similarity",
        "token-shift",
        "split",
    ):
        assert f'id="{anchor}"' in html, anchor
    # curves, compute, similarity and the tuned methods' token shift
    assert html.count("data:image/png;base64,") == 4
    assert "Where the intervals are too wide to decide" in html
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html

    # the page can be rebuilt from decide.json alone
    from tunelens.experiments.decide.report import rebuild_report

    (out / "decide.html").unlink()
    assert rebuild_report(out).read_text() == html
    # ... and `tunelens report DIR` rebuilds decide's page like any run's
    from typer.testing import CliRunner

    from tunelens.cli import app

    (out / "decide.html").unlink()
    rebuilt = CliRunner().invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"report: {out / 'decide.html'}" in rebuilt.output
    assert (out / "decide.html").read_text() == html

    # a re-run reads every method back from the store and writes the same file
    before = (out / "decide.json").read_bytes()
    timings = json.loads((out / "timings.json").read_text())
    assert len(timings["cells"]) == 8  # 7 model methods + similarity
    assert timings["runs"][-1]["cells_run"] == 8
    run_decide(task_path, "world", small_config(), out, costs_path=costs, progress=False)
    assert (out / "decide.json").read_bytes() == before
    timings = json.loads((out / "timings.json").read_text())
    assert timings["runs"][-1]["cells_run"] == 0  # nothing was recomputed
    before_cells = set(timings["cells"])

    # a changed tuning size computes only the new method
    run_decide(
        task_path,
        "world",
        small_config(tune_sizes=[8, 16, "all"]),
        out,
        costs_path=costs,
        progress=False,
    )
    cells = json.loads((out / "timings.json").read_text())["cells"]
    assert [v["name"] for k, v in cells.items() if k not in before_cells] == ["tune n=16"]


def tunelens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelens", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


def main_in_process(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """Exit status and stderr of ``tunelens ARGS`` run through the CLI's own entry point."""
    from tunelens.cli import main

    monkeypatch.setattr(sys, "argv", ["tunelens", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    task_path = world_task(tmp_path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(task_path.read_text().splitlines()[0] + '\n{"input": "cat"}\n')
    free = tmp_path / "free.jsonl"
    free.write_text(
        "".join(json.dumps({"input": f"q{i}", "output": f"answer {i}"}) + "\n" for i in range(20))
    )
    costs = tmp_path / "costs.csv"
    costs.write_text("true,predicted,cost\niron,right,1\n")
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    cases = [
        (["--task", str(free)], "needs a classification task"),
        (["--task", str(tmp_path / "absent.jsonl")], "absent.jsonl"),
        (["--task", str(task_path), "--costs", str(costs)], "no cost for true"),
        (["--task", str(task_path), "--k", "1,x"], "--k: 'x' is not"),
        (["--task", str(task_path), "--test-size", "2.5"], "--test-size"),
        (["--task", str(task_path), "--test-size", "50"], "too few"),
        (["--task", str(task_path), "--template", "fancy"], "--template"),
        (["--task", str(task_path), "--lr", "-1"], "--lr"),
        (
            ["--task", str(task_path), "--model", str(tmp_path / "no_model")],
            "model directory does not exist",
        ),
    ]
    for args, message in cases:
        model = [] if "--model" in args else ["--model", "world"]
        code, err = main_in_process(["decide", *args, *model, *out], capsys, monkeypatch)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    # and once through a real process: the installed entry point behaves the same
    result = tunelens("decide", "--task", str(broken), "--model", "world", *out, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {broken}: line 2, field 'output'"), lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_decide_on_ray_equals_local(tmp_path):
    """decide runs on the shared machinery: its cells go to a (local) Ray instance."""
    pytest.importorskip("ray")
    task_path = world_task(tmp_path)
    config = small_config(k=[1], tune_sizes=[8], controls=False, similarity_items=4)
    local = run_decide(task_path, "world", config, tmp_path / "local", progress=False)
    distributed = run_decide(
        task_path, "world", config, tmp_path / "ray", progress=False, executor="ray"
    )
    # Same cells, same answers (floats may differ in the last digits with another thread count).
    assert [m["id"] for m in distributed.results["methods"]] == [
        m["id"] for m in local.results["methods"]
    ]
    for a, b in zip(distributed.results["methods"], local.results["methods"], strict=True):
        assert a["accuracy"]["mean"] == pytest.approx(b["accuracy"]["mean"], abs=1e-6)
    timings = json.loads((tmp_path / "ray" / "timings.json").read_text())
    assert timings["runs"][-1]["executor"] == "ray"
    assert timings["runs"][-1]["cells_run"] == 4  # zero-shot, ICL k=1, tuned n=8, similarity


@pytest.mark.parametrize("learning_rate", ["1e30", "1"])
def test_a_learning_rate_that_destroys_the_model_is_exit_2_not_0_percent(tmp_path, learning_rate):
    # 1e30 blows the adapter norm up at step 1 on every CPU (finite or not); 1 drives the
    # world model's loss far above its first value (towards and past uniform output).
    from tests.helpers.cli import assert_one_error_line, invoke

    result = invoke(
        "decide",
        "--task",
        world_task(tmp_path),
        "--model",
        "world",
        "--k",
        "1",
        "--tune-sizes",
        "8",
        "--test-size",
        "16",
        "--demo-size",
        "4",
        "--no-controls",
        "--bootstrap",
        "200",
        "--learning-rate",
        learning_rate,
        "--out",
        tmp_path / "out",
        "--no-progress",
    )
    line = assert_one_error_line(result)
    assert "decide cell" in line and "training diverged" in line and " at step " in line, line
    assert not (tmp_path / "out" / "decide.json").exists()
