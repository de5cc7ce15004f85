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
from tunelens.models.paths import WORLD_MODELS, world_model_dir
from tunelens.models.world_model import recipe_for_size, train_world_model
from tunelens.tasks.world.generator import generate_world

SHIPPED = world_model_dir()
FAMILY = ["world", "world-small", "world-it", "world-base"]


def test_the_family_ships_complete_and_small():
    total = 0
    for member in FAMILY:
        directory = world_model_dir(member)
        for name in (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "training_log.jsonl",
            "recipe.json",
            "reference_eval.json",
        ):
            assert (directory / name).is_file(), (member, name)
        total += sum(p.stat().st_size for p in directory.iterdir())
    assert total <= 25 * 10**6  # issue 29: the family (four members) stays under 25 MB


def test_every_name_of_the_family_resolves_to_its_own_directory():
    from tunelens.models.paths import resolve_model_path

    assert set(WORLD_MODELS) == set(FAMILY)
    directories = {resolve_model_path(name) for name in FAMILY}
    assert len(directories) == len(FAMILY)
    assert all((d / "config.json").is_file() for d in directories)


def test_the_second_generation_is_deeper_longer_and_larger_than_world_small():
    """Issue 15's floor for `world`: >= 6 layers, >= 1M parameters, >= 128-token training."""
    from safetensors.torch import load_file

    def parameters(name: str) -> int:
        weights = load_file(world_model_dir(name) / "model.safetensors")
        return sum(t.numel() for t in weights.values())

    config = json.loads((world_model_dir("world") / "config.json").read_text())
    recipe = json.loads((world_model_dir("world") / "recipe.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] >= 6
    assert recipe["seq_len"] >= 128
    assert parameters("world") >= 1_000_000 > parameters("world-small")
    # world-it is world tuned: same architecture, different weights, recipe names its base.
    it_config = json.loads((world_model_dir("world-it") / "config.json").read_text())
    assert it_config["num_hidden_layers"] == config["num_hidden_layers"]
    it_recipe = json.loads((world_model_dir("world-it") / "recipe.json").read_text())
    assert it_recipe["base"] == recipe and "instruction_tuning" in it_recipe


def test_a_missing_member_says_how_to_train_it(tmp_path, monkeypatch):
    import tunelens
    from tunelens.models.paths import resolve_model_path

    (tmp_path / "assets").mkdir()
    monkeypatch.setattr(tunelens, "__file__", str(tmp_path / "__init__.py"))
    with pytest.raises(TunelensInputError, match="train-model --size base --instruction-tune"):
        resolve_model_path("world-it")


@pytest.mark.parametrize("name", FAMILY)
def test_loads_with_plain_auto_classes_and_through_the_generic_loader(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(world_model_dir(name))
    tokenizer = AutoTokenizer.from_pretrained(world_model_dir(name))
    ids = tokenizer("Input: cat\nOutput:", return_tensors="pt")
    loaded = load_model(name)
    with torch.no_grad():
        a = model(**ids).logits
        b = loaded.model(**ids).logits
    torch.testing.assert_close(a, b)
    assert loaded.kind == "causal" and loaded.name == name


@pytest.mark.parametrize("name", FAMILY)
def test_reproduces_its_recorded_few_shot_accuracy(name):
    recorded = json.loads((world_model_dir(name) / "reference_eval.json").read_text())
    again = reference_eval(load_model(name), generate_world(0).heldout)
    assert again["settings"] == recorded["settings"]
    for k, accuracy in recorded["shots"].items():
        assert again["shots"][k] == pytest.approx(accuracy, abs=3.0), k
    assert again["definition_only"] == pytest.approx(recorded["definition_only"], abs=3.0)


@pytest.mark.parametrize("name", FAMILY)
def test_world_path_command_prints_the_directory(name):
    out = subprocess.run(
        [sys.executable, "-m", "tunelens", "world", "path", name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == str(world_model_dir(name))


def test_an_unknown_family_member_or_size_is_a_clear_error():
    with pytest.raises(TunelensInputError, match="not an embedded world model"):
        world_model_dir("world-huge")
    with pytest.raises(TunelensInputError, match="--size"):
        recipe_for_size("huge")


TINY = {
    "hidden_size": 16,
    "layers": 1,
    "heads": 2,
    "intermediate_size": 32,
    "seq_len": 32,
    "batch_size": 4,
    "steps": 6,
    "curriculum_steps": 3,
    "warmup": 2,
    "checkpoint_every": 100,
    "eval_every": 100,
    "threads": 1,
}


@pytest.mark.parametrize("size", ["small", "base", "world-base"])
def test_training_in_pieces_equals_one_run(tmp_path, size):
    """Every recipe (base: second-generation corpus; world-base: no zero-shot answers)."""
    recipe = recipe_for_size(size, **TINY)
    if size == "base":
        assert recipe.vocabulary == 2 and recipe.copy > 0 and recipe.definition_blocks > 0
    if size == "world-base":
        assert not recipe.zero_shot_answers and recipe.zero_shot_preamble > 0
    whole = train_world_model(recipe, tmp_path / "whole", progress=False)
    train_world_model(recipe, tmp_path / "pieces", progress=False, until=2)
    resumed = train_world_model(replace(recipe, threads=2), tmp_path / "pieces", progress=False)
    for (name, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    if size == "world-base":  # its log records the definition-only label-space share
        (line,) = (tmp_path / "whole" / "training_log.jsonl").read_text().splitlines()
        assert set(json.loads(line)["heldout_definition_only"]) == {"plain", "tk"}
    with pytest.raises(TunelensInputError, match="another recipe"):
        train_world_model(replace(recipe, lr=1e-3), tmp_path / "pieces", progress=False)


def _world_eval(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tunelens", "world", "eval", "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_world_eval_with_novel_labels_and_definition_says_so_and_differs():
    """--labels novel scores the relabelled tasks; the JSON records both options."""
    from tunelens.experiments.world_eval import accuracy_at_k
    from tunelens.tasks.world.relabel import relabel_tasks

    plain = _world_eval("--model", "world-small", "--shots", "0,4", "--queries", "2")
    novel = _world_eval(
        "--model",
        "world-small",
        "--shots",
        "0,4",
        "--queries",
        "2",
        "--labels",
        "novel",
        "--definition",
    )
    assert (plain["labels"], plain["definition"]) == ("original", False)
    assert (novel["labels"], novel["definition"]) == ("novel", True)
    # The CLI's numbers are those of the library on the relabelled tasks, definition first.
    tasks = relabel_tasks(generate_world(0).heldout, "novel")
    per_task = accuracy_at_k(
        load_model("world-small"), tasks, 4, queries_per_task=2, seed=0, definition=True
    )
    assert novel["shots"]["4"] == pytest.approx(sum(per_task.values()) / len(per_task), abs=0.01)


def test_instruction_tuning_writes_a_plain_full_model(tmp_path):
    """`world-it`'s recipe on the small model for a few steps: a loadable, changed model."""
    from transformers import AutoModelForCausalLM

    from tunelens.models.world_it import (
        WorldItRecipe,
        instruction_pairs,
        instruction_tune_world_model,
    )

    pairs, names = instruction_pairs(generate_world(0).train[:2])
    instances = sum(len(t.instances) for t in generate_world(0).train[:2])
    assert len(pairs) == len(names) == 3 * instances  # three encodings of every instance
    assert any(p.startswith("Definition:") and "Input:" in p[p.index("\n\n") :] for p, _ in pairs)
    target = tmp_path / "it"
    base = world_model_dir("world-small")
    recipe = WorldItRecipe(max_steps=3, batch_size=4)
    scored: list[int] = []

    def heldout_accuracy(loaded, tasks) -> float:
        scored.append(len(tasks))
        return 12.5

    instruction_tune_world_model(
        base,
        tmp_path / "work",
        target,
        heldout_accuracy=heldout_accuracy,
        recipe=recipe,
        progress=False,
    )
    assert scored == [len(generate_world(0).heldout)]
    last = json.loads((target / "training_log.jsonl").read_text().splitlines()[-1])
    assert last["heldout_definition_only_accuracy"] == 12.5
    tuned = AutoModelForCausalLM.from_pretrained(target)
    original = AutoModelForCausalLM.from_pretrained(base)
    changed = [
        name
        for (name, a), (_, b) in zip(
            tuned.state_dict().items(), original.state_dict().items(), strict=True
        )
        if not torch.equal(a, b)
    ]
    assert changed, "full fine-tuning changed no weight"
    recipe_json = json.loads((target / "recipe.json").read_text())
    assert recipe_json["instruction_tuning"]["max_steps"] == 3 and "base" in recipe_json
    log = [json.loads(line) for line in (target / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["steps"] == 3 and 0 <= log[-1]["heldout_definition_only_accuracy"] <= 100
