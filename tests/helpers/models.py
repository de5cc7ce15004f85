"""Helpers for the tuning and prediction tests: tiny loaded models, training pairs, logits.

Models and tokenizers come from the ``tiny_model`` fixture (tests/conftest.py);
this module only wraps them and provides data built from that tokenizer's words.
"""

from __future__ import annotations

import functools
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


# ------------------------------------------------ the architecture matrix (issue 18)

MATRIX_ARCHITECTURES = (
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "phi",
    "phi3",
    "gpt2",
    "t5",
    "bart",
)
"""Tiny random configs of every architecture family tunelens is tested on, built in code."""

# A minimal chat template (Jinja, as in a tokenizer_config.json): user turns are
# wrapped, and the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }} : {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _world_bpe():
    """A byte-level BPE (GPT-2 / Qwen2 style) trained on the embedded world's text, 800 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tunelens.tasks.sets import load_task_set

    texts = []
    for task in load_task_set("world:train") + load_task_set("world:heldout"):
        texts.append(f"Definition: {task.definition}")
        texts += [f"Input: {i.input}\nOutput: {i.outputs[0]}\n\n" for i in task.instances]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=[PAD_TOKEN, "[UNK]", BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return core.to_str()


PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "[PAD]", "<s>", "</s>"


def world_tokenizer():
    """A byte-level BPE tokenizer whose vocabulary covers the world tasks' words.

    Byte-level, as GPT-2's and Qwen2's are: transformers 5 loads a Qwen2
    directory with its own Qwen2Tokenizer whatever tokenizer_config.json names,
    and that class reads a byte-level BPE correctly (a word-level one would
    encode to nothing).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_world_bpe()),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token="[UNK]",
        model_max_length=256,
    )


def tiny_config(arch: str, vocab_size: int, *, pad: int = 0, bos: int = 2, eos: int = 3):
    """A 2-layer (2 + 2 for encoder-decoders), hidden-32 config of ``arch``."""
    import transformers as tf

    decoder = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
    }
    if arch == "llama":
        return tf.LlamaConfig(**decoder, initializer_range=0.2)
    if arch == "mistral":
        return tf.MistralConfig(**decoder, initializer_range=0.2, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**decoder, initializer_range=0.2)
    if arch == "gemma":
        return tf.GemmaConfig(**decoder, head_dim=8)
    if arch == "phi":
        return tf.PhiConfig(**decoder, partial_rotary_factor=0.5)
    if arch == "phi3":
        return tf.Phi3Config(**decoder, initializer_range=0.2)
    if arch == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            initializer_range=0.2,
            bos_token_id=bos,
            eos_token_id=eos,
        )
    if arch == "t5":
        return tf.T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=pad,
            pad_token_id=pad,
            eos_token_id=eos,
        )
    if arch == "bart":
        return tf.BartConfig(
            vocab_size=vocab_size,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=256,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
            decoder_start_token_id=bos,
            forced_bos_token_id=None,
            forced_eos_token_id=None,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}")


def save_tiny_model(arch: str, directory, *, seed: int = 0, chat_template: str | None = None):
    """A tiny random ``arch`` with the world tokenizer, saved in Hugging Face format.

    ``chat_template`` (Jinja) is stored on the tokenizer when given. Returns the
    directory, which loads through ``tunelens.models.loading.load_model``.
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tokenizer = world_tokenizer()
    config = tiny_config(
        arch,
        len(tokenizer),
        pad=tokenizer.pad_token_id,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
