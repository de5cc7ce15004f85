"""Label scores on genuine tokenizers against a plain forward over each full prompt + label.

The reference is computed here from scratch: token ids built in the test (prompt
with special tokens, then `" " + label` without), one unpadded forward of the
whole string, log-softmax summed at the label's positions. With a patch, the
reference is the same single forward with a forward hook (written here) that
replaces block L's output at the last prompt position; the scorer patches only
its prompt forward and must carry the patch into the label tokens through its
cache. Real tokenizers split labels (`" 0"` is a space piece and `"0"` under
SentencePiece and Qwen2), which is what first-token scoring got wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelens.errors import TunelensInputError
from tunelens.models.loading import load_model
from tunelens.models.patching import last_token_forward
from tunelens.models.scoring import score_label_continuations

TOKENIZERS = ("mistral", "gpt2", "qwen2", "world")

# Rows of different lengths (left padding is exercised) and different label sets.
PROMPTS = (
    "Sentence 1: the cat sits on the mat. Sentence 2: a cat sits.\nOutput:",
    "Sentence 1: red.\nOutput:",
    "Is the dog big or small?\nOutput:",
    "Sentence 1: the big dog runs under the tree by the river. Sentence 2: a dog runs.\nOutput:",
)
LABELS = (
    ("0", "1"),
    ("0", "1"),
    ("yes", "no", "maybe so", "not_entailment"),
    ("1", "10", "entailment"),
)


@pytest.fixture(scope="module")
def models(real_model_dir):
    """Loaded tiny models by tokenizer name, built on first use."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model("world" if name == "world" else str(real_model_dir(name)))
        return cache[name]

    return get


def _blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    return inner.layers if inner is not None else model.transformer.h


def _ids(tokenizer, prompt: str, label: str) -> tuple[list[int], list[int]]:
    return (
        list(tokenizer(prompt)["input_ids"]),
        list(tokenizer(" " + label, add_special_tokens=False)["input_ids"]),
    )


@torch.no_grad()
def reference_score(loaded, prompt: str, label: str, patch=None) -> float:
    """Summed log p(label tokens | prompt) from one forward over the whole string."""
    model = loaded.model
    prompt_ids, label_ids = _ids(loaded.tokenizer, prompt, label)
    last = len(prompt_ids) - 1
    handle = None
    if patch is not None:
        layer, state = patch

        def put(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            hidden[0, last] = state
            return hidden

        blocks = _blocks(model)
        if layer == 0:
            handle = blocks[0].register_forward_pre_hook(
                lambda m, args, kwargs: (
                    ((put(args[0]), *args[1:]), kwargs)
                    if args
                    else (args, {**kwargs, "hidden_states": put(kwargs["hidden_states"])})
                ),
                with_kwargs=True,
            )
        else:
            handle = blocks[layer - 1].register_forward_hook(
                lambda m, args, out: (put(out[0]), *out[1:]) if isinstance(out, tuple) else put(out)
            )
    try:
        # logits only where the label is read (the last len(label) + 1 positions, less the
        # final one): a 151k-token vocabulary over the whole prompt is most of the cost
        keep = len(label_ids) + 1
        ids = torch.tensor([prompt_ids + label_ids])
        logits = model(input_ids=ids, logits_to_keep=keep).logits[0, :-1]
    finally:
        if handle is not None:
            handle.remove()
    logp = logits.double().log_softmax(-1)
    return float(sum(logp[t, tok] for t, tok in enumerate(label_ids)))


def assert_scores_match(got: np.ndarray, want: list[float]) -> None:
    # log-probabilities are O(1-30) nats here: relative plus a small magnitude-scaled floor
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_label_scores_equal_full_string_forwards(models, name):
    loaded = models(name)
    scores = score_label_continuations(loaded, PROMPTS, LABELS, batch_size=4)
    for i, (prompt, labels) in enumerate(zip(PROMPTS, LABELS, strict=True)):
        want = [reference_score(loaded, prompt, label) for label in labels]
        assert_scores_match(scores.summed[i], want)
        lengths = [len(_ids(loaded.tokenizer, prompt, label)[1]) for label in labels]
        assert_scores_match(scores.per_token[i], list(np.asarray(want) / lengths))
    # the label distribution is a distribution over the row's own labels
    for i, labels in enumerate(LABELS):
        assert np.exp(scores.log_distribution(i)).sum() == pytest.approx(1.0, rel=1e-9)
        assert len(scores.summed[i]) == len(labels)
    # token-budget batches (longest first) give the same scores as one fixed batch
    budget = score_label_continuations(loaded, PROMPTS, LABELS, max_batch_tokens=40)
    for got, want in zip(budget.summed, scores.summed, strict=True):
        assert_scores_match(got, list(want))
    # the last-token readings are those of the plain patching forward
    plain = last_token_forward(loaded, PROMPTS)
    scale = float(plain.states.abs().max())
    torch.testing.assert_close(scores.states, plain.states, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_patched_label_scores_equal_one_patched_forward(models, name):
    loaded = models(name)
    donor = score_label_continuations(loaded, PROMPTS[::-1], LABELS[::-1]).states
    n_layers = donor.shape[1]
    for layer in (0, n_layers // 2, n_layers - 1):
        scores = score_label_continuations(
            loaded, PROMPTS, LABELS, patch_layer=layer, patch_states=donor, batch_size=4
        )
        for i, (prompt, labels) in enumerate(zip(PROMPTS, LABELS, strict=True)):
            patch = (layer, donor[i, layer])
            want = [reference_score(loaded, prompt, label, patch) for label in labels]
            assert_scores_match(scores.summed[i], want)
        # the recorded state at the patched layer is the patch itself
        torch.testing.assert_close(scores.states[:, layer], donor[:, layer])


def test_real_tokenizers_split_numeric_labels(models):
    """The situation that collapsed first-token scoring: " 0" and " 1" share a first token."""
    for name in ("mistral", "qwen2"):
        tokenizer = models(name).tokenizer
        zero = tokenizer(" 0", add_special_tokens=False)["input_ids"]
        one = tokenizer(" 1", add_special_tokens=False)["input_ids"]
        assert len(zero) == len(one) == 2 and zero[0] == one[0]


def test_labels_with_one_token_sequence_are_an_input_error(models):
    loaded = models("world")  # word-level: unknown words all become [UNK]
    prompts = ["Sentence 1: the cat.\nOutput:"] * 2
    labels = [("0", "1"), ("zzkq", "0", "xxqv")]
    with pytest.raises(TunelensInputError) as caught:
        score_label_continuations(loaded, prompts, labels, tasks=["good_task", "bad_task"])
    message = str(caught.value)
    assert "bad_task" in message and "'zzkq'" in message and "'xxqv'" in message
    # callers that read ties themselves (decide) may let them through: equal scores
    tied = score_label_continuations(loaded, prompts, labels, distinct=False)
    assert tied.summed[1][0] == tied.summed[1][2]


@torch.no_grad()
def seq2seq_reference(loaded, prompt: str, label: str, patch=None) -> float:
    """T5: the encoder over the prompt (block L's output replaced at its last token), the
    decoder over the start token and the label, summed log-probabilities of the label."""
    model = loaded.model
    prompt_ids, label_ids = _ids(loaded.tokenizer, prompt, label)
    handle = None
    if patch is not None:
        layer, state = patch

        def put(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            hidden[0, len(prompt_ids) - 1] = state
            return hidden

        blocks = model.encoder.block
        handle = blocks[layer - 1].register_forward_hook(
            lambda m, args, out: (put(out[0]), *out[1:]) if isinstance(out, tuple) else put(out)
        )
    try:
        start = model.config.decoder_start_token_id
        logits = model(
            input_ids=torch.tensor([prompt_ids]),
            decoder_input_ids=torch.tensor([[start, *label_ids[:-1]]]),
        ).logits[0]
    finally:
        if handle is not None:
            handle.remove()
    logp = logits.double().log_softmax(-1)
    return float(sum(logp[t, tok] for t, tok in enumerate(label_ids)))


def test_encoder_decoder_label_scores_with_and_without_a_patch(tiny_model):
    from tests.helpers.models import wrap

    loaded = wrap(tiny_model("t5"), "t5")
    prompts = ["Input : the cat sits\nOutput :", "Input : a big red dog runs on the mat\nOutput :"]
    labels = [("yes", "no maybe"), ("one two three", "first", "last")]
    donor = score_label_continuations(loaded, prompts[::-1], labels[::-1]).states
    for patch_layer in (None, 1, donor.shape[1] - 1):
        kwargs = {} if patch_layer is None else {"patch_layer": patch_layer, "patch_states": donor}
        scores = score_label_continuations(loaded, prompts, labels, **kwargs)
        for i, (prompt, row) in enumerate(zip(prompts, labels, strict=True)):
            patch = None if patch_layer is None else (patch_layer, donor[i, patch_layer])
            want = [seq2seq_reference(loaded, prompt, label, patch) for label in row]
            assert_scores_match(scores.summed[i], want)
