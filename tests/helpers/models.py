"""Helpers for the tuning and prediction tests: tiny loaded models, training pairs, logits.

Models and tokenizers come from the ``tiny_model`` fixture (tests/conftest.py);
this module only wraps them and provides data built from that tokenizer's words.
"""

from __future__ import annotations

import random

import torch

from tunelens.models.loading import LoadedModel, load_model_from_objects

ANIMALS = ("cat", "dog", "bird", "fish")
THINGS = ("apple", "pear", "knife", "spoon", "hammer", "tree", "river", "house", "mat")
LABELS = ("yes", "no", "maybe")


def wrap(model_and_tokenizer: tuple, arch: str) -> LoadedModel:
    """A LoadedModel around a tiny (model, tokenizer), prepared like load_model does."""
    model, tokenizer = model_and_tokenizer
    return load_model_from_objects(model, tokenizer, name=f"tiny-{arch}")


def prompt(text: str) -> str:
    """The plain-template prompt for one input (words split by the word-level tokenizer)."""
    return f"Input : {text}\nOutput :"


def memorisable_pairs() -> list[tuple[str, str]]:
    """Four pairs with arbitrary answers: only memorising them lowers the loss to near zero."""
    return [
        (prompt("the cat sits on the mat"), " yes"),
        (prompt("a red apple"), " no"),
        (prompt("the big dog runs"), " maybe"),
        (prompt("small blue fish"), " no"),
    ]


def demo_sets(n_sets: int, k: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """``n_sets`` independent demonstration sets of ``k`` pairs each."""
    rng = random.Random(seed)
    sets = []
    for _ in range(n_sets):
        pairs = []
        for _ in range(k):
            words = rng.sample(ANIMALS + THINGS, rng.randint(1, 3))
            pairs.append((prompt(" ".join(["the", *words])), " " + rng.choice(LABELS)))
        sets.append(pairs)
    return sets


@torch.no_grad()
def logits_of(loaded: LoadedModel, text: str, model=None) -> torch.Tensor:
    """Logits of (a possibly tuned) model on one text; seq2seq: a fixed 3-token decoder input."""
    model = loaded.model if model is None else model
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    if loaded.kind == "seq2seq":
        decoder = torch.tensor([[0, 5, 6]])
        return model(input_ids=ids, decoder_input_ids=decoder).logits
    return model(input_ids=ids).logits


def has_lora_layers(module: torch.nn.Module) -> bool:
    """Whether PEFT LoRA layers are still injected anywhere in ``module``."""
    return any("lora_" in name for name, _ in module.named_modules())
