"""The architecture matrix (issue 18): convergence, audit and decide on nine tiny random models.

Llama, Mistral, Qwen2, Gemma, Phi, Phi-3, GPT-2, T5 and BART, each a 2-layer
(2 + 2 for T5 and BART) hidden-32 config built in code with one byte-level
BPE tokenizer trained on the world's text (``tests/helpers/models.py``),
saved in Hugging Face format and loaded through ``load_model`` like any local
model. Each command runs in this process through the library with tiny
settings (a few pairs, tasks and items, one epoch); together about a minute
on 2 CPU cores.

Per architecture it checks what the issue found broken: LoRA falls back to
PEFT's default targets where q_proj / v_proj do not exist (Phi-3's fused
qkv_proj, GPT-2's c_attn) and results record them (``tuning.adapted_modules``);
sizes come from the model built empty (BART has no ``d_ff``); encoder and
decoder layers carry their stack; a random Gemma's near-identical states raise
the cross-pair warning. The chat template runs for convergence and decide with
a tokenizer that has one, and a model without one exits 2 naming the option.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.helpers.cli import assert_one_error_line, invoke
from tests.helpers.models import CHAT_TEMPLATE, MATRIX_ARCHITECTURES, save_tiny_model

pytestmark = pytest.mark.slow

SEQ2SEQ = {"t5", "bart"}
# What LoRA adapts under the default target_modules (q_proj, v_proj).
ADAPTED = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],  # fused q/k/v: tunelens's fallback (peft 0.21 has no phi3 entry)
    "gpt2": ["c_attn"],  # fused q/k/v: PEFT's default
    "t5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
}
TUNING = {"epochs": 1, "batch_size": 4}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Small task folders (3 training, 2 held-out world tasks), a decide task, nine models."""
    from tunelens.tasks.jsonl import write_jsonl
    from tunelens.tasks.sets import load_task_set

    root = tmp_path_factory.mktemp("architectures")
    for task in load_task_set("world:train")[:3]:
        write_jsonl(task, root / "train" / f"{task.name}.jsonl")
    held = load_task_set("world:heldout")[:2]
    for task in held:
        write_jsonl(task, root / "held" / f"{task.name}.jsonl")
    write_jsonl(held[0], root / "decide.jsonl")
    for arch in MATRIX_ARCHITECTURES:
        save_tiny_model(arch, root / "models" / arch)
    save_tiny_model("llama", root / "models" / "llama-chat", chat_template=CHAT_TEMPLATE)
    return root


def _model(workspace: Path, arch: str) -> str:
    return str(workspace / "models" / arch)


def _expected_stacks(arch: str) -> list[str]:
    if arch in SEQ2SEQ:
        return ["encoder"] * 3 + ["decoder"] * 3
    return ["decoder-only"] * 3


def _convergence(workspace: Path, model: str, out: Path, template: str = "plain") -> dict:
    from tunelens.runs.study import run_study
    from tunelens.spec import validate_spec

    section = {
        "tasks": str(workspace / "held"),
        "n_pairs": 3,
        "k": [2],
        "seeds": [0],
        "controls": ["none"],
        "template": template,
        "tuning": TUNING,
    }
    spec = validate_spec({"model": model, "convergence": section}, source="test")
    run_study(spec, out, progress=False)
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("arch", MATRIX_ARCHITECTURES)
def test_convergence(workspace, tmp_path, arch):
    results = _convergence(workspace, _model(workspace, arch), tmp_path / "out")
    (entry,) = results["convergence"]
    layers = entry["layers"]
    assert [row["stack"] for row in layers] == _expected_stacks(arch)
    assert [row["block"] for row in layers] == [0, 1, 2] * (2 if arch in SEQ2SEQ else 1)
    for row in layers:
        assert -1.0 <= row["cos_icl_it"]["mean"] <= 1.0 + 1e-6
        assert 0.0 < row["cross_pair_cos_anchor"] <= 1.0 + 1e-6
    assert entry["tuning"]["adapted_modules"] == ADAPTED[arch]
    if arch == "gpt2":
        assert entry["tuning"]["adapted"]["weights"] == ["q, k, v together (GPT-2's fused c_attn)"]
    if arch == "gemma":  # a random Gemma's states are one direction (README: sanity)
        assert any("nearly identical across pairs" in w for w in entry["warnings"])
    if arch in ("llama", "qwen2", "phi3"):
        assert "warnings" not in entry
    if arch in SEQ2SEQ:  # the report's tables keep the stacks apart
        from tunelens.report.html import build_report

        html = build_report(tmp_path / "out").read_text()
        assert "(enc 1)" in html and "(dec emb)" in html


@pytest.mark.parametrize("arch", MATRIX_ARCHITECTURES)
def test_audit(workspace, tmp_path, arch):
    from tunelens.runs.study import run_study
    from tunelens.spec import validate_spec

    section = {
        "train": str(workspace / "train"),
        "test": str(workspace / "held"),
        "definitions": ["original"],
        "examples": ["original"],
        "instances_per_task": [2],
        "eval_instances_per_task": 2,
        "eval_encodings": ["definition_only"],
        "bootstrap": 100,
        "tuning": TUNING,
    }
    spec = validate_spec({"model": _model(workspace, arch), "audit": section}, source="test")
    run_study(spec, tmp_path / "out", progress=False)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (entry,) = results["audit"]
    assert 0.0 <= entry["em"]["mean"] <= 100.0
    assert entry["tuning"]["adapted_modules"] == ADAPTED[arch]
    assert set(results["baselines"]) >= {"untuned", "random"}


def _decide(workspace: Path, model: str, out: Path, template: str = "plain"):
    from tunelens.experiments.decide.config import make_config
    from tunelens.experiments.decide.runner import run_decide
    from tunelens.spec import TuningSpec

    config = make_config(
        k=[1],
        tune_sizes=[4],
        test_size=4,
        bootstrap=100,
        similarity_items=3,
        controls=False,
        template=template,
        tuning=TuningSpec(**TUNING),
    )
    return run_decide(workspace / "decide.jsonl", model, config, out, progress=False).results


@pytest.mark.parametrize("arch", MATRIX_ARCHITECTURES)
def test_decide(workspace, tmp_path, arch):
    from tunelens.models.loading import load_model

    data = _decide(workspace, _model(workspace, arch), tmp_path / "out")
    ids = [m["id"] for m in data["methods"]]
    assert ids == ["zero_shot", "icl_k1", "tune_n4", "label_guess"]
    (tuned,) = [m for m in data["methods"] if m["id"] == "tune_n4"]
    assert tuned["train"]["tuning"]["adapted_modules"] == ADAPTED[arch]
    # sizes from the model itself (built empty): BART has no d_ff, Phi has biases
    real = load_model(_model(workspace, arch)).model
    assert data["model"]["total_parameters"] == sum(p.numel() for p in real.parameters())
    assert data["model"]["layers"] == (4 if arch in SEQ2SEQ else 2)
    assert "built empty" in data["model"]["sizes_from"]
    assert [row["stack"] for row in data["similarity"]["layers"]] == _expected_stacks(arch)
    assert "cross_pair_cos_icl" in data["similarity"]["layers"][-1]


@pytest.mark.parametrize("arch", MATRIX_ARCHITECTURES)
def test_plan_sizes_need_no_weights(workspace, tmp_path, arch):
    """`tunelens plan` sizes: the config alone (weights removed) gives the real counts."""
    from tunelens.models.loading import load_model
    from tunelens.runs.plan import model_size

    real = load_model(_model(workspace, arch)).model
    bare = tmp_path / arch
    bare.mkdir()
    shutil.copy(Path(_model(workspace, arch)) / "config.json", bare / "config.json")
    size = model_size(str(bare))
    assert size.total == sum(p.numel() for p in real.parameters())
    assert 0 < size.non_embedding < size.total
    assert size.hidden == 32 and size.heads == 4


def test_chat_template_for_convergence_and_decide(workspace, tmp_path):
    """With a tokenizer that carries a chat template, `--template chat` runs end to end."""
    model = _model(workspace, "llama-chat")
    result = invoke(
        "convergence",
        "--model",
        model,
        "--tasks",
        str(workspace / "held"),
        "--out",
        str(tmp_path / "conv"),
        "--n-pairs",
        "3",
        "--k",
        "2",
        "--seeds",
        "0",
        "--controls",
        "none",
        "--template",
        "chat",
        "--epochs",
        "1",
        "--no-progress",
    )
    assert result.code == 0, result.stderr
    (entry,) = json.loads((tmp_path / "conv" / "results.json").read_text())["convergence"]
    assert entry["n_pairs"] == 3 and len(entry["layers"]) == 3
    data = _decide(workspace, model, tmp_path / "decide", template="chat")
    assert data["config"]["template"] == "chat"
    assert [m["id"] for m in data["methods"]][-1] == "label_guess"


def test_chat_template_rendering_uses_the_tokenizer(workspace):
    from tunelens.models.loading import load_model
    from tunelens.prompts import PromptStyle, render_prompt
    from tunelens.tasks.sets import load_task_set

    task = load_task_set(str(workspace / "held"))[0]
    loaded = load_model(_model(workspace, "llama-chat"))
    style = PromptStyle(template="chat", definition=False, n_positive=0)
    text = render_prompt(task, "cat", [], style, loaded.tokenizer)
    assert text == "user : Input: cat\nassistant :"


def test_chat_template_without_one_exits_2_naming_the_option(workspace, tmp_path):
    common = ["--out", str(tmp_path / "x"), "--template", "chat", "--no-progress"]
    conv = invoke(
        "convergence",
        "--model",
        _model(workspace, "llama"),
        "--tasks",
        str(workspace / "held"),
        "--n-pairs",
        "2",
        "--k",
        "1",
        "--seeds",
        "0",
        "--controls",
        "none",
        *common,
    )
    line = assert_one_error_line(conv)
    assert "--template" in line and "no chat template" in line
    decide = invoke(
        "decide",
        "--task",
        str(workspace / "decide.jsonl"),
        "--model",
        _model(workspace, "gpt2"),
        "--k",
        "1",
        "--tune-sizes",
        "4",
        "--test-size",
        "4",
        *common,
    )
    line = assert_one_error_line(decide)
    assert "--template" in line and "no chat template" in line


def test_explicit_targets_that_match_nothing_stay_an_error(workspace):
    from tunelens.errors import TunelensInputError
    from tunelens.models.loading import load_model
    from tunelens.models.tuning.targets import describe_targets, resolve_target_modules

    phi3 = load_model(_model(workspace, "phi3")).model
    assert describe_targets(phi3, ["q_proj", "v_proj"])["source"] == "tunelens default for phi3"
    gpt2 = load_model(_model(workspace, "gpt2")).model
    assert describe_targets(gpt2, ["q_proj", "v_proj"])["source"] == "peft default for gpt2"
    with pytest.raises(TunelensInputError, match="qkv_proj"):
        resolve_target_modules(phi3, ["q_proj"])  # the user's own list: no fallback
