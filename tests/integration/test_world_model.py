"""The shipped world model: generic loading, its recorded few-shot accuracy, resumable training."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from tunelens.errors import TunelensInputError
from tunelens.experiments.world_eval import reference_eval
from tunelens.models.loading import load_model
from tunelens.models.paths import world_model_dir
from tunelens.models.world_model import WorldModelRecipe, train_world_model
from tunelens.tasks.world.generator import generate_world

SHIPPED = world_model_dir()


def test_shipped_model_is_complete_and_small():
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training_log.jsonl",
        "recipe.json",
        "reference_eval.json",
    ):
        assert (SHIPPED / name).is_file(), name
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) <= 20 * 2**20


def test_loads_with_plain_auto_classes_and_through_the_generic_loader():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED)
    ids = tokenizer("Input: cat\nOutput:", return_tensors="pt")
    loaded = load_model("world")
    with torch.no_grad():
        a = model(**ids).logits
        b = loaded.model(**ids).logits
    torch.testing.assert_close(a, b)
    assert loaded.kind == "causal"


def test_reproduces_its_recorded_few_shot_accuracy():
    recorded = json.loads((SHIPPED / "reference_eval.json").read_text())
    again = reference_eval(load_model("world"), generate_world(0).heldout)
    assert again["settings"] == recorded["settings"]
    for k, accuracy in recorded["shots"].items():
        assert again["shots"][k] == pytest.approx(accuracy, abs=3.0), k


def test_world_path_command_prints_the_directory():
    out = subprocess.run(
        [sys.executable, "-m", "tunelens", "world", "path"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == str(SHIPPED)


def test_training_in_pieces_equals_one_run(tmp_path):
    recipe = WorldModelRecipe(
        hidden_size=16,
        layers=1,
        heads=2,
        intermediate_size=32,
        seq_len=32,
        batch_size=4,
        steps=6,
        curriculum_steps=3,
        warmup=2,
        checkpoint_every=100,
        eval_every=100,
        threads=1,
    )
    whole = train_world_model(recipe, tmp_path / "whole", progress=False)
    train_world_model(recipe, tmp_path / "pieces", progress=False, until=2)
    resumed = train_world_model(replace(recipe, threads=2), tmp_path / "pieces", progress=False)
    for (name, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(TunelensInputError, match="another recipe"):
        train_world_model(replace(recipe, lr=1e-3), tmp_path / "pieces", progress=False)
