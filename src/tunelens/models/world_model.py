"""Training the embedded world model: a small Llama that learns in context on world text.

Read top to bottom: the tokenizer, the model config, a batch, the training
loop with resumable checkpoints, a fast in-loop probe of in-context accuracy,
and the export in Hugging Face format. Everything is seeded; a step's batch
depends only on (seed, step), so a resumed run sees the same data as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelens import interrupt
from tunelens.bounds import MAX_COUNT, MAX_SEED, MAX_THREADS
from tunelens.errors import TunelensInputError
from tunelens.io import atomic_path
from tunelens.log import get_logger
from tunelens.progress import ProgressDisplay
from tunelens.tasks.types import Task
from tunelens.tasks.world.corpus import BOS, SEP, CorpusMix, training_sequence, vocabulary_texts
from tunelens.tasks.world.generator import generate_world
from tunelens.tasks.world.lexicon import CATEGORIES
from tunelens.tasks.world.relabel import relabel_tasks

_log = get_logger(__name__)

PAD, UNK = "[PAD]", "[UNK]"
ADDED = ["Input:", "Output:", "Definition:", "Explanation:"]


@dataclass
class WorldModelRecipe:
    """Everything that decides the world model; saved beside it as its training log."""

    seed: int = 0
    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 256
    seq_len: int = 64
    batch_size: int = 64
    steps: int = 12000
    # Curriculum: only the one-word family (plus facts) before this step, in which
    # in-context learning breaks through first; then every family by FAMILY_WEIGHTS.
    curriculum_steps: int = 6000
    # Scale of a shared per-category direction added to the initial embeddings of
    # the lexicon's words (0 = plain random init): category knowledge from the start.
    category_init: float = 1.0
    # Share of task sequences with bursty inputs (see tasks.world.corpus.CorpusMix).
    bursty: float = 0.5
    all_tokens_loss: bool = True  # see tasks.world.corpus.CorpusMix
    lr: float = 3e-3
    warmup: int = 200
    decay_start: float = 0.7  # constant lr until this share of steps, then cosine to lr/10
    weight_decay: float = 0.01
    checkpoint_every: int = 500
    eval_every: int = 500
    threads: int = 1
    # Second generation (see tasks.world.corpus; the defaults reproduce the first
    # recipe, the shipped `world-small`): the tokenizer generation (2 adds the
    # novel words), the shares of copy, foreign-label and definition-block
    # sequences, and the one-word family's weight after the curriculum (0 means
    # FAMILY_WEIGHTS).
    vocabulary: int = 1
    copy: float = 0.0
    foreign_labels: float = 0.0
    definition_blocks: float = 0.0
    word_category_weight: float = 0.0
    # The base member `world-base` (issue 29; the defaults reproduce the earlier
    # members): shares of task sequences with a definition first and in the
    # Tk-Instruct layout, and whether a task sequence's first example (zero
    # shots) answers with its label (False: with its input repeated), and the
    # share of task sequences with a preamble before that first example.
    definition_prefix: float = 0.2
    tk_layout: float = 0.1
    zero_shot_answers: bool = True
    zero_shot_preamble: float = 0.0
    zero_shot_target: str = "echo"  # "echo" or "word" (see tasks.world.corpus.CorpusMix)
    preamble_soup: bool = False  # see tasks.world.corpus.CorpusMix
    induction_blocks: float = 0.0  # see tasks.world.corpus.induction_blocks_sequence
    induction_answers_after: int = 0  # see tasks.world.corpus.induction_blocks_sequence

    def mix(self) -> CorpusMix:
        return CorpusMix(
            definition_prefix=self.definition_prefix,
            tk_layout=self.tk_layout,
            zero_shot_answers=self.zero_shot_answers,
            zero_shot_preamble=self.zero_shot_preamble,
            zero_shot_target=self.zero_shot_target,
            preamble_soup=self.preamble_soup,
            induction_blocks=self.induction_blocks,
            induction_answers_after=self.induction_answers_after,
            bursty=self.bursty,
            all_tokens_loss=self.all_tokens_loss,
            copy=self.copy,
            foreign_labels=self.foreign_labels,
            definition_blocks=self.definition_blocks,
            word_category_weight=self.word_category_weight or None,
        )

    def __post_init__(self) -> None:
        """Every field within its real bounds; a bad one names its option (``--steps``)."""
        whole: dict[str, tuple[int, int]] = {
            "seed": (0, MAX_SEED),
            "hidden_size": (1, MAX_COUNT),
            "layers": (1, MAX_COUNT),
            "heads": (1, MAX_COUNT),
            "intermediate_size": (1, MAX_COUNT),
            "max_positions": (2, MAX_COUNT),
            "seq_len": (2, MAX_COUNT),
            "batch_size": (1, MAX_COUNT),
            "steps": (1, MAX_COUNT),
            "curriculum_steps": (0, MAX_COUNT),
            "warmup": (0, MAX_COUNT),
            "checkpoint_every": (1, MAX_COUNT),
            "eval_every": (1, MAX_COUNT),
            "threads": (1, MAX_THREADS),
            "vocabulary": (1, 2),
            "induction_answers_after": (0, 8),
        }
        for name, (low, high) in whole.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                self._bad(name, f"must be a whole number, got {value!r}")
            if not low <= value <= high:
                self._bad(name, f"must be between {low} and {high}, got {value}")
        for name in (
            "bursty",
            "decay_start",
            "copy",
            "foreign_labels",
            "definition_blocks",
            "word_category_weight",
            "definition_prefix",
            "tk_layout",
            "zero_shot_preamble",
            "induction_blocks",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                self._bad(name, f"must lie in [0, 1], got {value!r}")
        for name in ("lr", "category_init", "weight_decay"):
            value = getattr(self, name)
            positive = name == "lr"
            if not (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and (value > 0 if positive else value >= 0)
            ):
                self._bad(
                    name, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}"
                )
        if self.zero_shot_target not in ("echo", "word"):
            self._bad("zero_shot_target", f"must be echo or word, got {self.zero_shot_target!r}")
        for name in ("zero_shot_answers", "preamble_soup"):
            if not isinstance(getattr(self, name), bool):
                self._bad(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.hidden_size % self.heads:
            self._bad("heads", f"must divide hidden_size {self.hidden_size}, got {self.heads}")

    @staticmethod
    def _bad(name: str, message: str) -> None:
        raise TunelensInputError(message, where=f"--{name.replace('_', '-')}")


# Recipe fields that do not change the result: a run may resume with other values.
RUNTIME_FIELDS = ("threads", "checkpoint_every", "eval_every")

# The family: `world-small` is the first recipe (the defaults above); `world`
# (size "base") is deeper, reads 128-token sequences and is trained on the
# second-generation corpus. `world-it` is `world` after multi-task instruction
# tuning (see models.world_it). `world-base` (size "world-base") is `world`'s
# model on `world`'s corpus with every definition-bearing kind off and no
# zero-shot answers (see tasks.world.corpus): a base model that learns in
# context but has never seen the answer format a definition-only prompt asks for.
_WORLD: dict[str, object] = {
    "hidden_size": 128,
    "layers": 6,
    "heads": 4,
    "intermediate_size": 512,
    "seq_len": 128,
    "batch_size": 32,
    "steps": 10000,
    "curriculum_steps": 3000,
    "lr": 2e-3,
    "warmup": 300,
    "vocabulary": 2,
    "copy": 0.1,
    "foreign_labels": 0.3,
    "definition_blocks": 0.15,
    "word_category_weight": 0.3,
}
# `world-base`: `world`'s model and corpus with every definition-bearing kind off and no
# zero-shot answers. 8,000 steps, not 10,000: one CPU thread measured 0.81 s a step, so
# the whole run (with the probes) fits 2 hours of CPU; the decay starts at 5,600.
_WORLD_BASE: dict[str, object] = {
    **_WORLD,
    "steps": 8000,
    "definition_blocks": 0.0,
    "definition_prefix": 0.0,
    "tk_layout": 0.0,
    "zero_shot_answers": False,
    "zero_shot_preamble": 0.5,
}
# The candidates below build on world-base plus induction blocks (world-base-induct).
_WORLD_BASE_INDUCT: dict[str, object] = {**_WORLD_BASE, "induction_blocks": 0.15}
_WORLD_BASE_RULES: dict[str, object] = {
    **_WORLD_BASE_INDUCT,
    "induction_blocks": 0.25,
    "word_category_weight": 0.1,
}
SIZES: dict[str, dict[str, object]] = {
    "small": {},
    "base": _WORLD,
    "world-base": _WORLD_BASE,
    # Unshipped candidates for a base member with stronger in-context learning (each
    # outcome at k = 8 on the held-out tasks; bench/world_base.md has the runs).
    # world-base's recipe plus induction blocks (examples, then the rule's definition), for
    # the non-category families `world` learned from its definition blocks: 74.1 (finished).
    "world-base-induct": _WORLD_BASE_INDUCT,
    # world-base-induct whose induction blocks go on after the definition with 1-2 more
    # answered examples: definitions amid demonstrations, as `world`'s definition blocks
    # put them before answers, but never an answer without a demonstration before it.
    # Stopped at 1,759: its untuned definition-only answers went into the label space.
    "world-base-sandwich": {**_WORLD_BASE_INDUCT, "induction_answers_after": 2},
    # world-base-induct with a 1,000-step one-word curriculum instead of 3,000: `world`'s
    # rule families emerged 4,000-6,000 steps after its curriculum (steps 7,000-9,000
    # of 10,000); world-base's 8,000 steps leave only 5,000 after it. Stopped at 4,473:
    # the one-word family never emerged.
    "world-base-early": {**_WORLD_BASE_INDUCT, "curriculum_steps": 1000},
    # world-base-induct with more of the rule families after the curriculum: the one-word
    # family's weight 0.1 (not 0.3) and induction blocks 0.25 (not 0.15). Its one-word
    # accuracy passed 90 by step 6,000 at 0.3 while the other families stayed near 55-75.
    # Stopped at 3,000: fewer one-word sequences, and the one-word family had not emerged.
    "world-base-rules": _WORLD_BASE_RULES,
    # world-base-induct with the one-word family's weight 0.1 after the curriculum and
    # nothing else changed: its first 3,000 steps are world-base-induct's, whose one-word
    # in-context learning emerged by step 3,000 (world-base-rules' had not). Stopped at
    # 4,742: after the curriculum the one-word family fell to the guess (48.3 at 4,500).
    "world-base-focus": {**_WORLD_BASE_INDUCT, "word_category_weight": 0.1},
    # world-base-rules with 8 layers, not 6: 0.91 s of CPU a step against 0.71, so
    # 7,000 steps fit the 2 hours. Stopped at 2,500, as world-base-rules.
    "world-base-deep": {**_WORLD_BASE_RULES, "layers": 8, "steps": 7000},
}
# The family member each size trains (and installs as).
SIZE_MEMBERS: dict[str, str] = {
    "small": "world-small",
    "base": "world",
    **{size: size for size in SIZES if size.startswith("world-base")},
}


def recipe_for_size(size: str, **overrides: object) -> WorldModelRecipe:
    """The recipe of one family member, with command-line overrides."""
    if size not in SIZES:
        raise TunelensInputError(f"must be one of {', '.join(SIZES)}, got {size!r}", where="--size")
    return WorldModelRecipe(**{**SIZES[size], **overrides})  # type: ignore[arg-type]


def build_tokenizer(seed: int = 0, vocabulary: int = 1) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word the world can produce.

    "\\n\\n" (the example separator) is one token and doubles as end of sequence,
    so generation stops after one answer; single newlines are whitespace.
    """
    pre = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in vocabulary_texts(seed, generation=vocabulary):
        words.update(piece for piece, _ in pre.pre_tokenize_str(text))
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_special_tokens([AddedToken(SEP, normalized=False), PAD, UNK, BOS])
    core.add_tokens([AddedToken(t, normalized=False) for t in ADDED])
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, core.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=SEP,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=256,
    )


def build_model(recipe: WorldModelRecipe, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    if recipe.category_init:
        _add_category_directions(model, tokenizer, recipe)
    return model


@torch.no_grad()
def _add_category_directions(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, recipe: WorldModelRecipe
) -> None:
    """Give words of one category a shared embedding component, seeded."""
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    emb: torch.Tensor = model.get_input_embeddings().weight  # type: ignore[assignment]
    std = emb.std().item()
    vocab = tokenizer.get_vocab()
    for category in sorted(CATEGORIES):
        direction = torch.randn(emb.shape[1], generator=gen) * std * recipe.category_init
        for word in CATEGORIES[category]:
            emb[vocab[word]] += direction


class _Batcher:
    """Token ids and loss labels for step ``step``, a pure function of (seed, step)."""

    def __init__(self, recipe: WorldModelRecipe, tokenizer: PreTrainedTokenizerFast):
        self.recipe = recipe
        self.vocab = tokenizer.get_vocab()
        self.pad = tokenizer.pad_token_id
        world = generate_world(recipe.seed)
        self.heldout = world.heldout  # the probe's tasks (tunelens world eval's too)
        self.forbidden = frozenset(frozenset(t.labels or ()) for t in world.heldout)
        pre = pre_tokenizers.Whitespace()
        self._definitions: dict[str, list[str]] = {}
        self._split = lambda text: [p for p, _ in pre.pre_tokenize_str(text)]
        self.mix = recipe.mix()

    def _tokenize(self, text: str) -> list[str]:
        if text not in self._definitions:
            self._definitions[text] = self._split(text)
        return self._definitions[text]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.recipe
        rng = random.Random(r.seed * 1_000_003 + step)
        ids = torch.full((r.batch_size, r.seq_len), self.pad, dtype=torch.long)
        labels = torch.full((r.batch_size, r.seq_len), -100, dtype=torch.long)
        for row in range(r.batch_size):
            tokens, mask = training_sequence(
                rng,
                seed=r.seed,
                max_tokens=r.seq_len,
                tokenize=self._tokenize,
                forbidden_label_sets=self.forbidden,
                mix=self.mix,
                family="word_category" if step < r.curriculum_steps else None,
            )
            row_ids = torch.tensor([self.vocab[t] for t in tokens])
            ids[row, : len(tokens)] = row_ids
            # labels[t] is the token at t, scored where it is a target; HF shifts them.
            target = torch.tensor(mask)
            labels[row, : len(tokens)] = torch.where(target, row_ids, torch.tensor(-100))
        return ids, labels


def learning_rate(recipe: WorldModelRecipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    start = int(recipe.decay_start * recipe.steps)
    if step < start:
        return recipe.lr
    progress = (step - start) / max(1, recipe.steps - start)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def probe_icl_accuracy(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    tasks: list,
    shots: tuple[int, ...] = (0, 1, 4, 8),
    queries_per_task: int = 6,
    seed: int = 0,
    *,
    definition: bool = False,
) -> dict[int, float]:
    """Greedy first-token accuracy (0-100) on plain few-shot prompts; cheap, for monitoring.

    ``definition`` puts the task definition first (the plain template's
    ``Definition:`` block).
    """
    model.eval()
    rng = random.Random(seed)
    out: dict[int, float] = {}
    for k in shots:
        prompts, answers = [], []
        for task in tasks:
            pool = list(task.instances)
            head = f"Definition: {task.definition}\n\n" if definition else ""
            for _ in range(queries_per_task):
                chosen = rng.sample(pool, k + 1)
                # The plain template of tunelens.prompts.
                demos = "".join(f"Input: {i.input}\nOutput: {i.outputs[0]}\n\n" for i in chosen[:k])
                prompts.append(f"{head}{demos}Input: {chosen[k].input}\nOutput:")
                answers.append(tokenizer.convert_tokens_to_ids(chosen[k].outputs[0]))
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        logits = model(**batch).logits[:, -1, :]
        out[k] = 100.0 * (logits.argmax(-1) == torch.tensor(answers)).float().mean().item()
    model.train()
    return out


@torch.no_grad()
def probe_definition_only(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    tasks: list[Task],
    *,
    template: str = "plain",
    queries_per_task: int = 6,
    seed: int = 0,
) -> dict[str, float]:
    """Definition-only prompts: greedy first-token accuracy and share inside the label space.

    What the base member is for: untuned it should answer outside the label
    space (the share low), so that tuning has the answer format to teach.
    ``template`` is "plain" or "tk" (the audit's Tk-Instruct encoding).
    """
    model.eval()
    rng = random.Random(seed)
    prompts, answers, spaces = [], [], []
    for task in tasks:
        labels = {tokenizer.convert_tokens_to_ids(label) for label in task.labels or ()}
        head = f"Definition: {task.definition}\n\n"
        if template == "tk":
            head += "Now complete the following example -\n"
        for inst in rng.sample(list(task.instances), min(queries_per_task, len(task.instances))):
            prompts.append(f"{head}Input: {inst.input}\nOutput:")
            answers.append(tokenizer.convert_tokens_to_ids(inst.outputs[0]))
            spaces.append(labels)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    predicted = model(**batch).logits[:, -1, :].argmax(-1).tolist()
    model.train()
    n = len(prompts)
    return {
        "accuracy": round(
            100.0 * sum(p == a for p, a in zip(predicted, answers, strict=True)) / n, 1
        ),
        "in_label_space": round(
            100.0 * sum(p in space for p, space in zip(predicted, spaces, strict=True)) / n, 1
        ),
    }


def probe_record(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    recipe: WorldModelRecipe,
    tasks: list[Task],
) -> dict[str, dict[str, Any]]:
    """The held-out probes of one training-log line (rounded, keys as strings).

    Always: all held-out tasks and the one-word ones. For the second-generation
    vocabulary also: novel label words, definition only (k = 0), and each rule
    family at k = 8, the rows of the family's targets. For a recipe without
    zero-shot answers (``world-base``) also the definition-only accuracy and
    share of answers inside the label space, plain and Tk-Instruct encoded.
    """

    def rounded(acc: dict[int, float]) -> dict[str, float]:
        return {str(k): round(v, 1) for k, v in acc.items()}

    one_word = [t for t in tasks if t.metadata["family"] == "word_category"]
    seed = recipe.seed
    record: dict[str, dict[str, Any]] = {
        "heldout_accuracy": rounded(probe_icl_accuracy(model, tokenizer, tasks, seed=seed)),
        "heldout_word_category_accuracy": rounded(
            probe_icl_accuracy(model, tokenizer, one_word, seed=seed)
        ),
    }
    if recipe.vocabulary >= 2:
        novel = relabel_tasks(tasks, "novel")
        record["heldout_novel_label_accuracy"] = rounded(
            probe_icl_accuracy(model, tokenizer, novel, shots=(1, 4, 8), seed=seed)
        )
        record["heldout_definition_only_accuracy"] = rounded(
            probe_icl_accuracy(model, tokenizer, tasks, shots=(0,), seed=seed, definition=True)
        )
        families = sorted({t.metadata["family"] for t in tasks})
        record["heldout_family_accuracy_k8"] = {
            family: round(
                probe_icl_accuracy(
                    model,
                    tokenizer,
                    [t for t in tasks if t.metadata["family"] == family],
                    shots=(8,),
                    seed=seed,
                )[8],
                1,
            )
            for family in families
        }
    if not recipe.zero_shot_answers:
        record["heldout_definition_only"] = {
            template: probe_definition_only(model, tokenizer, tasks, template=template, seed=seed)
            for template in ("plain", "tk")
        }
    return record


CHECKPOINT = "checkpoint.safetensors"
_META = "tunelens_checkpoint"


def refuse_pickle_checkpoint(workdir: Path) -> None:
    """A ``checkpoint.pt`` (the old pickle format) is never loaded: unpickling runs code."""
    legacy = workdir / "checkpoint.pt"
    if legacy.exists():
        raise TunelensInputError(
            "pickle checkpoints are never loaded (unpickling a file can run code); tunelens "
            f"checkpoints are {CHECKPOINT}: delete this file or use a fresh --workdir",
            source=str(legacy),
        )


def save_checkpoint(
    path: Path,
    recipe: WorldModelRecipe,
    model: LlamaForCausalLM,
    optimizer: torch.optim.Optimizer,
    step: int,
) -> None:
    """Model, AdamW state and RNG as tensors in one safetensors file; the rest as JSON metadata.

    Written to a temporary file and renamed, so a kill leaves the previous checkpoint.
    """
    tensors: dict[str, torch.Tensor] = {
        f"model.{name}": value.detach().clone().contiguous()
        for name, value in model.state_dict().items()
    }
    state = optimizer.state_dict()
    slots: dict[str, list[str]] = {}
    for index, entry in state["state"].items():
        slots[str(index)] = sorted(entry)
        for key, value in entry.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().clone()
    tensors["torch_rng"] = torch.get_rng_state().clone()
    meta = {
        "format": 1,
        "step": step,
        "recipe": asdict(recipe),
        "param_groups": state["param_groups"],
        "slots": slots,
    }
    with atomic_path(path) as tmp:  # a unique temporary name, removed if the save fails
        save_file(tensors, str(tmp), metadata={_META: json.dumps(meta)})


def load_checkpoint(
    path: Path,
    recipe: WorldModelRecipe,
    model: LlamaForCausalLM,
    optimizer: torch.optim.Optimizer,
) -> int:
    """Restore model, optimizer and RNG from ``path`` (no unpickling); the step to resume at.

    A file that is not a tunelens checkpoint, is cut short or was made with
    another recipe is a TunelensInputError naming it.
    """
    source = str(path)
    try:
        with safe_open(source, framework="pt") as handle:
            raw_meta = (handle.metadata() or {}).get(_META)
        tensors = load_file(source)
        meta = json.loads(raw_meta) if raw_meta is not None else None
    except (SafetensorError, OSError, ValueError) as error:
        raise TunelensInputError(
            f"not a readable tunelens checkpoint ({' '.join(str(error).split())[:200]}); "
            "delete it to start afresh",
            source=source,
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != 1:
        raise TunelensInputError(
            "not a tunelens checkpoint (no checkpoint metadata); delete it to start afresh",
            source=source,
        )
    # Fields added after a checkpoint was written take their defaults.
    saved = {**asdict(WorldModelRecipe()), **meta["recipe"]}
    same = {k: v for k, v in saved.items() if k not in RUNTIME_FIELDS}
    if same != {k: v for k, v in asdict(recipe).items() if k not in RUNTIME_FIELDS}:
        changed = sorted(k for k in same if same[k] != asdict(recipe).get(k))
        raise TunelensInputError(
            f"was made with another recipe (differs in {', '.join(changed)}); use a fresh "
            "--workdir or the same options",
            source=source,
        )
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights, strict=True)
        optimizer_state = {
            "state": {
                int(index): {key: tensors[f"optimizer.{index}.{key}"] for key in keys}
                for index, keys in meta["slots"].items()
            },
            "param_groups": meta["param_groups"],
        }
        optimizer.load_state_dict(optimizer_state)
        torch.set_rng_state(tensors["torch_rng"])
        step = int(meta["step"])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise TunelensInputError(
            f"checkpoint does not fit the model: {' '.join(str(error).split())[:200]}",
            source=source,
        ) from None
    return step


def train_world_model(
    recipe: WorldModelRecipe, workdir: Path, *, progress: bool = True, until: int | None = None
) -> LlamaForCausalLM:
    """Train (or resume) the world model in ``workdir``; returns the model.

    ``until`` stops after that step with a checkpoint (a later call resumes), so
    a long recipe can run in pieces.
    """
    torch.set_num_threads(recipe.threads)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(recipe.seed, recipe.vocabulary)
    model = build_model(recipe, tokenizer)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    start = 0
    ckpt = workdir / CHECKPOINT
    log_path = workdir / "training_log.jsonl"
    refuse_pickle_checkpoint(workdir)
    if ckpt.exists():
        start = load_checkpoint(ckpt, recipe, model, optimizer)
    saved_at = [start]
    interrupt.set_status(
        lambda: f"interrupted: the checkpoint at step {saved_at[0]} is kept; {interrupt.RESUME}"
    )
    batcher = _Batcher(recipe, tokenizer)
    model.train()
    running, t0 = None, time.time()
    with ProgressDisplay(progress) as bar:
        job = bar.add("world model", recipe.steps, completed=start)
        stop = recipe.steps if until is None else min(until, recipe.steps)
        for step in range(start, stop):
            ids, labels = batcher(step)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, step)
            loss = model(
                input_ids=ids, attention_mask=(ids != batcher.pad).long(), labels=labels
            ).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.advance(job, loss=running)
            done = step + 1
            if done % recipe.eval_every == 0 or done == recipe.steps:
                record = {
                    "step": done,
                    "loss": round(running, 4),
                    "lr": learning_rate(recipe, step),
                    "seconds": round(time.time() - t0, 1),
                    **probe_record(model, tokenizer, recipe, batcher.heldout),
                }
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if progress:
                    _log.info("world model: %s", json.dumps(record))
            if done % recipe.checkpoint_every == 0 or done in (recipe.steps, stop):
                save_checkpoint(ckpt, recipe, model, optimizer, done)
                saved_at[0] = done
    return model


def export_world_model(
    model: LlamaForCausalLM, recipe: WorldModelRecipe, workdir: Path, target: Path
) -> None:
    """Save model, tokenizer and training log in Hugging Face format (safetensors)."""
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(recipe.seed, recipe.vocabulary)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    log = workdir / "training_log.jsonl"
    if log.exists():
        (target / "training_log.jsonl").write_text(log.read_text())
