"""`tunelens decide` on a real Super-NaturalInstructions task converted to JSONL, tiny random Llama.

The SuperNI subset is read from $TUNELENS_SUPERNI or ../shared/data/superni and
never copied into the repository; the test skips when it is absent. The model
is a 2-layer Llama with hidden size 32 and a word-level tokenizer built from the
task's own words, saved in Hugging Face format to a temporary folder, so it
loads through the same ``load_model`` path as any local model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunelens.experiments.decide.config import make_config
from tunelens.experiments.decide.runner import run_decide
from tunelens.spec import TuningSpec
from tunelens.tasks.jsonl import load_jsonl, write_jsonl
from tunelens.tasks.loaders import load_task_file
from tunelens.tasks.types import Task

REPO = Path(__file__).resolve().parents[2]
TASK = "task1344_glue_entailment_classification"


def superni_root() -> Path | None:
    for candidate in (
        os.environ.get("TUNELENS_SUPERNI"),
        REPO.parent / "shared" / "data" / "superni",
    ):
        if candidate and (Path(candidate) / "index.tsv").is_file():
            return Path(candidate)
    return None


ROOT = superni_root()
pytestmark = pytest.mark.skipif(
    ROOT is None, reason="../shared/data/superni not present (or set TUNELENS_SUPERNI)"
)


def tiny_llama_for(task: Task, directory: Path) -> Path:
    """A random tiny Llama whose word-level vocabulary covers the task's text."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    texts = [
        task.definition,
        "Definition: Input: Output:",
        *[i.input for i in task.instances],
        *[o for i in task.instances for o in i.outputs],
    ]
    words = {w for text in texts for w, _ in pre.pre_tokenize_str(text)}
    special = ["[PAD]", "[UNK]", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(special + sorted(words - set(special)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre
    core.add_special_tokens(special)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="[UNK]",
        pad_token="[PAD]",
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_decide_on_a_superni_task(tmp_path):
    source = next((ROOT / "tasks").rglob(f"{TASK}.json"), None)
    if source is None:
        pytest.skip(f"{TASK}.json is not in this copy of the SuperNI subset")
    task_path = write_jsonl(load_task_file(source), tmp_path / f"{TASK}.jsonl")
    task = load_jsonl(task_path)
    assert task.labels == ("0", "1") and len(task.instances) == 300
    model = tiny_llama_for(task, tmp_path / "tiny-llama")
    costs = tmp_path / "costs.csv"
    costs.write_text("true,predicted,cost\n0,1,5\n1,0,1\n")
    config = make_config(
        k=[1, 2],
        tune_sizes=[8, 32],
        test_size=20,
        bootstrap=200,
        similarity_items=6,
        predict="score",
        tuning=TuningSpec(epochs=1, batch_size=8, learning_rate=1e-2),
    )
    out = tmp_path / "out"
    outcome = run_decide(task_path, str(model), config, out, costs_path=costs, progress=False)
    data = outcome.results
    assert data["split"]["test"] == 20 and data["split"]["demo_pool"] == 2
    assert data["split"]["tuning_pool"] == 278
    assert [m["id"] for m in data["methods"]] == [
        "zero_shot",
        "icl_k1",
        "icl_k2",
        "tune_n8",
        "tune_n32",
        "control_simplified",
        "control_delusive",
        "label_guess",
    ]
    for method in data["methods"]:
        # label scoring always answers with a label
        assert method["out_of_space"] == 0
        assert sum(map(sum, method["confusion"]["counts"])) == pytest.approx(20)
        assert method["cost_per_1000"]["mean"] >= 0
    # a uniform guess over {0, 1}: half the items right; costs (0 + 5) / 2 and (1 + 0) / 2
    guess = data["methods"][-1]
    assert guess["accuracy"]["mean"] == pytest.approx(50.0)
    assert guess["cost_per_1000"]["mean"] == pytest.approx(1000 * (10 * 2.5 + 10 * 0.5) / 20)
    assert data["model"]["non_embedding_parameters"] > 0 and data["model"]["layers"] == 2
    assert len(data["similarity"]["layers"]) == 3
    assert data["verdict"]["summary"][0].startswith("Best: ")
    saved = json.loads((out / "decide.json").read_text())
    assert saved == data
    html = (out / "decide.html").read_text()
    assert f"{TASK}" in html and 'id="costs"' in html and 'id="format"' in html
