"""The audit on real Super-NaturalInstructions tasks with tiny random T5 and Llama configs.

Numbers are meaningless (random weights); the mechanics are what is tested: the
whole grid runs through the study runner, every prediction is stored with its
instance id, and the label-space guess equals a direct computation from the data.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from tunelens.experiments.audit import run_baseline_cell
from tunelens.runs.study import run_study
from tunelens.spec import Spec
from tunelens.tasks.loaders import load_tasks

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO.parent / "shared" / "data" / "superni"
pytestmark = pytest.mark.skipif(
    not (ROOT / "index.tsv").is_file(), reason="../shared/data/superni not present"
)
TRAIN = ["task363_sst2_polarity_classification", "task116_com2sense_commonsense_reasoning"]
TEST = ["task199_mnli_classification", "task1385_anli_r1_entailment"]
SPLIT = {**dict.fromkeys(TRAIN, "train"), **dict.fromkeys(TEST, "test")}


def task_dir(tmp_path: Path, names: list[str], label: str) -> Path:
    """A folder of links to the shared task files (nothing is copied into the repository)."""
    folder = tmp_path / label
    folder.mkdir()
    for name in names:
        (folder / f"{name}.json").symlink_to(ROOT / "tasks" / SPLIT[name] / f"{name}.json")
    return folder


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_audit_grid_runs_end_to_end_on_superni(tiny_model, tmp_path, arch):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tokenizer = tiny_model(arch)
    if arch == "llama":  # real prompts are longer than the fixture's 128 positions
        config = LlamaConfig(**{**model.config.to_dict(), "max_position_embeddings": 2048})
        model = LlamaForCausalLM(config)
    tokenizer.model_max_length = 2048
    model_dir = tmp_path / arch
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    spec = Spec.model_validate(
        {
            "model": str(model_dir),
            "audit": {
                "train": str(task_dir(tmp_path, TRAIN, "train")),
                "test": str(task_dir(tmp_path, TEST, "test")),
                "definitions": ["original", "simplified"],
                "examples": ["original", "delusive"],
                "instances_per_task": [2],
                "eval_instances_per_task": 3,
                "max_new_tokens": 3,
                "bootstrap": 200,
                "tuning": {"epochs": 1, "batch_size": 4},
            },
        }
    )
    out = tmp_path / "run"
    results = run_study(spec, out, progress=False)
    assert len(results["audit"]) == 4 * 2  # x the two evaluation encodings
    assert [e["condition"]["encoding"] for e in results["audit"]] == ["definition_only"] * 4 + [
        "definition_examples"
    ] * 4
    assert set(results["baselines"]) == {"untuned", "random", "copy_input", "copy_demo"}
    for entry in results["audit"]:
        assert set(entry["per_task"]) == set(TEST)
        assert 0.0 <= entry["em"]["mean"] <= 100.0
    expected_ids = {
        inst.id
        for task in load_tasks(task_dir(tmp_path, TEST, "ids"))
        for inst in task.instances[:3]
    }
    grid_cells = [json.loads(p.read_text()) for p in (out / "cells" / "audit").glob("*.json")]
    stored = [c["result"] for c in grid_cells if "definition" in c["cell"]["params"]]
    assert len(stored) == 4
    for result in stored:
        for evaluation in result["evaluations"].values():
            assert {r["id"] for r in evaluation["samples"]} == expected_ids


def _normalise(text: str) -> str:
    """SuperNI's own normalisation (lower, drop punctuation, fix spaces), written out here."""
    return " ".join("".join(ch for ch in text.lower() if ch not in string.punctuation).split())


def test_expected_guess_em_equals_direct_computation():
    n_eval, checked = 20, 0
    for path in sorted((ROOT / "tasks").rglob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        task = load_tasks(path)[0]
        if task.labels is None or len(task.labels) > 10:  # not classification-like
            continue
        space = list(task.labels)  # the label space rule is tested in test_labels
        direct = []
        for inst in raw["Instances"][:n_eval]:
            refs = {_normalise(o) for o in inst["output"]}
            direct.append(100.0 * sum(_normalise(lab) in refs for lab in space) / len(space))
        params = {"baseline": "random", "eval_instances_per_task": n_eval}
        result = run_baseline_cell(None, [task], params, seed=0)
        expected = result["evaluations"]["any"]["expected_per_task"][task.name]["em"]
        assert expected == pytest.approx(sum(direct) / len(direct), abs=1e-9), path.name
        checked += 1
    assert checked >= 15
