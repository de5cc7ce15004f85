"""Greedy predictions and label scores on tiny random models equal hand-written loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers.models import prompt, wrap
from tests.helpers.numerics import assert_close_scaled

from tunelens.errors import TunelensInputError
from tunelens.models.predict import first_line, generate_predictions
from tunelens.models.scoring import score_labels

PROMPTS = [
    prompt("the cat sits on the mat"),
    prompt("a dog"),
    "big",
    prompt("the small bird eats a green pear and the fish sleeps under the tree"),
    prompt("red apple"),
]
LABELS = ["yes", "no", "maybe two"]


@torch.no_grad()
def manual_greedy_ids(loaded, text: str, max_new: int) -> list[int]:
    """One prompt at a time, no padding, argmax of the last position, stop at EOS."""
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    eos = tokenizer.eos_token_id
    new: list[int] = []
    if loaded.kind == "causal":
        for _ in range(max_new):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token == eos:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    else:
        decoder = torch.tensor([[model.config.decoder_start_token_id]])
        for _ in range(max_new):
            token = int(model(input_ids=ids, decoder_input_ids=decoder).logits[0, -1].argmax())
            if token == eos:
                break
            new.append(token)
            decoder = torch.cat([decoder, torch.tensor([[token]])], dim=1)
    return new


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5"])
def test_batched_greedy_predictions_equal_a_manual_argmax_loop(tiny_model, arch):
    # Seed 2: the tiny T5 of seed 0 only ever emits padding.
    loaded = wrap(tiny_model(arch, seed=2 if arch == "t5" else 0), arch)
    got = generate_predictions(loaded, PROMPTS, max_new_tokens=6, batch_size=2)
    want = [
        first_line(
            loaded.tokenizer.decode(manual_greedy_ids(loaded, p, 6), skip_special_tokens=True)
        )
        for p in PROMPTS
    ]
    assert got == want
    assert any(got)  # random tiny models still say something
    assert generate_predictions(loaded, PROMPTS, max_new_tokens=6, batch_size=2) == got
    assert generate_predictions(loaded, PROMPTS, max_new_tokens=6, batch_size=16) == got


def _tokenizer_with_newline_at(tokenizer, token_id: int):
    """The same word-level vocabulary with one word replaced by a newline token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(tokenizer.get_vocab())
    word = tokenizer.convert_ids_to_tokens(token_id)
    del vocab[word]
    vocab["\n"] = token_id
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(["[PAD]", "[UNK]", "<s>", "</s>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="[UNK]",
        pad_token="[PAD]",
    )


def test_predictions_stop_at_the_first_newline(tiny_model):
    loaded = wrap(tiny_model("qwen2"), "qwen2")  # no BOS: both tokenizers encode alike
    special = set(loaded.tokenizer.all_special_ids)
    for text in PROMPTS:
        generated = manual_greedy_ids(loaded, text, 4)
        prompt_ids = set(loaded.tokenizer(text)["input_ids"])
        if (
            len(generated) >= 2
            and not (special | prompt_ids) & set(generated[:2])
            and generated[0] != generated[1]
        ):
            break
    else:
        pytest.skip("no prompt whose greedy continuation has two distinct ordinary tokens")
    first, second = generated[0], generated[1]
    loaded.tokenizer = _tokenizer_with_newline_at(loaded.tokenizer, second)
    assert generate_predictions(loaded, [text], max_new_tokens=4) == [
        loaded.tokenizer.decode([first])
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_label_scores_are_summed_log_probabilities(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    model, tokenizer = loaded.model, loaded.tokenizer
    scores = score_labels(loaded, PROMPTS, LABELS, batch_size=4)
    assert scores.shape == (len(PROMPTS), len(LABELS)) and scores.dtype == np.float64
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            prompt_ids = tokenizer(text)["input_ids"]
            for j, label in enumerate(LABELS):
                label_ids = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
                if loaded.kind == "causal":
                    ids = torch.tensor([prompt_ids + label_ids])
                    logp = model(input_ids=ids).logits[0].log_softmax(-1)
                    want = sum(
                        float(logp[len(prompt_ids) - 1 + t, tok]) for t, tok in enumerate(label_ids)
                    )
                else:
                    decoder = torch.tensor([[0] + label_ids[:-1]])
                    logp = (
                        model(input_ids=torch.tensor([prompt_ids]), decoder_input_ids=decoder)
                        .logits[0]
                        .log_softmax(-1)
                    )
                    want = sum(float(logp[t, tok]) for t, tok in enumerate(label_ids))
                assert scores[i, j] == pytest.approx(want, rel=1e-5, abs=1e-4)
    again = score_labels(loaded, PROMPTS, LABELS, batch_size=16)
    assert_close_scaled(again, scores, 1e-5)
    with_eos = score_labels(loaded, PROMPTS, LABELS, include_eos=True)
    assert (with_eos < scores).all()


def test_predictions_of_a_tuned_model_and_long_prompts(tiny_model):
    from tests.helpers.models import memorisable_pairs

    from tunelens.models.tuning import TuningConfig, tune_on_pairs

    loaded = wrap(tiny_model("llama"), "llama")
    pairs = memorisable_pairs()
    tuned = tune_on_pairs(loaded, pairs, TuningConfig(epochs=60, batch_size=4, learning_rate=3e-2))
    try:
        predictions = generate_predictions(tuned.as_loaded(), [p for p, _ in pairs])
        assert predictions == [t.strip() for _, t in pairs]
    finally:
        tuned.unload()
    with pytest.raises(TunelensInputError, match="context of 128"):
        generate_predictions(loaded, [prompt("the cat " * 70)], max_new_tokens=4)
    assert generate_predictions(loaded, []) == []
