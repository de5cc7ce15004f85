"""Teacher-forced ranks (token distribution shift) against a plain per-position computation.

The reference is the test's own loop: for each sequence, one unbatched, unpacked
``model(prompt + output).logits`` and, at the position before each output token,
the token's place in the vocabulary sorted by logit (numpy's sort, descending). The
outputs are the greedy answers of a *different* model (another seed: the "tuned"
one), read back through ``generate_predictions(output_ids=...)``, so ranks other
than 1 occur. Prompts share a long prefix, so the packed path computes it once,
and a small row budget forces rows that repeat their prefix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers.models import wrap

from tunelens.models import token_ranks
from tunelens.models.loading import load_model
from tunelens.models.predict import first_line, generate_predictions
from tunelens.models.token_ranks import label_token_ids, teacher_forced_ranks, token_texts

PREFIX = "Definition : answer yes or no about the animal . Input : "
INPUTS = ["the cat sits", "a red apple", "the big dog runs on the mat", "small fish", "tree"]


# Two logits closer than this (relative to the row's largest) count as tied: a batched or
# packed forward and a plain one may order them differently on another CPU's kernels, and
# a random tiny model over a 150k-token vocabulary has such neighbours.
TIE = 1e-5


@torch.no_grad()
def reference_ranks(loaded, prompt_ids, output_ids) -> tuple[list[list[range]], list[list[set]]]:
    """Per sequence, per output token, from one plain forward of that sequence alone: the
    1-based places its logit may take in the row sorted descending (a single place unless
    another logit ties with it within ``TIE``), and the ids that may be the argmax."""
    ranks, tops = [], []
    for prompt, output in zip(prompt_ids, output_ids, strict=True):
        if loaded.kind == "seq2seq":
            start = loaded.model.config.decoder_start_token_id
            logits = loaded.model(
                input_ids=torch.tensor([prompt]),
                decoder_input_ids=torch.tensor([[start, *output[:-1]]]),
            ).logits[0]
            rows = [logits[j] for j in range(len(output))]
        else:
            logits = loaded.model(torch.tensor([list(prompt) + list(output)])).logits[0]
            rows = [logits[len(prompt) + j - 1] for j in range(len(output))]
        seq_ranks, seq_tops = [], []
        for row, target in zip(rows, output, strict=True):
            values = row.double().numpy()
            tie = TIE * max(1.0, float(np.abs(values).max()))
            above = int((values > values[target] + tie).sum())
            within = int((np.abs(values - values[target]) <= tie).sum())
            seq_ranks.append(range(above + 1, above + within + 1))
            seq_tops.append(set(np.flatnonzero(values >= values.max() - tie).tolist()))
        ranks.append(seq_ranks)
        tops.append(seq_tops)
    return ranks, tops


def assert_ranks_within(got: list[list[int]], want: list[list[range]]) -> None:
    assert [len(r) for r in got] == [len(w) for w in want]
    for got_row, want_row in zip(got, want, strict=True):
        for rank, allowed in zip(got_row, want_row, strict=True):
            assert rank in allowed, (got_row, [(a.start, a.stop - 1) for a in want_row])


def _outputs(tuned, prompts: list[str], max_new: int = 5) -> tuple[list[str], list[list[int]]]:
    ids: list[list[int]] = []
    texts = generate_predictions(tuned, prompts, max_new_tokens=max_new, output_ids=ids)
    return texts, ids


def _prompt_ids(loaded, prompts: list[str]) -> list[list[int]]:
    return [list(r) for r in loaded.tokenizer(prompts, add_special_tokens=True)["input_ids"]]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5"])
def test_ranks_equal_a_plain_per_position_computation(tiny_model, arch):
    untuned = wrap(tiny_model(arch, seed=0), arch)
    tuned = wrap(tiny_model(arch, seed=1), arch)
    prompts = [f"{PREFIX}{x} . Output :" for x in INPUTS]
    texts, outputs = _outputs(tuned, prompts)
    prompt_ids = _prompt_ids(untuned, prompts)
    got = teacher_forced_ranks(untuned, prompt_ids, outputs, max_tokens=40)
    want_ranks, want_tops = reference_ranks(untuned, prompt_ids, outputs)
    assert_ranks_within(got.ranks, want_ranks)
    assert all(
        top in allowed
        for got_row, want_row in zip(got.top_ids, want_tops, strict=True)
        for top, allowed in zip(got_row, want_row, strict=True)
    )
    assert any(r > 1 for row in got.ranks for r in row), "a different model should disagree"
    # the ids are what was generated: their text's first line is the prediction
    for text, ids in zip(texts, outputs, strict=True):
        assert first_line(tuned.tokenizer.decode(ids, skip_special_tokens=True)) == text


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_padded_path_gives_the_same_ranks(tiny_model, arch, monkeypatch):
    """Models that take no packed rows go through right-padded batches: same numbers."""
    untuned = wrap(tiny_model(arch, seed=0), arch)
    tuned = wrap(tiny_model(arch, seed=2), arch)
    prompts = [f"{PREFIX}{x} . Output :" for x in INPUTS]
    _, outputs = _outputs(tuned, prompts)
    prompt_ids = _prompt_ids(untuned, prompts)
    monkeypatch.setattr(token_ranks, "packable", lambda loaded: False)
    got = teacher_forced_ranks(untuned, prompt_ids, outputs)
    assert_ranks_within(got.ranks, reference_ranks(untuned, prompt_ids, outputs)[0])


def test_a_models_own_greedy_output_is_all_rank_one(tiny_model):
    """Greedy decoding picks the top-1 at every step, so the same model ranks it first."""
    loaded = wrap(tiny_model("llama", seed=3), "llama")
    prompts = [f"{PREFIX}{x} . Output :" for x in INPUTS]
    _, outputs = _outputs(loaded, prompts, max_new=6)
    prompt_ids = _prompt_ids(loaded, prompts)
    got = teacher_forced_ranks(loaded, prompt_ids, outputs)
    want = reference_ranks(loaded, prompt_ids, outputs)[0]
    # first, up to a tie within TIE (a cached decoding step and a whole-sequence forward
    # may break one differently)
    assert all(1 in allowed for row in want for allowed in row)
    assert_ranks_within(got.ranks, want)
    assert all(r == 1 for row in got.ranks for r in row) or any(
        len(allowed) > 1 for row in want for allowed in row
    )
    assert got.top_ids == outputs


def test_empty_outputs_give_no_ranks_and_bad_input_is_refused(tiny_model):
    loaded = wrap(tiny_model("llama"), "llama")
    ids = _prompt_ids(loaded, ["Input : cat Output :", "Input : dog Output :"])
    got = teacher_forced_ranks(loaded, ids, [[], [5]])
    assert got.ranks[0] == [] and len(got.ranks[1]) == 1
    with pytest.raises(ValueError, match="prompts for"):
        teacher_forced_ranks(loaded, ids, [[5]])
    with pytest.raises(ValueError, match="no tokens"):
        teacher_forced_ranks(loaded, [[]], [[5]])


@pytest.mark.parametrize("name", ["mistral", "gpt2", "qwen2"])
def test_ranks_on_a_real_tokenizer(real_model_dir, name):
    """A tiny random model on a genuine tokenizer, loaded by tunelens's own loader (skipped
    where ../shared/data/tokenizers is absent)."""
    untuned = load_model(str(real_model_dir(name, seed=0)))
    tuned = load_model(str(real_model_dir(name, seed=1)))
    prompts = [
        f"Definition: Is the sentence positive? Answer 0 or 1.\nInput: {x}\nOutput:"
        for x in ("I loved it.", "Terrible service, never again.", "Fine.")
    ]
    _, outputs = _outputs(tuned, prompts, max_new=4)
    prompt_ids = _prompt_ids(untuned, prompts)
    got = teacher_forced_ranks(untuned, prompt_ids, outputs, max_tokens=32)
    assert_ranks_within(got.ranks, reference_ranks(untuned, prompt_ids, outputs)[0])
    # label tokens: the digit, not SentencePiece's lone space piece before it
    labels = label_token_ids(untuned.tokenizer, ["0", "1"])
    texts = token_texts(untuned.tokenizer, sorted(labels))
    assert {t.strip() for t in texts} == {"0", "1"}
