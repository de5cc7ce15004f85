"""Token-budget evaluation batches: same outputs as fixed batches, each prompt tokenised once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers.models import prompt, wrap
from tests.helpers.numerics import assert_close_scaled

from tunelens.models import predict
from tunelens.models.predict import generate_predictions, token_batches
from tunelens.models.scoring import score_labels

WORDS = [
    "the",
    "cat",
    "sits",
    "on",
    "the",
    "mat",
    "a",
    "dog",
    "big",
    "small",
    "bird",
    "eats",
    "green",
    "pear",
    "fish",
    "sleeps",
    "tree",
]


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [prompt(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))) for _ in range(n)]


@torch.no_grad()
def fixed_batch_generate(loaded, texts, max_new_tokens, batch_size=16):
    """The pre-token-budget path: tokenise to sort, tokenise again per fixed batch of 16."""
    model, tokenizer = loaded.model, loaded.tokenizer
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    config = predict.greedy_config(model, tokenizer, max_new_tokens)
    side = "left" if loaded.kind == "causal" else "right"
    out = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], return_tensors="pt", padding=True, padding_side=side
        )
        output = model.generate(**batch, generation_config=config)
        new = output[:, batch["input_ids"].shape[1] :] if loaded.kind == "causal" else output
        for i, text in zip(
            rows, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True
        ):
            out[i] = predict.first_line(text)
    return out


class CountingTokenizer:
    """Forwards everything to a tokenizer; counts how often each text is tokenised."""

    def __init__(self, inner):
        self.__dict__["inner"] = inner
        self.__dict__["counts"] = {}

    def __call__(self, text, *args, **kwargs):
        for t in [text] if isinstance(text, str) else text:
            self.counts[t] = self.counts.get(t, 0) + 1
        return self.inner(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)


def test_token_batches_respect_the_budget_and_cover_every_row_once():
    lengths = [40, 33, 30, 12, 12, 9, 5, 5, 3, 1]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    widths = [(n + 4,) for n in lengths]
    batches = token_batches(order, widths, max_batch_tokens=100)
    assert [i for b in batches for i in b] == order
    for batch in batches:
        padded = len(batch) * max(widths[i][0] for i in batch)
        assert padded <= 100 or len(batch) == 1
    assert batches[0] == [0, 1]  # 2 x 44 fits, 3 x 44 does not
    # batch_size alone: fixed batches; both: both bounds
    assert token_batches(order, widths, batch_size=4) == [order[:4], order[4:8], order[8:]]
    assert all(
        len(b) <= 2 for b in token_batches(order, widths, max_batch_tokens=10**6, batch_size=2)
    )
    # two padded dimensions (encoder, decoder): rows x (longest encoder + longest decoder)
    two = token_batches([0, 1, 2], [(10, 1), (2, 9), (2, 1)], max_batch_tokens=24)
    assert two == [[0], [1, 2]]  # 2 x (10 + 9) > 24; then 2 x (2 + 9) = 22
    with pytest.raises(ValueError):
        token_batches(order, widths, max_batch_tokens=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5"])
def test_token_budget_batches_give_the_fixed_batch_outputs(tiny_model, arch):
    loaded = wrap(tiny_model(arch, seed=2 if arch == "t5" else 0), arch)
    texts = prompts(37)
    want = fixed_batch_generate(loaded, texts, 5)
    assert any(want)
    assert generate_predictions(loaded, texts, max_new_tokens=5) == want  # default budget
    for budget in (1, 64, 200, 10_000):
        got = generate_predictions(loaded, texts, max_new_tokens=5, max_batch_tokens=budget)
        assert got == want, budget
    assert generate_predictions(loaded, texts, max_new_tokens=5, batch_size=16) == want
    ids = loaded.tokenizer(texts)["input_ids"]
    assert generate_predictions(loaded, texts, max_new_tokens=5, token_ids=ids) == want


def test_each_prompt_is_tokenised_once(tiny_model):
    loaded = wrap(tiny_model("llama"), "llama")
    texts = prompts(40, seed=1)
    want = generate_predictions(loaded, texts, max_new_tokens=4)
    counting = CountingTokenizer(loaded.tokenizer)
    loaded.tokenizer = counting
    assert generate_predictions(loaded, texts, max_new_tokens=4, max_batch_tokens=128) == want
    assert all(counting.counts[t] == 1 for t in texts)
    assert set(counting.counts) == set(texts)
    counting.counts.clear()
    scores = score_labels(loaded, texts[:6], ["yes", "no", "maybe"])
    assert scores.shape == (6, 3)
    assert all(counting.counts[t] == 1 for t in texts[:6])  # not once per label
    assert counting.counts[" yes"] == 1


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_label_scores_do_not_depend_on_the_batching(tiny_model, arch):
    loaded = wrap(tiny_model(arch), arch)
    texts = prompts(9, seed=3)
    labels = ["yes", "no", "maybe two"]
    fixed = score_labels(loaded, texts, labels, batch_size=16)
    for budget in (1, 50, 4096):
        assert_close_scaled(
            score_labels(loaded, texts, labels, max_batch_tokens=budget), fixed, 1e-5
        )


def test_audit_untuned_cell_tokenises_each_prompt_once_and_keeps_its_predictions():
    from tunelens.experiments.audit import eval_items, eval_prompts, run_baseline_cell
    from tunelens.models.loading import load_model
    from tunelens.tasks.sets import load_task_set

    loaded = load_model("world")
    test = load_task_set("world:heldout")[:4]
    params = {
        "baseline": "untuned",
        "eval_instances_per_task": 12,
        "eval_encodings": ["definition_only", "definition_examples"],
        "n_positive": 2,
        "template": "tk",
        "max_new_tokens": 4,
    }
    items = eval_items(test, 12)
    want = {
        encoding: fixed_batch_generate(loaded, eval_prompts(items, 2, "tk", encoding), 4)
        for encoding in params["eval_encodings"]
    }
    counting = CountingTokenizer(loaded.tokenizer)
    loaded.tokenizer = counting
    result = run_baseline_cell(loaded, test, params, seed=0)
    for encoding, predictions in want.items():
        samples = result["evaluations"][encoding]["samples"]
        assert [s["prediction"] for s in samples] == predictions
        assert all(counting.counts[s["prompt"]] == 1 for s in samples)
