"""The typed results models: dumping an aggregator's real output through them changes nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tunelens.api import Cell
from tunelens.api.results import Stat, StudyResults, dump_study
from tunelens.experiments.audit.results import AuditResults, dump_audit
from tunelens.experiments.convergence.results import (
    ConvergenceEntry,
    ConvergenceResults,
    dump_convergence,
)
from tunelens.experiments.decide.schema import DecideResults, dump_decide
from tunelens.experiments.world_eval.results import dump_world_eval
from tunelens.runs.store import dumps, strict_json

PAIRS = ("icl_it", "anchor_icl", "anchor_it")


@pytest.fixture
def raw(monkeypatch):
    """Aggregators return their data as built, not passed through the models (to compare)."""
    import tunelens.experiments.audit.results as audit
    import tunelens.experiments.convergence.results as convergence
    import tunelens.experiments.decide.schema as decide

    for module, name in (
        (convergence, "dump_convergence"),
        (audit, "dump_audit"),
        (decide, "dump_decide"),
    ):
        monkeypatch.setattr(module, name, lambda data: data)


def canonical(data: Any) -> str:
    """The bytes results.json would hold (sorted keys, NaN -> null)."""
    return dumps(strict_json(data), indent=1)


def assert_lossless(original: Any, dumped: Any) -> None:
    assert canonical(dumped) == canonical(original)


def convergence_cell(k: int, seed: int, n_pairs: int = 6, n_layers: int = 3):
    rng = np.random.default_rng(seed * 10 + k)
    params = {
        "model": "world",
        "k": k,
        "flip_fraction": 0.0,
        "relevance": "same",
        "definition": True,
        "control": "none",
        "n_pairs": n_pairs,
    }
    result = {
        "n_pairs": n_pairs,
        "n_layers": n_layers,
        "cos": {p: np.round(rng.uniform(0.2, 1.0, (n_pairs, n_layers)), 7).tolist() for p in PAIRS},
        "cka": {p: [round(float(x), 7) for x in rng.uniform(0, 1, n_layers)] for p in PAIRS},
        "correct": {
            n: [float(x) for x in rng.choice([0.0, 100.0], n_pairs)]
            for n in ("anchor", "icl", "it")
        },
        "tasks": ["t"] * n_pairs,
    }
    return Cell("convergence", f"k={k} seed={seed}", params, seed), result


def test_convergence_round_trip(raw):
    from tunelens.experiments.convergence import aggregate_convergence

    cells = [convergence_cell(k, seed) for k in (1, 2) for seed in (0, 1)]
    # One condition with constant cosines: zero differences, degenerate tests.
    constant = convergence_cell(4, 0)
    constant[1]["cos"] = {p: [[0.5] * 3] * 6 for p in PAIRS}
    entries = aggregate_convergence([*cells, constant])
    assert len(entries) == 3
    assert [("k_comparison" in e) for e in entries] == [True, True, False]
    assert_lossless(entries, dump_convergence(entries))
    assert_lossless(entries, dump_convergence(json.loads(canonical(entries))))


def test_convergence_renamed_or_missing_key_fails():
    from tunelens.experiments.convergence import aggregate_convergence

    entry = aggregate_convergence([convergence_cell(1, 0)])[0]
    renamed = json.loads(canonical(entry))
    renamed["layers"][0]["cos_iclit"] = renamed["layers"][0].pop("cos_icl_it")
    with pytest.raises(ValidationError, match="cos_icl_it"):
        ConvergenceEntry.model_validate(renamed)
    missing = json.loads(canonical(entry))
    del missing["accuracy"]["it"]
    with pytest.raises(ValidationError, match="accuracy.it"):
        ConvergenceEntry.model_validate(missing)


def audit_cells(tasks, seed: int = 0):
    rng = random.Random(seed)
    names = [t.name for t in tasks]

    def per_task() -> dict[str, dict[str, float]]:
        return {n: {"em": rng.uniform(0, 100), "rouge_l": rng.uniform(0, 100)} for n in names}

    encodings = ("definition_only", "definition_examples")
    training = {
        "effective_batch_size": 16,
        "epochs": 2,
        "steps": 4,
        "learning_rate": 0.003,
        "seed": seed,
        "template": "tk",
    }
    out = []
    for baseline in ("untuned", "random", "copy_input", "copy_demo"):
        if baseline == "untuned":
            result: dict[str, Any] = {
                "evaluations": {e: {"per_task": per_task(), "samples": []} for e in encodings}
            }
        else:
            result = {"evaluations": {"any": {"per_task": per_task(), "samples": []}}}
        if baseline == "random":
            result["evaluations"]["any"]["expected_per_task"] = per_task()
        out.append((Cell("audit", f"baseline {baseline}", {"baseline": baseline}, 0), result))
    for definition in ("original", "simplified", "none"):
        for examples in ("original", "delusive"):
            for n in (5, "full"):
                params = {"definition": definition, "examples": examples, "instances_per_task": n}
                result = {
                    "evaluations": {e: {"per_task": per_task(), "samples": []} for e in encodings},
                    "train_pairs": 10,
                    "training": training,
                }
                out.append((Cell("audit", f"{definition} {examples} {n}", params, seed), result))
    return out


def test_audit_round_trip(raw):
    from tunelens.experiments.audit import AuditExperiment
    from tunelens.experiments.audit.spec import AuditSpec
    from tunelens.tasks.sets import load_task_set

    section = AuditSpec(bootstrap=100)
    tasks = load_task_set(section.test)
    sections = AuditExperiment().aggregate(section, audit_cells(tasks[:6]))
    assert set(sections) == {
        "audit",
        "baselines",
        "audit_format_share",
        "baselines_by_encoding",
        "audit_verdict",
        "audit_label_spaces",
        "audit_definition_blind_bound",
        "audit_controls",
    }
    assert sections["audit_format_share"] and sections["baselines"]["random"]["draw"]
    assert_lossless(sections, dump_audit(sections))
    assert_lossless(sections, dump_audit(json.loads(canonical(sections))))


def test_world_eval_round_trip():
    from tunelens.experiments.world_eval import WorldEvalResult

    result = WorldEvalResult(
        shots={0: 3.0, 1: 52.123, 8: 70.0},
        random_baseline=41.6667,
        tasks=12,
        queries_per_task=10,
        per_family={"contains": {0: 1.0, 8: 66.66}, "first": {0: 5.0, 8: 75.0}},
    )
    data = result.to_json()
    assert_lossless(data, dump_world_eval(data))
    assert_lossless({"world_eval": data}, dump_study({"world_eval": data}))


def test_study_round_trip_with_common_keys():
    from tunelens.experiments.convergence import aggregate_convergence
    from tunelens.runs.study import environment
    from tunelens.spec import Spec

    spec = Spec()
    results = strict_json(
        {
            "convergence": aggregate_convergence([convergence_cell(1, 0)]),
            "spec": spec.model_dump(mode="json"),
            "tunelens_version": "0.1.0",
            "environment": environment(spec),
            "my_experiment": [{"anything": 1}],
        }
    )
    assert_lossless(results, dump_study(results))
    # The common keys are StudyResults'; each experiment reads its own keys with its models.
    parsed = StudyResults.model_validate(results)
    assert parsed.model_extra == {
        "convergence": results["convergence"],
        "my_experiment": [{"anything": 1}],
    }
    assert ConvergenceResults.model_validate(results).convergence is not None
    assert AuditResults.model_validate(results).audit is None


def test_stat_keeps_extra_keys_and_nulls():
    data = {"mean": None, "ci": [None, 1.5], "tuning_gain": 3}
    assert Stat.model_validate(data).dump() == data
    with pytest.raises(ValidationError):
        Stat.model_validate({"mean": 1.0, "ci": [1.0]})


def _decide_task(path: Path) -> Path:
    rng = random.Random(0)
    labels = ["negative", "positive"]
    header = {
        "tunelens_task": 1,
        "task": "tiny <b>task</b>",
        "definition": "Is it positive or negative?",
        "labels": labels,
    }
    lines = [json.dumps(header)]
    for i in range(60):
        words = " ".join(rng.choice(["good", "bad", "fine", "awful"]) for _ in range(3))
        lines.append(json.dumps({"input": words, "output": labels[i % 2]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_decide_json_goes_through_the_model(tmp_path, monkeypatch, raw):
    """run_decide with canned method results (no model): decide.json equals its dump."""
    import tunelens.experiments.decide.methods as methods
    from tunelens.experiments.decide.config import make_config
    from tunelens.experiments.decide.report import rebuild_report
    from tunelens.experiments.decide.runner import run_decide
    from tunelens.experiments.decide.split import label_of

    def fake_run(method, loaded, task, split, config, adapters_dir=None):
        rng = random.Random(method.id)
        labels = list(task.labels)
        truth = [label_of(i) for i in split.test]
        skill = {"zero_shot": 0.4, "icl": 0.6, "tuning": 0.8}.get(method.family, 0.5)
        predictions = [t if rng.random() < skill else rng.choice([*labels, "what?"]) for t in truth]
        result: dict[str, Any] = {
            "answer_tokens": 2.0,
            "predictions": predictions,
            "prompt_tokens": [20 + 10 * method.examples] * len(truth),
        }
        if method.family in ("tuning", "control"):
            n = max(1, method.examples)
            result["prompt_tokens"] = [20] * len(truth)
            result["train"] = {
                "pairs": n,
                "pair_tokens": [22] * n,
                "uses": [3] * n,
                "steps": 3,
                "final_loss": 0.25,
            }
        return result

    monkeypatch.setattr(methods, "run_method", fake_run)
    costs = tmp_path / "costs.csv"
    costs.write_text("true,predicted,cost\nnegative,positive,1\npositive,negative,5\n")
    config = make_config(k=[1, 2, 4], tune_sizes=[4, 8], similarity_items=0, bootstrap=200)
    outcome = run_decide(
        _decide_task(tmp_path / "task.jsonl"),
        "world",
        config,
        tmp_path / "out",
        costs_path=costs,
        progress=False,
    )
    on_disk = json.loads(outcome.json_path.read_text(encoding="utf-8"))
    assert_lossless(on_disk, dump_decide(on_disk))
    assert_lossless(outcome.results, dump_decide(outcome.results))
    parsed = DecideResults.model_validate(on_disk)
    assert parsed.costs is not None and parsed.format_share is not None
    assert {m.family for m in parsed.methods} >= {"zero_shot", "icl", "tuning", "baseline"}
    html = outcome.html_path.read_text(encoding="utf-8")
    assert "tiny &lt;b&gt;task&lt;/b&gt;" in html and "<b>task" not in html
    assert rebuild_report(tmp_path / "out").read_text(encoding="utf-8") == html
