"""Task vectors on a tiny random Llama, against references written here with plain hooks.

The references never call tunelens's capture or patching code: each prompt runs
alone, unpadded, through the model; a forward hook written here reads a block's
output at the last position (a pre-hook on the first block reads the
embeddings, layer 0), or replaces it there; label log-likelihoods are summed
from a full ``prompt + " " + label`` forward, tokenised as a training pair is.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.helpers.cli import assert_one_error_line, invoke
from tests.helpers.models import save_tiny_model
from tests.helpers.numerics import assert_close_scaled as assert_close

from tunelens.experiments.task_vectors.compute import (
    CellPrompts,
    icl_task_vectors,
    it_task_vectors,
    patched_scores,
)
from tunelens.experiments.task_vectors.sets import draw_sets
from tunelens.models.loading import load_model
from tunelens.prompts import PromptStyle
from tunelens.spec import TuningSpec
from tunelens.tasks.sets import load_task_set

TUNING = {"method": "lora", "lora_r": 4, "learning_rate": 0.01, "epochs": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama on the world words (2 blocks, hidden 32)."""
    return load_model(str(save_tiny_model("llama", tmp_path_factory.mktemp("tv") / "llama")))


@pytest.fixture(scope="module")
def cell(tiny):
    """One world task's prompts: 3 test and 2 dev sets, k = 3, 2 dummy queries."""
    task = load_task_set("world:heldout")[0]
    sets = draw_sets(task, k=3, dummy_queries=2, dev_sets=2, test_sets=3, seed=0)
    style = PromptStyle(template="plain", definition=False, n_positive=0)
    return CellPrompts.build(task, sets, style, tiny.tokenizer)


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks (``model.layers`` of Llama, through a PEFT wrapper too)."""
    found = [m for name, m in model.named_modules() if name.endswith("model.layers")]
    assert len(found) == 1
    return found[0]


def states_by_hand(model: torch.nn.Module, tokenizer, text: str) -> torch.Tensor:
    """``[layers, hidden]``: the embeddings and every block's output at the last token."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    seen: list[torch.Tensor] = []
    handles = [
        blocks(model)[0].register_forward_pre_hook(
            lambda m, args, kwargs: (
                seen.append(kwargs["hidden_states"][0, -1].clone())
                if "hidden_states" in kwargs
                else seen.append(args[0][0, -1].clone())
            ),
            with_kwargs=True,
        )
    ]
    for block in blocks(model):
        handles.append(
            block.register_forward_hook(
                lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out)[0, -1])
            )
        )
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(seen).float()


def label_logp_by_hand(
    model: torch.nn.Module, tokenizer, prompt: str, label: str, layer: int, vector: torch.Tensor
) -> float:
    """log P(" " + label | prompt), one full forward, the last prompt position's state after
    ``layer`` replaced by ``vector`` with a hook written here."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    label_ids = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + label_ids])
    at = len(prompt_ids) - 1

    def put(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[0, at] = vector.to(hidden.dtype)
        return hidden

    if layer == 0:

        def pre(m, args, kwargs):
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": put(kwargs["hidden_states"])}
            return (put(args[0]), *args[1:]), kwargs

        handle = blocks(model)[0].register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(m, a, out):
            if isinstance(out, tuple):
                return (put(out[0]), *out[1:])
            return put(out)

        handle = blocks(model)[layer - 1].register_forward_hook(post)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
    finally:
        handle.remove()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[at + j, t] for j, t in enumerate(label_ids)))


def test_icl_task_vector_is_the_mean_of_the_dummy_query_states(tiny, cell):
    vectors = icl_task_vectors(tiny, cell)
    d = cell.dummies
    assert vectors.shape[0] == len(cell.sets)
    for i, s in enumerate(cell.sets):
        texts = cell.dummy_icl[i * d : (i + 1) * d]
        assert all(x.input in t for x, t in zip(s.dummies, texts, strict=True))
        assert all(s.query.input not in t.rsplit("Input:", 1)[-1] for t in texts)
        by_hand = torch.stack([states_by_hand(tiny.model, tiny.tokenizer, t) for t in texts])
        assert_close(vectors[i], by_hand.mean(dim=0), 1e-4)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_patched_label_scores_equal_a_manual_residual_replacement(tiny, cell, layer):
    vectors = icl_task_vectors(tiny, cell)
    scores = patched_scores(tiny, cell, vectors, layer)
    for i, prompt in enumerate(cell.zero_shot):
        by_hand = [
            label_logp_by_hand(tiny.model, tiny.tokenizer, prompt, label, layer, vectors[i, layer])
            for label in cell.labels
        ]
        assert_close(
            torch.tensor(scores.summed[i]), torch.tensor(by_hand, dtype=torch.float64), 1e-4
        )
    if layer > 0:  # (at layer 0 every prompt's last token is the same ":" embedding)
        plain = cell.score(tiny, cell.zero_shot)
        pairs = zip(scores.summed, plain.summed, strict=True)
        assert any(not np.allclose(a, b, atol=1e-6) for a, b in pairs)


def test_it_task_vector_equals_sequential_tuning_read_by_hand(tiny, cell):
    """The batched path (lockstep adapters, one per row) against sequential PEFT runs, each
    tuned model's dummy states read with the hooks written here."""
    from tunelens.models.tuning import tune_on_pairs

    config = TuningSpec(**TUNING, seed=0)
    vectors, hits = it_task_vectors(tiny, cell, config)
    d = cell.dummies
    for i, pairs in enumerate(cell.tuning):
        tuned = tune_on_pairs(tiny, pairs, config)
        try:
            model = tuned.as_loaded().model
            model.eval()
            texts = cell.dummy_zero_shot[i * d : (i + 1) * d]
            by_hand = torch.stack([states_by_hand(model, tiny.tokenizer, t) for t in texts])
        finally:
            tuned.unload()
        assert_close(vectors[i], by_hand.mean(dim=0), 1e-3)
    assert len(hits) == len(cell.sets) and set(hits) <= {0.0, 1.0}


# ---------------------------------------------------------------- end to end


def _jsonl_tasks(tmp_path, count: int = 2) -> str:
    """``count`` world held-out tasks written as JSONL task files (their own label space)."""
    paths = []
    for task in load_task_set("world:heldout")[: 2 * count : 2]:
        path = tmp_path / f"{task.name}.jsonl"
        header = {"tunelens_task": 1, "task": task.name, "labels": list(task.labels or ())}
        lines = [json.dumps(header)] + [
            json.dumps({"input": x.input, "output": x.outputs[0]}) for x in task.instances
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(str(path))
    return ",".join(paths)


def _spec(tmp_path, model: str, **section) -> str:
    import yaml

    data = {
        "model": model,
        "task_vectors": {
            "tasks": _jsonl_tasks(tmp_path),
            "k": 3,
            "dev_sets": 3,
            "test_sets": 3,
            "controls": ["none", "random_init"],
            "tuning": {k: v for k, v in TUNING.items()},
            **section,
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_task_vectors_run_plan_export_and_report(tmp_path):
    model = str(save_tiny_model("llama", tmp_path / "llama"))
    spec = _spec(tmp_path, model)
    planned = invoke("plan", spec)
    assert planned.code == 0, planned.stderr
    assert "task_vectors" in planned.stdout
    out = tmp_path / "run"
    ran = invoke("run", spec, "--out", str(out), "--limit", "2", "--no-progress")
    assert ran.code == 0, ran.stderr
    results = json.loads((out / "results.json").read_text())
    entries = {e["condition"]["control"]: e for e in results["task_vectors"]}
    assert set(entries) == {"none", "random_init"}
    for entry in entries.values():
        assert entry["n_test"] == 2 * 2 and entry["n_dev"] == 2 * 2  # 2 tasks, --limit 2
        assert set(entry["sources"]) == {"icl", "it"}
        assert [r["layer"] for r in entry["sources"]["icl"]["layers"]] == [1, 2]  # 2 blocks
    exported = invoke("export", str(out), "--format", "csv")
    assert exported.code == 0, exported.stderr
    table = (out / "export" / "task_vectors.csv").read_text()
    assert "task_vector_accuracy" in table and "best_minus_zero_shot" in table
    assert "Task vectors" in (out / "report.html").read_text()


def test_an_encoder_decoder_exits_2_naming_the_key(tmp_path):
    model = str(save_tiny_model("t5", tmp_path / "t5"))
    spec = _spec(tmp_path, model)
    for args in (("plan", spec), ("run", spec, "--out", str(tmp_path / "run"))):
        line = assert_one_error_line(invoke(*args))
        assert "task_vectors.models" in line and "spec.yaml" in line
        assert "causal language models" in line and "encoder-decoder" in line
