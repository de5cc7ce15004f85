"""Token distribution shift end to end: the audit's grid cells and decide's tuned methods.

Each check is independent of the code under test: the stored ranks are recomputed
with the test's own loop of plain ``model(prompt + output).logits`` forwards of the
*untuned* model (tunelens's loader, no adapter), and the shares in results.json /
decide.json against a hand count over the per-sample logs. Then export rows, the
report section, and results written before the measure (no key) still load.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelens.api.results import parse_file
from tunelens.experiments.audit.report import report_part
from tunelens.experiments.audit.results import AuditResults
from tunelens.experiments.audit.tidy import tidy_rows
from tunelens.models.loading import load_model
from tunelens.models.paths import world_model_dir
from tunelens.report.html import build_report
from tunelens.runs.study import run_study
from tunelens.spec import Spec

pytestmark = pytest.mark.skipif(
    not (world_model_dir() / "config.json").is_file(),
    reason="the embedded world model is not installed",
)

EVAL = 3


def small_spec() -> Spec:
    return Spec.model_validate(
        {
            "audit": {
                "model": "world-base",
                "definitions": ["original"],
                "examples": ["original"],
                "instances_per_task": [2],
                "eval_instances_per_task": EVAL,
                "eval_encodings": ["definition_only"],
                "bootstrap": 200,
                "max_new_tokens": 3,
                "tuning": {"epochs": 1, "batch_size": 16},
            }
        }
    )


@pytest.fixture(scope="module")
def audit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("token_shift_audit")
    results = run_study(small_spec(), out, progress=False)
    return out, results


def _grid_samples(out: Path) -> list[dict]:
    for path in sorted((out / "cells" / "audit").glob("*.json")):
        record = json.loads(path.read_text())
        if "baseline" not in record["cell"]["params"]:
            key = record["cell"]["key"]
            lines = (out / "samples" / f"{key}.jsonl").read_text().splitlines()
            return [json.loads(line) for line in lines]
    raise AssertionError("no grid cell")


@torch.no_grad()
def _plain_ranks(loaded, prompt: str, output: list[int]) -> list[int]:
    ids = loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    logits = loaded.model(torch.tensor([list(ids) + output])).logits[0]
    ranks = []
    for j, target in enumerate(output):
        row = logits[len(ids) + j - 1].numpy()
        ranks.append(int(np.flatnonzero(np.argsort(-row, kind="stable") == target)[0]) + 1)
    return ranks


def test_audit_ranks_are_the_untuned_models(audit_run):
    out, _ = audit_run
    samples = _grid_samples(out)
    untuned = load_model("world-base")
    assert samples and all("base_ranks" in s for s in samples)
    for sample in samples[::7]:
        assert sample["base_ranks"] == _plain_ranks(untuned, sample["prompt"], sample["output_ids"])
        # the ids are the tuned model's answer: its first line is the prediction
        text = untuned.tokenizer.decode(sample["output_ids"], skip_special_tokens=True)
        assert text.split("\n", 1)[0].strip() == sample["prediction"]


def test_audit_shares_are_a_hand_count_over_the_samples(audit_run):
    out, results = audit_run
    samples = _grid_samples(out)
    per_task: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        for rank in s["base_ranks"]:
            per_task[s["task"]]["unshifted" if rank == 1 else "marginal" if rank <= 3 else "s"] += 1
    shifted = [100 * c["s"] / sum(c.values()) for c in per_task.values()]
    row = results["audit_token_shift"]["conditions"][0]
    assert row["condition"]["encoding"] == "definition_only"
    assert row["shifted"]["mean"] == pytest.approx(np.mean(shifted))
    assert row["shifted"]["n"] == len(per_task)
    assert row["n_positions"] == sum(len(s["base_ranks"]) for s in samples)
    assert results["audit_token_shift"]["verdict"] == row["reading"]


def test_audit_export_report_and_old_results(audit_run, tmp_path):
    out, results = audit_run
    rows = tidy_rows(results)
    metrics = {r["metric"] for r in rows}
    assert {"tokens_unshifted", "tokens_marginal", "tokens_shifted"} <= metrics
    overall = [r for r in rows if r["metric"] == "tokens_shifted" and r["level"] == "overall"]
    assert overall[0]["value"] == pytest.approx(
        results["audit_token_shift"]["conditions"][0]["shifted"]["mean"]
    )
    part = report_part(results, tmp_path)
    assert part is not None and part.view["token_shift"]["table"]["rows"]
    assert (tmp_path / "audit_token_shift.png").is_file()
    assert "audit-token-shift" in build_report(out).read_text()
    old = {k: v for k, v in results.items() if k != "audit_token_shift"}
    assert parse_file(AuditResults, old, what="results").audit_token_shift is None
    old_part = report_part(old, tmp_path / "old")
    assert old_part is not None and old_part.view["token_shift"] is None


def test_decide_tuned_methods_carry_their_token_shift(tmp_path):
    from tunelens.experiments.decide.config import make_config
    from tunelens.experiments.decide.runner import run_decide
    from tunelens.experiments.decide.tidy import tidy_rows as decide_rows
    from tunelens.prompts import PromptStyle, render_prompt
    from tunelens.spec import TuningSpec
    from tunelens.tasks.jsonl import write_jsonl
    from tunelens.tasks.world.generator import generate_world

    task = generate_world(0).heldout[0]
    path = write_jsonl(task, tmp_path / "task.jsonl")
    config = make_config(
        k=[1],
        tune_sizes=[8],
        test_size=8,
        demo_size=2,
        bootstrap=200,
        similarity_items=0,
        tuning=TuningSpec(epochs=2, batch_size=8),
    )
    outcome = run_decide(path, "world", config, tmp_path / "out", progress=False)
    methods = {m["id"]: m for m in outcome.results["methods"]}
    tuned = [m for m in methods.values() if m["family"] in ("tuning", "control")]
    assert tuned and all("token_shift" in m for m in tuned)
    assert all("token_shift" not in methods[i] for i in ("zero_shot", "icl_k1"))
    untuned = load_model("world")
    record = json.loads(
        next(
            p.read_text()
            for p in (tmp_path / "out" / "cells" / "decide").glob("*.json")
            if json.loads(p.read_text())["cell"]["params"].get("method") == "tune"
        )
    )["result"]["token_ranks"]
    from tunelens.experiments.decide.split import stratified_split

    split = stratified_split(task.instances, test_size=8, demo_size=2, seed=config.seed)
    style = PromptStyle(template=config.template, definition=config.definition, n_positive=0)
    prompts = [render_prompt(task, i.input, [], style, untuned.tokenizer) for i in split.test]
    for prompt, sample in zip(prompts, record["samples"], strict=True):
        assert sample["base_ranks"] == _plain_ranks(untuned, prompt, sample["output_ids"])
    shift = methods["tune_n8"]["token_shift"]
    per_item = [
        100 * sum(r > 3 for r in s["base_ranks"]) / len(s["base_ranks"])
        for s in record["samples"]
        if s["base_ranks"]
    ]
    assert shift["unit"] == "item" and shift["shifted"]["mean"] == pytest.approx(np.mean(per_item))
    assert {"tokens_shifted", "tokens_unshifted"} <= {
        r["metric"] for r in decide_rows(outcome.results)
    }
    assert "token-shift" in (tmp_path / "out" / "decide.html").read_text()
