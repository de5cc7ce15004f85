"""Tokenised training batches: loss positions, padding, EOS, and the no-truncation policy."""

from __future__ import annotations

import pytest
import torch

from tunelens.errors import TunelensInputError
from tunelens.models.batching import (
    IGNORE_INDEX,
    collate_causal,
    collate_seq2seq,
    context_length,
    encode_pairs,
    label_counts,
    token_losses,
)

PAIRS = [
    ("Input : the cat\nOutput :", " yes"),
    ("Input : a red apple on the mat\nOutput :", " no maybe"),
]


def test_causal_labels_are_masked_exactly_on_prompt_and_padding(tiny_tokenizer):
    tokenizer = tiny_tokenizer(bos=True)
    encoded = encode_pairs(tokenizer, PAIRS, kind="causal")
    batch = collate_causal(encoded, tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    for row, (prompt_text, target_text) in enumerate(PAIRS):
        prompt_ids = tokenizer(prompt_text)["input_ids"]
        target_ids = tokenizer(target_text, add_special_tokens=False)["input_ids"] + [eos]
        n_prompt, n_all = len(prompt_ids), len(prompt_ids) + len(target_ids)
        assert prompt_ids[0] == tokenizer.bos_token_id  # the prompt is tokenised as at inference
        assert batch["input_ids"][row, :n_all].tolist() == prompt_ids + target_ids
        assert batch["labels"][row, :n_prompt].eq(IGNORE_INDEX).all()
        assert batch["labels"][row, n_prompt:n_all].tolist() == target_ids
        assert batch["labels"][row, n_all:].eq(IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n_all + [0] * (
            batch["input_ids"].shape[1] - n_all
        )


def test_eos_is_optional_and_learned_even_when_it_is_the_pad_token(tiny_tokenizer):
    tokenizer = tiny_tokenizer(pad=False)
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style: pad id == eos id
    with_eos = encode_pairs(tokenizer, PAIRS, kind="causal")
    without = encode_pairs(tokenizer, PAIRS, kind="causal", add_eos=False)
    assert [e.target_ids[-1] for e in with_eos] == [tokenizer.eos_token_id] * 2
    extra = [len(a.target_ids) - len(b.target_ids) for a, b in zip(with_eos, without, strict=True)]
    assert extra == [1, 1]
    batch = collate_causal(with_eos, tokenizer.pad_token_id)
    counts = label_counts(batch["labels"], "causal")
    assert counts.tolist() == [len(e.target_ids) for e in with_eos]


def test_seq2seq_batches_put_the_prompt_in_the_encoder_and_the_target_in_labels(tiny_tokenizer):
    tokenizer = tiny_tokenizer(eos_suffix=True)
    encoded = encode_pairs(tokenizer, PAIRS, kind="seq2seq")
    batch = collate_seq2seq(encoded, tokenizer.pad_token_id)
    for row, (prompt_text, target_text) in enumerate(PAIRS):
        prompt_ids = tokenizer(prompt_text)["input_ids"]
        target_ids = tokenizer(target_text, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        assert batch["input_ids"][row, : len(prompt_ids)].tolist() == prompt_ids
        assert batch["attention_mask"][row].sum() == len(prompt_ids)
        assert batch["labels"][row, : len(target_ids)].tolist() == target_ids
        assert batch["labels"][row, len(target_ids) :].eq(IGNORE_INDEX).all()


def test_a_pair_longer_than_the_context_is_refused_with_its_name_and_lengths(tiny_tokenizer):
    tokenizer = tiny_tokenizer()
    long_prompt = "Input : " + "the cat " * 40 + "\nOutput :"
    with pytest.raises(TunelensInputError) as caught:
        encode_pairs(
            tokenizer,
            [PAIRS[0], (long_prompt, " yes")],
            kind="causal",
            max_length=64,
            names=["t1/i1", "t1/i2"],
        )
    message = str(caught.value)
    n_prompt = len(tokenizer(long_prompt)["input_ids"])
    assert "t1/i2" in message and f"{n_prompt} tokens" in message and "64" in message
    # The target alone overflowing is refused too: never cut a target.
    with pytest.raises(TunelensInputError, match="target"):
        encode_pairs(tokenizer, [(PAIRS[0][0], " yes" * 80)], kind="seq2seq", max_length=64)
    # Fitting pairs pass.
    assert len(encode_pairs(tokenizer, PAIRS, kind="causal", max_length=64)) == 2


def test_an_empty_target_is_refused(tiny_tokenizer):
    tokenizer = tiny_tokenizer()
    with pytest.raises(TunelensInputError, match="no tokens"):
        encode_pairs(tokenizer, [("Input : a\nOutput :", " ")], kind="causal", add_eos=False)


def test_context_length_reads_the_config_where_it_has_one():
    from transformers import GPT2Config, LlamaConfig, T5Config

    assert context_length(GPT2Config(n_positions=77)) == 77
    assert context_length(LlamaConfig(max_position_embeddings=99)) == 99
    assert context_length(T5Config()) is None  # relative positions: no bound


def test_token_losses_sum_only_labelled_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 6, 5]]
    )
    got = token_losses(logits, labels, "causal")
    logp = logits.log_softmax(-1)
    want = torch.tensor(
        [
            logp[0, 1, 3] + logp[0, 2, 4],
            logp[1, 0, 1] + logp[1, 1, 2] + logp[1, 2, 6] + logp[1, 3, 5],
        ]
    )
    torch.testing.assert_close(got, -want)
    assert label_counts(labels, "causal").tolist() == [2, 4]
