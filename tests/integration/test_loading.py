"""Loading saved tiny models from directories, and every refusal naming the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.helpers.numerics import assert_close_scaled

from tunelens.errors import TunelensInputError
from tunelens.models.hidden_states import capture_last_token_states
from tunelens.models.loading import load_model, load_model_from_objects
from tunelens.models.paths import world_model_dir


def save(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)  # safetensors by default
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("arch,kind", [("llama", "causal"), ("t5", "seq2seq")])
def test_load_saved_model(tiny_model, tmp_path, arch, kind):
    model, tokenizer = tiny_model(arch)
    directory = save(model, tokenizer, tmp_path / arch)
    loaded = load_model(str(directory))
    assert loaded.kind == kind
    assert loaded.name == str(directory)
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.pad_token is not None
    assert loaded.tokenizer.padding_side == ("left" if kind == "causal" else "right")
    # same weights: same states as the in-memory model
    prompts = ["the cat sits", "a dog runs on the mat"]
    assert_close_scaled(
        capture_last_token_states(loaded, prompts),
        capture_last_token_states(load_model_from_objects(model, tokenizer), prompts),
        1e-6,
    )


def test_load_dtype_and_eos_as_pad(tiny_model, tmp_path):
    model, tokenizer = tiny_model("gpt2")
    assert tokenizer.pad_token is None
    directory = save(model, tokenizer, tmp_path / "gpt2")
    loaded = load_model(str(directory), dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.model.generation_config.pad_token_id == loaded.tokenizer.eos_token_id


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(TunelensInputError, match="does not exist") as info:
        load_model(str(missing))
    assert str(missing) in str(info.value)


def test_file_instead_of_directory(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"")
    with pytest.raises(TunelensInputError, match="not a directory") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(TunelensInputError, match="no config.json") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_invalid_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TunelensInputError) as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(TunelensInputError, match="unsupported architecture") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_architecture_that_is_not_a_language_model(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(TunelensInputError, match="unsupported architecture.*vit") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_pickle_weights_are_refused(tiny_model, tmp_path):
    model, tokenizer = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(TunelensInputError, match="safetensors only.*pytorch_model.bin"):
        load_model(str(tmp_path))


def test_missing_tokenizer(tiny_model, tmp_path):
    model, _ = tiny_model("llama")
    model.save_pretrained(tmp_path)
    with pytest.raises(TunelensInputError, match="no tokenizer files") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_tokenizer_that_cannot_pad(tiny_model, tiny_tokenizer, tmp_path):
    model, _ = tiny_model("qwen2")
    tokenizer = tiny_tokenizer(pad=False)
    tokenizer.eos_token = None
    directory = save(model, tokenizer, tmp_path / "nopad")
    with pytest.raises(TunelensInputError, match="neither a pad token") as info:
        load_model(str(directory))
    assert str(directory) in str(info.value)


@pytest.mark.parametrize("dtype", ["float64", "fp32", "int8"])
def test_unknown_dtype(tiny_model, tmp_path, dtype):
    directory = save(*tiny_model("llama"), tmp_path / "m")
    with pytest.raises(TunelensInputError, match="unknown dtype"):
        load_model(str(directory), dtype=dtype)


def test_unknown_device(tiny_model, tmp_path):
    directory = save(*tiny_model("llama"), tmp_path / "m")
    with pytest.raises(TunelensInputError, match="device"):
        load_model(str(directory), device="warp-drive")


@pytest.mark.parametrize(
    ("name", "folder"),
    [("world", "world"), ("world-small", "world_small"), ("world-it", "world_it")],
)
def test_world_models_resolve_to_the_package_assets(
    monkeypatch, tmp_path, tiny_model, name, folder
):
    assert world_model_dir(name, install=True).parts[-2:] == ("assets", folder)
    from tunelens.models import paths

    monkeypatch.setattr(paths, "world_model_dir", lambda n: tmp_path / n)
    with pytest.raises(TunelensInputError, match=f"model '{name}' is not installed") as info:
        load_model(name)
    assert str(tmp_path / name) in str(info.value)
    assert "tunelens world train-model --size" in str(info.value)
    save(*tiny_model("llama"), tmp_path / name)
    loaded = load_model(name)
    assert loaded.name == name
    assert loaded.kind == "causal"


def test_trust_remote_code_is_off_by_default(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoConfig

    seen = []
    original = AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append((kwargs.get("trust_remote_code"), kwargs.get("local_files_only")))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", spy)
    load_model(str(save(*tiny_model("llama"), tmp_path / "m")))
    assert seen and set(seen) == {(False, True)}
