"""Every study and `decide` end to end on genuine tokenizers (issue 26, deliverable 2).

Tiny random models on the Mistral (SentencePiece), Qwen2 and GPT-2 (byte-level
BPE) tokenizers of ``../shared/data/tokenizers`` (tests/helpers/real_models.py),
run through the CLI with ``--limit`` on real Super-NaturalInstructions tasks of
``../shared/data/superni`` (linked, never copied), with the plain template and,
where the tokenizer carries one, the chat template. Besides "it runs", each
checks what the real tokenizers broke before: the numeric labels of task1344
(`" 0"` / `" 1"` share their first token on SentencePiece and Qwen2) are read
as two labels, not one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.helpers.cli import invoke

pytestmark = pytest.mark.slow

SUPERNI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "superni"
NUMERIC = "task1344_glue_entailment_classification"  # labels "0" and "1"
TRAIN = ["task363_sst2_polarity_classification"]
TEST = [NUMERIC, "task1612_sick_label_classification"]
SPLIT = {**dict.fromkeys(TRAIN, "train"), **dict.fromkeys(TEST, "test")}
CASES = [("mistral", "plain"), ("mistral", "chat"), ("qwen2", "chat"), ("gpt2", "plain")]
TUNING = {"epochs": 1, "batch_size": 4}


def _tasks(tmp_path: Path, names: list[str], label: str) -> Path:
    if not (SUPERNI / "index.tsv").is_file():
        pytest.skip(f"the SuperNI subset is absent ({SUPERNI})")
    folder = tmp_path / label
    folder.mkdir()
    for name in names:
        (folder / f"{name}.json").symlink_to(SUPERNI / "tasks" / SPLIT[name] / f"{name}.json")
    return folder


@pytest.mark.parametrize(("tokenizer", "template"), CASES)
def test_run_with_both_studies_on_a_real_tokenizer(real_model_dir, tmp_path, tokenizer, template):
    model = real_model_dir(tokenizer)
    spec = {
        "model": str(model),
        "convergence": {
            "tasks": str(_tasks(tmp_path, [NUMERIC], "conv")),
            "n_pairs": 4,
            "k": [1],
            "seeds": [0],
            "controls": ["none"],
            "template": template,
            "tuning": TUNING,
        },
        "audit": {
            "train": str(_tasks(tmp_path, TRAIN, "train")),
            "test": str(_tasks(tmp_path, TEST, "test")),
            "definitions": ["original"],
            "examples": ["original"],
            "instances_per_task": [2],
            "eval_instances_per_task": 2,
            "eval_encodings": ["definition_only"],
            "max_new_tokens": 2,
            "bootstrap": 100,  # the audit's encodings are Tk-Instruct's: no chat option
            "tuning": TUNING,
        },
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = invoke("run", str(spec_file), "--out", str(out), "--limit", "2", "--no-progress")
    assert result.code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    (entry,) = results["convergence"]
    behaviour = entry["behaviour"]
    # every pair read by its labels' whole continuations, none by a first token
    assert behaviour["scoring"]["label_rows"] == entry["n_pairs"] > 0
    assert behaviour["scoring"]["first_token_rows"] == 0
    for reading in behaviour["label_accuracy"].values():
        assert 0.0 <= reading["mean"] <= 100.0
    # two labels, so the label-space distributions differ between ICL and IT
    assert behaviour["kl_icl_it"]["mean"] > 0.0
    (audit,) = results["audit"]
    assert 0.0 <= audit["em"]["mean"] <= 100.0
    assert (out / "report.html").is_file()


@pytest.mark.parametrize(("tokenizer", "template"), CASES)
def test_decide_on_a_real_tokenizer(real_model_dir, tmp_path, tokenizer, template):
    from tunelens.tasks.jsonl import write_jsonl
    from tunelens.tasks.loaders import load_task_file

    task = load_task_file(_tasks(tmp_path, [NUMERIC], "decide") / f"{NUMERIC}.json")
    task_file = tmp_path / "task.jsonl"
    write_jsonl(task, task_file)
    out = tmp_path / "out"
    result = invoke(
        "decide",
        "--task",
        str(task_file),
        "--model",
        str(real_model_dir(tokenizer)),
        "--out",
        str(out),
        "--k",
        "1",
        "--tune-sizes",
        "4",
        "--test-size",
        "4",
        "--predict",
        "score",
        "--template",
        template,
        "--no-controls",
        "--similarity-items",
        "3",
        "--bootstrap",
        "100",
        "--epochs",
        "1",
        "--no-progress",
    )
    assert result.code == 0, result.stderr
    data = json.loads((out / "decide.json").read_text())
    methods = {m["id"]: m for m in data["methods"]}
    assert {"zero_shot", "icl_k1", "tune_n4", "label_guess"} <= set(methods)
    assert (out / "decide.html").is_file()
