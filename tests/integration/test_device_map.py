"""A model bigger than one device (issue 26.6): Accelerate's big-model dispatch on CPU.

A tiny 4-layer Llama is loaded twice from one directory: as usual, and with
``device_map="auto"`` under a ``max_memory`` of half its size, so Accelerate keeps
the first layers on the CPU and offloads the rest to disk (a temporary offload
folder). Hidden states, packed capture, patching, generation and LoRA tuning on
the dispatched model must give what the undispatched one gives.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import build_tokenizer
from tests.helpers.numerics import assert_close_scaled

from tunelens.errors import TunelensInputError
from tunelens.models.loading import load_model, parse_device_map, parse_max_memory

PROMPTS = ["the cat sits on the mat", "a dog", "big red apple and the small green pear"]
PAIRS = [("the cat sits\nOutput:", " yes"), ("a dog\nOutput:", " no"), ("big\nOutput:", " yes")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(bos=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    directory = tmp_path_factory.mktemp("four-layer-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def both(model_dir):
    plain = load_model(str(model_dir))
    size = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    dispatched = load_model(str(model_dir), device_map="auto", max_memory={"cpu": size // 2})
    return plain, dispatched


def test_a_forced_split_offloads_layers_and_reads_the_same_states(both):
    from tunelens.models.hidden_states import capture_last_token_states, capture_packed
    from tunelens.models.patching import last_token_forward

    plain, dispatched = both
    placed = set(dispatched.model.hf_device_map.values())
    assert {"cpu", "disk"} <= placed, dispatched.model.hf_device_map
    assert dispatched.dispatched and not plain.dispatched
    assert dispatched.device == torch.device("cpu")  # the input embeddings' device
    assert any(p.is_meta for p in dispatched.model.parameters())  # truly offloaded
    want = capture_last_token_states(plain, PROMPTS)
    assert_close_scaled(capture_last_token_states(dispatched, PROMPTS), want, 1e-5)
    assert_close_scaled(capture_packed(dispatched, PROMPTS), want, 1e-4)
    patched = last_token_forward(dispatched, PROMPTS, patch_layer=2, patch_states=want.flip(0))
    reference = last_token_forward(plain, PROMPTS, patch_layer=2, patch_states=want.flip(0))
    assert_close_scaled(patched.logits, reference.logits, 1e-5)


def test_generation_on_a_dispatched_model(both):
    from tunelens.models.predict import generate_predictions

    plain, dispatched = both
    assert generate_predictions(dispatched, PROMPTS, 6) == generate_predictions(plain, PROMPTS, 6)


def test_lora_tuning_on_a_dispatched_model(both):
    from tunelens.models.tuning import TuningConfig, tune_many_sets, tune_on_pairs

    plain, dispatched = both
    config = TuningConfig(epochs=3, batch_size=2)
    runs = []
    for loaded in (plain, dispatched):
        tuned = tune_on_pairs(loaded, PAIRS, config)
        runs.append((tuned.adapter_state(), tuned.losses))
        tuned.unload()
    (want, want_losses), (got, got_losses) = runs
    assert got.keys() == want.keys()
    for key in want:  # the adapters of offloaded layers trained too (not left on meta)
        assert_close_scaled(got[key].cpu(), want[key], 1e-5)
    assert_close_scaled(torch.tensor(got_losses), torch.tensor(want_losses), 1e-5)
    assert got_losses[-1] < got_losses[0]
    (batched,) = tune_many_sets(dispatched, [PAIRS], config)
    for key in want:
        assert_close_scaled(batched[key], want[key], 1e-4)


def test_full_fine_tuning_of_an_offloaded_model_is_refused(both):
    from tunelens.models.tuning import TuningConfig, tune_on_pairs

    with pytest.raises(TunelensInputError, match="offloads some to disk"):
        tune_on_pairs(both[1], PAIRS, TuningConfig(method="full", epochs=1))


def test_device_map_and_max_memory_options_are_read_or_refused(model_dir):
    assert parse_max_memory("0=1GiB, cpu=2GiB") == {0: 2**30, "cpu": 2 * 2**30}
    assert parse_max_memory('{"0": "500MB", "cpu": 1000}') == {0: 500 * 10**6, "cpu": 1000}
    assert parse_device_map("auto") == "auto" and parse_device_map(None) is None
    assert parse_device_map('{"": "cpu"}') == {"": "cpu"}
    for bad, message in [
        ("cpu", "DEVICE=SIZE"),
        ("gpu=1GiB", "unknown device"),
        ("cpu=lots", "as a size"),
        ("{bad", "not valid JSON"),
    ]:
        with pytest.raises(TunelensInputError, match=message):
            parse_max_memory(bad)
    with pytest.raises(TunelensInputError, match="device map 'everywhere'"):
        parse_device_map("everywhere")
    with pytest.raises(TunelensInputError, match="needs a device map"):
        load_model(str(model_dir), max_memory="cpu=1GiB")


def test_a_study_with_device_map_auto_reads_what_the_undispatched_study_reads(tmp_path):
    import json

    from tests.helpers.cli import assert_one_error_line, invoke

    from tunelens.models.paths import world_model_dir

    weights = sum(p.stat().st_size for p in world_model_dir().glob("*.safetensors"))
    args = ["--k", "1", "--n-pairs", "2", "--seeds", "0", "--controls", "none", "--epochs", "2"]
    results = []
    for name, placement in [
        ("plain", []),
        ("split", ["--device-map", "auto", "--max-memory", f"cpu={weights // 2}"]),
    ]:
        out = tmp_path / name
        result = invoke("convergence", *args, *placement, "--out", out, "--no-progress")
        assert result.code == 0, result.stderr
        results.append(json.loads((out / "results.json").read_text()))
    plain, split = (r["convergence"] for r in results)
    assert len(split) == len(plain) == 1
    cos = [[layer["cos_icl_it"]["mean"] for layer in r[0]["layers"]] for r in (plain, split)]
    assert len(cos[0]) > 2 and cos[1] == pytest.approx(cos[0], abs=1e-4)
    kl = [r[0]["behaviour"]["kl_icl_it"]["mean"] for r in (plain, split)]
    assert kl[1] == pytest.approx(kl[0], rel=1e-4)
    assert results[1]["spec"]["device_map"] == "auto"
    for bad, message in [
        (["--max-memory", "cpu=1GiB"], "max_memory needs a device_map"),
        (["--device-map", "auto", "--max-memory", "cpu=lots"], "as a size"),
        (["--device-map", "everywhere"], "device map 'everywhere'"),
    ]:
        line = assert_one_error_line(invoke("convergence", *args, *bad, "--out", tmp_path / "x"))
        assert message in line, line
