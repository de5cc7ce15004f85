"""Per-sample logs: every audit cell writes DIR/samples/<key>.jsonl, and they add up.

The scores in the logs, averaged per task and then over tasks, are the cell's
numbers in results.json; a resumed run leaves results.json and the logs
byte-identical.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tunelens.experiments.audit import eval_items, eval_prompts
from tunelens.runs.study import run_study
from tunelens.spec import Spec
from tunelens.tasks.sets import load_task_set

EVAL = 4


def small_spec() -> Spec:
    return Spec.model_validate(
        {
            "audit": {
                "definitions": ["original", "simplified"],
                "examples": ["original"],
                "instances_per_task": [2],
                "eval_instances_per_task": EVAL,
                "bootstrap": 100,
                "max_new_tokens": 3,
                "tuning": {"epochs": 1, "batch_size": 16},
            }
        }
    )


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def per_task_means(records: list[dict], key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        groups[r["task"]].append(r[key])
    return {task: float(np.mean(v)) for task, v in groups.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit_samples")
    results = run_study(small_spec(), out, progress=False)
    return out, results


def test_every_audit_cell_has_a_sample_log(run):
    out, _ = run
    keys = {p.stem for p in (out / "cells" / "audit").glob("*.json")}
    assert len(keys) == 4 + 2  # baselines + grid
    assert {p.stem for p in (out / "samples").glob("*.jsonl")} == keys


def test_sample_scores_aggregate_to_the_cell_numbers(run):
    out, results = run
    test = load_task_set("world:heldout")
    items = eval_items(test, EVAL)
    prompts = {
        enc: eval_prompts(items, 2, "tk", enc) for enc in ("definition_only", "definition_examples")
    }
    checked = 0
    for path in sorted((out / "cells" / "audit").glob("*.json")):
        record = json.loads(path.read_text())
        cell, params = record["cell"], record["cell"]["params"]
        samples = read_samples(out / "samples" / f"{cell['key']}.jsonl")
        by_encoding: dict[str, list[dict]] = defaultdict(list)
        for s in samples:
            assert {"id", "prompt", "prediction", "references", "em", "rouge_l"} <= set(s)
            by_encoding[s["encoding"]].append(s)
        for encoding, records in by_encoding.items():
            assert [r["id"] for r in records] == [inst.id for _, inst in items]
            if encoding != "any":
                assert [r["prompt"] for r in records] == prompts[encoding]
            if "baseline" in params:
                which = params["baseline"]
                entry = (
                    results["baselines_by_encoding"][encoding]["untuned"]
                    if which == "untuned"
                    else results["baselines"][which]
                )
            else:
                (entry,) = [
                    e
                    for e in results["audit"]
                    if e["condition"]["definition"] == params["definition"]
                    and e["condition"]["encoding"] == encoding
                ]
            em_key = "expected_em" if params.get("baseline") == "random" else "em"
            rl_key = "expected_rouge_l" if params.get("baseline") == "random" else "rouge_l"
            em, rl = per_task_means(records, em_key), per_task_means(records, rl_key)
            for task, value in em.items():
                assert entry["per_task"][task]["em"] == pytest.approx(value, abs=1e-4)
                assert entry["per_task"][task]["rouge_l"] == pytest.approx(rl[task], abs=1e-4)
            assert entry["em"]["mean"] == pytest.approx(np.mean(list(em.values())))
            assert entry["rouge_l"]["mean"] == pytest.approx(np.mean(list(rl.values())))
            checked += 1
    assert checked == 2 * 2 + 2 + 3  # grid x encodings, untuned x encodings, 3 others


def test_results_record_how_each_condition_was_tuned(run):
    _, results = run
    for entry in results["audit"]:
        t = entry["training"]
        assert t["effective_batch_size"] == 16 and t["epochs"] == 1
        assert t["steps"] == int(np.ceil(t["train_pairs"] / 16))
        assert t["learning_rate"] == pytest.approx(3e-3) and t["seed"] == 0
        assert t["template"] == "tk"
        assert entry["evaluation"]["encoding"] == entry["condition"]["encoding"]
    assert [e["condition"]["encoding"] for e in results["audit"]][:2] == ["definition_only"] * 2


def test_a_resumed_run_leaves_the_same_bytes(run, tmp_path):
    out, _ = run
    import shutil

    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    victim = sorted((copy / "cells" / "audit").glob("*.json"))[-1]
    victim.unlink()
    (copy / "samples" / f"{victim.stem}.jsonl").unlink()
    (copy / "samples" / sorted(p.name for p in (copy / "samples").iterdir())[0]).write_text("x")
    run_study(small_spec(), copy, progress=False)
    assert (copy / "results.json").read_bytes() == (out / "results.json").read_bytes()
    for path in (out / "samples").glob("*.jsonl"):
        assert (copy / "samples" / path.name).read_bytes() == path.read_bytes()
