"""`tunelens plan`: what a spec will cost before it runs: cells, tokens, FLOPs, memory, time.

Everything here is an **estimate** for budgeting, not a measurement:

- Work per cell (:mod:`tunelens.runs.costs`): each experiment's
  ``estimate_work(cell, estimate)`` hook counts it (``estimate`` a
  :class:`PlanContext`: the model's token counter, size and kind, the device).
  The shipped experiments (their ``plan`` modules) render a cell's prompts as
  the cell renders them where its tasks are on this machine (the same seeded
  demonstration sets, evaluation items and training pairs), count them with the
  model's own tokenizer (4 characters per token when the model is not here),
  and count calls as they batch them (generation in
  :func:`tunelens.models.predict.token_batches` of those lengths, exactly the
  calls the cell makes: tests/integration/test_plan_work.py). Tasks that are
  not here are sized from the spec's fields times a typical length per example
  (:func:`task_shape`): 8 tokens for the embedded world's tasks, 200 for tasks
  tunelens does not inspect (a Super-NaturalInstructions instance with its
  output is roughly that long). An experiment may instead have an
  ``estimate_tokens(section, cell)`` method (tokens only).
- FLOPs (:mod:`tunelens.measures.flops`, Kaplan et al. 2020, Table 1):
  ``2 * N`` per forward-only token, ``4 * N`` per LoRA training token (the
  frozen base needs no weight gradients) and ``6 * N`` per fully trained
  token, N = the non-embedding parameter count of the model itself, built from
  its ``config.json`` on the meta device (``accelerate.init_empty_weights``: no
  weights read or allocated), or from a table of known architectures when the
  model directory is not on this machine yet (the example specs name
  ``models/Llama-2-7b-hf``). The attention (context) term is left out.
- Time (:func:`tunelens.runs.costs.cell_seconds`, :func:`~tunelens.runs.costs.run_seconds`):
  fixed costs of the run (start-up and imports, study set-up, one load per
  model, results and report), per cell, per call (forward, generate, decoding
  step, optimizer step, tuning set-up, scored sample) at the model's depth,
  weight streaming for models whose weights leave the cache, and FLOPs over
  peak x efficiency. The constants (:data:`tunelens.runs.costs.CPU_COSTS`) are
  calibrated on this 2-core CPU by ``bench/plan_calibration.py``. Peaks are
  dense bf16 tensor-core figures on a GPU (H100 SXM 989 TFLOP/s, A100 312
  TFLOP/s, at ``--mfu``, default 0.4); ``cpu`` measures an fp32 matmul here in
  CPU time (:func:`measure_cpu_flops`) with the threads the run will use
  (:mod:`tunelens.runs.threads`) and uses the calibrated efficiency of the
  model's width unless ``--mfu`` is given.
- Peak memory: weights, plus for training activations of one batch (16-bit
  rule of thumb ~34 bytes per token per hidden unit per layer, without
  recomputation) and, for full fine-tuning, gradients and Adam states
  (16 bytes per parameter in total).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunelens.api import Cell, Experiment
from tunelens.errors import TunelensInputError
from tunelens.io import read_json, read_text
from tunelens.runs.costs import (
    CPU_COSTS,
    GPU_MEMORY_BYTES_PER_S,
    CostModel,
    ModelFacts,
    Seconds,
    TokenCounter,
    Work,
    cell_seconds,
    run_seconds,
    work_flops,
)
from tunelens.spec import Spec

TokenCounts = dict[str, int]  # {"forward": tokens in forward-only passes, "backward": trained}

UNKNOWN_EXAMPLE_TOKENS = 200  # one example (input + output) of a task we cannot inspect
UNKNOWN_DEFINITION_TOKENS = 60
WORLD_EXAMPLE_TOKENS = 8  # "Input: sock\nOutput: left\n\n"
WORLD_DEFINITION_TOKENS = 30
FULL_INSTANCES = 100  # "full" training instances per task: Tk-Instruct's cap
SUPERNI_TASKS = {"train": 756, "test": 119}  # English default split, for absent paths

PEAK_FLOPS = {"h100": 989e12, "a100": 312e12}
DEVICE_MEMORY = {"h100": 80 * 2**30, "a100": 80 * 2**30}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ---------------------------------------------------------------- model sizes


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts and the shapes the memory estimate needs."""

    name: str
    non_embedding: int
    total: int
    hidden: int
    layers: int
    heads: int
    encoder: int  # an encoder-decoder's prompt-token parameters (encoder + cross k/v), else 0
    source: str  # "config.json at ..." or "known architecture ..."


# Configs (the fields the counts need) of architectures the example specs name.
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-2-7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "llama-2-13b": {
        "model_type": "llama",
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "llama-2-70b": {
        "model_type": "llama",
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "t5-large-lm-adapt": {
        "model_type": "t5",
        "d_model": 1024,
        "d_ff": 2816,
        "d_kv": 64,
        "num_heads": 16,
        "num_layers": 24,
        "num_decoder_layers": 24,
        "vocab_size": 32128,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
    },
    "t5-xl-lm-adapt": {
        "model_type": "t5",
        "d_model": 2048,
        "d_ff": 5120,
        "d_kv": 64,
        "num_heads": 32,
        "num_layers": 24,
        "num_decoder_layers": 24,
        "vocab_size": 32128,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
    },
    "t5-large": {
        "model_type": "t5",
        "d_model": 1024,
        "d_ff": 4096,
        "d_kv": 64,
        "num_heads": 16,
        "num_layers": 24,
        "num_decoder_layers": 24,
        "vocab_size": 32128,
        "feed_forward_proj": "relu",
    },
    "gpt2": {
        "model_type": "gpt2",
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "vocab_size": 50257,
        "n_positions": 1024,
    },
    # The embedded world models' recipes (tunelens.models.world_model.SIZES), vocabulary
    # rounded up; world-it has world's shape.
    "world-small": {
        "model_type": "llama",
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 1024,
        "tie_word_embeddings": True,
    },
    "world": {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 1024,
        "tie_word_embeddings": True,
    },
}
KNOWN_ARCHITECTURES["world-it"] = KNOWN_ARCHITECTURES["world"]


Sizes = tuple[int, int, int, int, int, int]  # non-embedding, total, hidden, layers, heads, encoder


def count_parameters(config: Mapping[str, Any]) -> Sizes:
    """(non-embedding, total, hidden, layers, heads, encoder) from a Hugging Face config dict
    (encoder: what an encoder-decoder runs per prompt token -- its encoder and the decoder's
    cross-attention keys and values -- else 0)."""
    kind = str(config.get("model_type", ""))
    vocab = int(config.get("vocab_size", 32000))
    if kind == "t5" or "d_model" in config:
        h, ff, d_kv = int(config["d_model"]), int(config["d_ff"]), int(config.get("d_kv", 64))
        heads = int(config.get("num_heads", 8))
        enc = int(config.get("num_layers", 6))
        dec = int(config.get("num_decoder_layers") or enc)
        gated = str(config.get("feed_forward_proj", "relu")).startswith("gated")
        attn = 4 * h * heads * d_kv
        ffn = (3 if gated else 2) * h * ff
        buckets = int(config.get("relative_attention_num_buckets", 32)) * heads * 2
        body = enc * (attn + ffn + 2 * h) + dec * (2 * attn + ffn + 3 * h) + 2 * h
        # a prompt token's share: the encoder, and the decoder's cross-attention keys and values
        encoder = enc * (attn + ffn + 2 * h) + h + dec * attn // 2
        tied = bool(config.get("tie_word_embeddings", True))
        embed = vocab * h * (1 if tied else 2) + buckets  # relative position bias: embeddings
        return body, body + embed, h, enc + dec, heads, encoder
    if kind == "gpt2" or "n_embd" in config:
        h, n_layers = int(config["n_embd"]), int(config["n_layer"])
        inner = int(config.get("n_inner") or 4 * h)
        per_layer = 4 * h * h + 4 * h + 2 * h * inner + inner + h + 4 * h
        body = n_layers * per_layer + 2 * h
        embed = vocab * h + int(config.get("n_positions", 1024)) * h
        return body, body + embed, h, n_layers, int(config.get("n_head", 12)), 0
    h = int(config["hidden_size"])
    n_layers = int(config["num_hidden_layers"])
    heads = int(config.get("num_attention_heads", 1))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or h // heads)
    inter = int(config.get("intermediate_size") or 4 * h)
    attn = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim
    if kind == "qwen2":  # biases on the q, k and v projections
        attn += heads * head_dim + 2 * kv_heads * head_dim
    mlp = (2 if kind in ("gpt_neox", "opt", "phi", "falcon") else 3) * h * inter
    body = n_layers * (attn + mlp + 2 * h) + h
    tied = bool(config.get("tie_word_embeddings", False))
    embed = vocab * h * (1 if tied else 2)
    return body, body + embed, h, n_layers, heads, 0


def known_architecture(name: str) -> str | None:
    """The table entry a model name or path refers to ('models/Llama-2-7b-hf' -> 'llama-2-7b')."""
    base = Path(name.rstrip("/")).name.lower().replace("_", "-")
    for key in sorted(KNOWN_ARCHITECTURES, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(key)}($|[^a-z0-9])", base):
            return key
    return None


def sizes_from_model(directory: Path) -> Sizes:
    """(non-embedding, total, hidden, layers, heads, encoder) of the model in ``directory``,
    built empty.

    The model is built from its config with ``accelerate.init_empty_weights``
    (parameters on the meta device: shapes, no memory, no weights read) and its
    parameters counted by :func:`sizes_from_model_object`.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(directory, local_files_only=True)  # no remote code
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config)
    model.tie_weights()  # on the meta device from_config leaves tied weights apart
    return sizes_from_model_object(model)


def sizes_from_model_object(model: Any) -> Sizes:
    """(non-embedding, total, hidden, layers, heads, encoder) of a built transformers model.

    Tied weights count once; token, position and relative-position embeddings
    and an untied output head are the embedding part. Layers count the
    encoder's and the decoder's blocks of an encoder-decoder; ``encoder`` is
    what a prompt token runs through there: the encoder's non-embedding
    parameters and the decoder's cross-attention keys and values
    (:func:`cross_attention_keys_values`; 0 for a decoder-only model).
    """
    import torch

    from tunelens.models.layers import block_counts

    config = model.config
    total = sum(p.numel() for p in model.parameters())  # shared (tied) parameters once
    embedding: dict[int, int] = {}
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    head = model.get_output_embeddings()
    for module in [*modules, *([head] if head is not None else [])]:
        for param in module.parameters(recurse=False):
            embedding[id(param)] = param.numel()
    text: Any = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = sum(block_counts(config))
    encoder = 0
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        own = {id(p): p.numel() for p in model.get_encoder().parameters()}
        own.update({id(p): p.numel() for p in cross_attention_keys_values(model)})
        encoder = sum(n for key, n in own.items() if key not in embedding)
    return (
        total - sum(embedding.values()),
        total,
        int(text.hidden_size),
        layers,
        int(getattr(text, "num_attention_heads", 1) or 1),
        encoder,
    )


CROSS_ATTENTION = ("EncDecAttention", "encoder_attn", "crossattention", "cross_attn")
KEY_VALUE = ("k", "v", "k_proj", "v_proj", "key", "value")


def cross_attention_keys_values(model: Any) -> list[Any]:
    """The parameters of an encoder-decoder's cross-attention key and value projections
    (T5's ``EncDecAttention.k/v``, BART's ``encoder_attn.k_proj/v_proj``): they run once per
    prompt token, on the encoder's output, so a plan prices them with the encoder."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None:
        return []
    found = []
    for name, module in decoder.named_modules():
        parent, _, leaf = name.rpartition(".")
        if leaf in KEY_VALUE and any(tag in parent for tag in CROSS_ATTENTION):
            found += list(module.parameters())
    return found


def model_size(name_or_path: str) -> ModelSize:
    """Sizes from the model itself (built empty, no weights), else from the known table.

    A directory with a config.json is sized by :func:`sizes_from_model`; where
    transformers cannot build it (an architecture this transformers lacks), the
    config's fields are counted by :func:`count_parameters`. A name with no
    directory on this machine is looked up in :data:`KNOWN_ARCHITECTURES`.
    """
    from tunelens.models.paths import is_world_model, world_model_dir

    if is_world_model(name_or_path):
        config_path = world_model_dir(name_or_path) / "config.json"
    else:
        config_path = Path(name_or_path).expanduser() / "config.json"
    if config_path.is_file():
        config = read_json(config_path, what="model config")
        try:
            counts = sizes_from_model(config_path.parent)
            how = "built empty from"
        except Exception:  # noqa: BLE001 - an unknown architecture: count its config's fields
            try:
                counts = count_parameters(config)
                how = "counted from"
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise TunelensInputError(
                    f"cannot read the model's sizes: transformers cannot build it and its "
                    f"config lacks {error}",
                    source=str(config_path),
                ) from None
        return ModelSize(
            name_or_path,
            *counts,
            source=f"config.json at {config_path.parent} ({how} the config, no weights)",
        )
    key = known_architecture(name_or_path)
    if key is None:
        raise TunelensInputError(
            "cannot size the model: no config.json there and not a known architecture "
            f"({', '.join(KNOWN_ARCHITECTURES)})",
            source=name_or_path,
        )
    return ModelSize(
        name_or_path,
        *count_parameters(KNOWN_ARCHITECTURES[key]),
        source=f"known architecture {key}",
    )


# ---------------------------------------------------------------- task shapes


@dataclass(frozen=True)
class TaskShape:
    """What token estimates need to know about a task set."""

    tasks: int
    example_tokens: int
    definition_tokens: int
    instances_per_task: float  # mean available instances (for "full")
    source: str
    exact: bool = False  # counted from the tasks themselves (then instances cap requests)


@lru_cache(maxsize=64)
def task_shape(ref: str, role: str = "tasks") -> TaskShape:
    """Count tasks without reading them (except the embedded world, which is cheap)."""
    pieces = [p.strip() for p in ref.split(",") if p.strip()]
    if pieces and all(p.startswith("world:") for p in pieces):
        from tunelens.tasks.sets import load_task_set

        tasks = load_task_set(ref)
        mean = sum(len(t.instances) for t in tasks) / max(1, len(tasks))
        return TaskShape(
            len(tasks),
            WORLD_EXAMPLE_TOKENS,
            WORLD_DEFINITION_TOKENS,
            mean,
            "embedded world",
            exact=True,
        )
    count, guessed = 0, False
    for piece in pieces:
        path = Path(piece).expanduser()
        if path.is_file() and path.name.endswith("_tasks.txt"):
            lines = read_text(path, allow_empty=True).splitlines()
            count += sum(1 for line in lines if line.strip())
        elif path.is_dir():
            count += sum(1 for p in path.rglob("*") if p.suffix in (".json", ".jsonl"))
        elif path.is_file():
            count += 1
        else:
            count += SUPERNI_TASKS.get(role, 1)
            guessed = True
    source = (
        "not on this machine: Super-NaturalInstructions split sizes assumed"
        if guessed
        else "task files counted"
    )
    return TaskShape(
        max(1, count), UNKNOWN_EXAMPLE_TOKENS, UNKNOWN_DEFINITION_TOKENS, FULL_INSTANCES, source
    )


# ---------------------------------------------------------------- what experiments are given


@dataclass(frozen=True)
class PlanContext:
    """What an experiment's ``estimate_work(cell, estimate)`` hook is given to count a cell:
    the model's token counter, its size, its kind ('causal' or 'seq2seq') and the device
    whose batch sizes the cells will use ('cpu' or 'cuda')."""

    counter: TokenCounter
    size: ModelSize
    kind: str = "causal"
    device: str = "cpu"


class PlanPrompts(list[str]):
    """What an experiment's ``plan_prompts`` hook may return: the prompts, with the
    ``models`` whose context they must fit and the spec ``key`` a prompt too long names.
    A plain list is checked against the models of the section's cells, under the
    experiment's name."""

    def __init__(
        self, prompts: Iterable[str] = (), *, models: Sequence[str] = (), key: str = ""
    ) -> None:
        super().__init__(prompts)
        self.models = list(models)
        self.key = key


def _ask(experiment: Any, hook: str, *args: Any) -> Any:
    """The experiment's answer to ``hook``; None where it has no such method (a duck-typed
    experiment of the tests need not inherit :class:`~tunelens.api.Experiment`)."""
    method = getattr(experiment, hook, None)
    return method(*args) if callable(method) else None


def experiment_work(experiment: Any, cell: Cell, estimate: PlanContext) -> Work:
    """The cell's work as its experiment's ``estimate_work`` hook counts it; an experiment
    without an estimate counts nothing but its cell."""
    work = _ask(experiment, "estimate_work", cell, estimate)
    return work if work is not None else Work()


def estimate_work(
    cell: Cell, counter: TokenCounter, size: ModelSize, kind: str = "causal", device: str = "cpu"
) -> Work:
    """A cell's work as the registered experiment of its name estimates it, batched as on
    ``device`` (:func:`experiment_work`; for callers that hold a cell but no experiment)."""
    from tunelens.api import get_experiments

    experiment = get_experiments().get(cell.experiment)
    return experiment_work(experiment, cell, PlanContext(counter, size, kind, device))


# ---------------------------------------------------------------- memory and plan


def _training_shape(experiment: Any, cell: Cell) -> tuple[int, int]:
    """(batch size, tokens per sequence) of the cell's training batches: the experiment's
    ``training_shape`` hook, else a generic guess (``tuning.batch_size`` rows, at most
    ``k``, each one example, with a definition, of the cell's ``tasks``)."""
    shape = _ask(experiment, "training_shape", cell)
    if shape is not None:
        return int(shape[0]), int(shape[1])
    p = cell.params
    batch = int((p.get("tuning") or {}).get("batch_size", 8))
    tasks = task_shape(str(p.get("tasks", "")))
    return min(batch, int(p.get("k", 8))), tasks.definition_tokens + tasks.example_tokens


def peak_memory(
    size: ModelSize, dtype: str, *, training: bool, full: bool, batch: int, seq: int
) -> int:
    """Bytes: weights; for training also activations, and grads + Adam for full tuning."""
    weights = size.total * BYTES.get(dtype, 4)
    if not training:
        return int(weights * 1.1)  # + KV cache and workspace, roughly
    scale = BYTES.get(dtype, 4) / 2
    activations = size.layers * batch * seq * (34 * size.hidden + 5 * size.heads * seq) * scale
    states = size.total * 16 - weights if full else 0
    return int(weights + states + activations)


@dataclass
class ExperimentPlan:
    """Totals for one experiment's cells."""

    experiment: str
    models: list[str]
    cells: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    flops: float = 0.0
    peak_memory_bytes: int = 0
    seconds: float = 0.0  # the cells' time (the run's fixed costs are Plan.fixed)
    work: Work = field(default_factory=Work)
    time: Seconds = field(default_factory=Seconds)
    exact_cells: int = 0  # cells counted from their own prompts (tasks on this machine)
    notes: list[str] = field(default_factory=list)

    def add(self, work: Work, seconds: Seconds, flops: float, memory: int) -> None:
        """One more cell: its work, time, FLOPs and peak memory."""
        self.cells += 1
        self.exact_cells += int(work.exact)
        self.forward_tokens += work.all_forward_tokens
        self.backward_tokens += work.all_training_tokens
        self.flops += flops
        self.peak_memory_bytes = max(self.peak_memory_bytes, memory)
        self.seconds += seconds.total
        self.work.add(work)
        self.time.add(seconds)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("work", "time")}
        out["work"] = self.work.to_json()
        out["time"] = self.time.to_json()
        return out


@dataclass
class Plan:
    """A whole study's estimate; ``experiments`` in run order, ``fixed`` the run's own costs."""

    accelerator: str
    peak_flops: float
    mfu: float | None  # None: the calibrated CPU efficiency curve
    experiments: list[ExperimentPlan]
    model_sizes: dict[str, dict[str, Any]]
    device_memory_bytes: int | None
    fixed: Seconds = field(default_factory=Seconds)
    costs: str = ""
    # Cells the local executor runs at once on this machine (``tunelens run``'s automatic
    # count; 1 on an accelerator, whose cells run one at a time).
    workers: int = 1

    @property
    def cells(self) -> int:
        return sum(e.cells for e in self.experiments)

    @property
    def forward_tokens(self) -> int:
        return sum(e.forward_tokens for e in self.experiments)

    @property
    def backward_tokens(self) -> int:
        return sum(e.backward_tokens for e in self.experiments)

    @property
    def flops(self) -> float:
        return sum(e.flops for e in self.experiments)

    @property
    def peak_memory_bytes(self) -> int:
        return max((e.peak_memory_bytes for e in self.experiments), default=0)

    @property
    def seconds(self) -> float:
        """Wall time of the whole run: every cell plus start-up, loads and report."""
        return sum(e.seconds for e in self.experiments) + self.fixed.total

    @property
    def seconds_with_workers(self) -> float:
        """Wall time with the cells spread over ``workers`` processes: the cells' time
        divided among them (at least the longest experiment's mean cell), plus the run's own
        costs. An estimate that assumes the cells balance."""
        cells = sum(e.seconds for e in self.experiments)
        if self.workers <= 1 or not self.cells:
            return self.seconds
        longest = max(e.seconds / e.cells for e in self.experiments if e.cells)
        return max(cells / self.workers, longest) + self.fixed.total

    @property
    def time(self) -> Seconds:
        total = Seconds()
        for e in self.experiments:
            total.add(e.time)
        total.add(self.fixed)
        return total

    def to_json(self) -> dict[str, Any]:
        totals = {
            k: getattr(self, k)
            for k in (
                "cells",
                "forward_tokens",
                "backward_tokens",
                "flops",
                "peak_memory_bytes",
                "seconds",
                "seconds_with_workers",
            )
        }
        return {
            "accelerator": self.accelerator,
            "peak_flops": self.peak_flops,
            "mfu": self.mfu,
            "device_memory_bytes": self.device_memory_bytes,
            "experiments": [e.to_json() for e in self.experiments],
            "model_sizes": self.model_sizes,
            "fixed": self.fixed.to_json(),
            "time": self.time.to_json(),
            "costs": self.costs,
            "workers": self.workers,
            "total": totals,
        }


@lru_cache(maxsize=8)
def measure_cpu_flops(threads: int | None = None, n: int = 2048, repeats: int = 3) -> float:
    """fp32 FLOP/s of this machine's CPU with ``threads`` torch threads (None: torch's current).

    An ``n x n`` by ``n x n`` ``torch.mm`` timed in CPU time
    (``time.process_time``, which sums the threads), best of ``repeats`` after
    a warm-up: FLOPs per CPU-second times the threads. CPU time does not count
    the time other processes hold the cores, so the figure is the peak of an
    idle machine even on a shared one (on this 2-core machine at load 7:
    91-95 GFLOP/s on one thread over repeated calls, where wall-clock timing
    gave 23-31; the old 0.3 s wall-clock loop of 512^3 matmuls moved +-30%
    between two calls). Cached per argument tuple.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up
        best = math.inf
        for _ in range(repeats):
            start = time.process_time()
            torch.mm(a, b, out=out)
            best = min(best, time.process_time() - start)
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
    return 2 * n**3 / max(best, 1e-9) * used


def accelerator_peak(gpu: str, threads: int | None = None) -> float:
    """Peak FLOP/s of an accelerator name, measuring the CPU (with ``threads``) for 'cpu'."""
    if gpu == "cpu":
        return measure_cpu_flops(threads)
    if gpu not in PEAK_FLOPS:
        raise TunelensInputError(
            f"unknown accelerator {gpu!r}; expected one of {', '.join([*PEAK_FLOPS, 'cpu'])}",
            where="--gpu",
        )
    return PEAK_FLOPS[gpu]


def model_facts(size: ModelSize, bytes_per_parameter: int = 4) -> ModelFacts:
    """What pricing needs of a model; the LM head is taken as half the embedding part
    (untied input and output matrices; a tied model's one matrix counts half); T5's
    relative position bias from its config (or the known table)."""
    return ModelFacts(
        size.non_embedding,
        size.total,
        size.hidden,
        size.layers,
        bytes_per_parameter,
        heads=size.heads,
        head=(size.total - size.non_embedding) // 2,
        encoder=size.encoder,
        relative_attention=_relative_attention(size.name),
        # an encoder-decoder's long attention is its encoder's (half of its blocks)
        attention_layers=size.layers // 2 if _model_kind(size.name) == "seq2seq" else 0,
    )


def _relative_attention(name: str) -> bool:
    from tunelens.models.paths import is_world_model

    if is_world_model(name):
        return False
    path = Path(name).expanduser() / "config.json"
    if path.is_file():
        return "relative_attention_num_buckets" in read_json(path, what="model config")
    key = known_architecture(name)
    return key is not None and key.startswith("t5")


def _cell_model(cell: Cell) -> str:
    return str(cell.params.get("model", "world"))


def _model_kind(name: str) -> str:
    """'seq2seq' for an encoder-decoder (from its config.json or the known table), else 'causal'."""
    from tunelens.models.paths import is_world_model

    if is_world_model(name):
        return "causal"
    path = Path(name).expanduser() / "config.json"
    if path.is_file():
        config = read_json(path, what="model config")
        return "seq2seq" if config.get("is_encoder_decoder") else "causal"
    key = known_architecture(name)
    return "seq2seq" if key is not None and key.startswith("t5") else "causal"


def _counter(name: str, cache: dict[str, TokenCounter]) -> TokenCounter:
    """The model's tokenizer where the model is here, else the characters rule."""
    if name not in cache:
        tokenizer = None
        from tunelens.models.paths import is_world_model

        if is_world_model(name) or (Path(name).expanduser() / "config.json").is_file():
            try:
                tokenizer = _tokenizer(name)
            except Exception:  # noqa: BLE001 - no usable tokenizer: count characters
                tokenizer = None
        cache[name] = TokenCounter(tokenizer)
    return cache[name]


@dataclass
class _Pricer:
    """Prices a study's cells: the accelerator and cost model, and per model (each found
    once, in the order the cells name them) its size, peak FLOP/s and :class:`PlanContext`."""

    gpu: str
    efficiency: float | None  # None: the calibrated CPU curves
    costs: CostModel
    dtype: Any  # the study's dtype, for cells that name none
    peak_flops: float | None = None  # replaces the accelerator's peak (tests)
    sizes: dict[str, ModelSize] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    contexts: dict[str, PlanContext] = field(default_factory=dict)
    counters: dict[str, TokenCounter] = field(default_factory=dict)

    def size(self, model: str) -> ModelSize:
        """The model's size; its peak (measured with the threads it will run on) beside it."""
        if model not in self.sizes:
            from tunelens.runs.threads import threads_for

            self.sizes[model] = model_size(model)
            threads = threads_for(self.sizes[model].total)
            peak = self.peak_flops
            self.peaks[model] = peak if peak is not None else accelerator_peak(self.gpu, threads)
        return self.sizes[model]

    def context(self, model: str) -> PlanContext:
        """What an experiment counts the model's cells with (its tokenizer loaded once)."""
        if model not in self.contexts:
            counter, kind = _counter(model, self.counters), _model_kind(model)
            device = "cpu" if self.gpu == "cpu" else "cuda"
            self.contexts[model] = PlanContext(counter, self.size(model), kind, device)
        return self.contexts[model]

    def work(self, experiment: Any, section: Any, cell: Cell) -> Work:
        """The cell's work: an ``estimate_tokens(section, cell)`` method (tokens only) where the
        experiment has one, else its ``estimate_work`` hook."""
        tokens = _ask(experiment, "estimate_tokens", section, cell)
        if tokens is not None:
            forward, backward = int(tokens.get("forward", 0)), int(tokens.get("backward", 0))
            return Work(forward_tokens=forward, training_tokens=backward)
        return experiment_work(experiment, cell, self.context(_cell_model(cell)))

    def plan(self, name: str, experiment: Any, section: Any, cells: list[Cell]) -> ExperimentPlan:
        """Every cell of one section priced: work, time, FLOPs and peak memory."""
        plan = ExperimentPlan(name, sorted({_cell_model(c) for c in cells}))
        overhead = float(getattr(experiment, "cell_overhead_s", 0.0))  # beyond counted work
        bandwidth = GPU_MEMORY_BYTES_PER_S.get(self.gpu)
        for cell in cells:
            model = _cell_model(cell)
            size = self.size(model)
            work = self.work(experiment, section, cell)
            dtype = str(cell.params.get("dtype") or self.dtype)
            facts = model_facts(size, BYTES.get(dtype, 4))
            seconds = cell_seconds(
                name,
                work,
                facts,
                self.costs,
                peak_flops=self.peaks[model],
                efficiency=self.efficiency,
                memory_bytes_per_s=bandwidth,
                cell_s=overhead,
            )
            memory = _cell_memory(experiment, cell, size, dtype, work)
            plan.add(work, seconds, work_flops(work, facts), memory)
        return plan


def _cell_memory(experiment: Any, cell: Cell, size: ModelSize, dtype: str, work: Work) -> int:
    """Peak memory of one cell: its weights, and for a cell that trains one batch of its
    :func:`_training_shape` (with gradients and Adam states under full tuning)."""
    training = work.all_training_tokens > 0
    batch, seq = _training_shape(experiment, cell) if training else (0, 0)
    full = (cell.params.get("tuning") or {}).get("method") == "full"
    return peak_memory(size, dtype, training=training, full=full, batch=batch, seq=seq)


def _checked_cells(
    spec: Spec, experiments: Mapping[str, Experiment], source: str | None
) -> list[tuple[str, Any, list[Cell]]]:
    """The spec's cells per section, once its tasks (those on this machine) have loaded and
    passed the checks ``tunelens run`` makes and the prompt-length check."""
    from tunelens.api import StudyInputs
    from tunelens.runs.preflight import preflight
    from tunelens.runs.study import plan_cells

    inputs = StudyInputs(strict=False, allow_missing=spec.allow_missing_tasks)
    planned = plan_cells(spec, experiments, inputs)
    sections = [(experiments[name], section) for name, section, _ in planned]
    preflight(sections, inputs, source)
    cell_models = [sorted({_cell_model(c) for c in cells}) for _, _, cells in planned]
    check_prompt_lengths(sections, inputs, source, cell_models)
    return planned


def plan_study(
    spec: Spec,
    *,
    gpu: str = "h100",
    mfu: float | None = None,
    experiments: Mapping[str, Experiment] | None = None,
    peak_flops: float | None = None,
    source: str | None = None,
    costs: CostModel = CPU_COSTS,
) -> Plan:
    """Estimate every experiment of ``spec``: cells, tokens, FLOPs, peak memory, time.

    First the spec's tasks load (those on this machine; a task set that is here
    but broken is an error, ``spec.allow_missing_tasks`` skips split entries
    without a file) and are checked as ``tunelens run`` checks them (each
    experiment's ``preflight`` hook, :mod:`tunelens.runs.preflight`), then the
    longest prompts against the context of every local model
    (:func:`check_prompt_lengths`). A failure is one :class:`TunelensInputError`
    naming ``source`` (the spec) and the key.

    Time: each cell's work (the experiment's ``estimate_work`` hook, or its own
    ``estimate_tokens(section, cell)``, tokens only) priced by
    :func:`tunelens.runs.costs.cell_seconds`, plus the run's fixed costs (with
    the conditions each experiment's ``plan_conditions`` reports). ``mfu`` is
    the share of the peak the FLOPs run at: None means the calibrated CPU curve
    on ``cpu`` and 0.4 on a GPU. ``peak_flops`` replaces the accelerator's peak
    (tests).
    """
    if mfu is not None and not 0 < mfu <= 1:
        raise TunelensInputError(f"MFU must lie in (0, 1], got {mfu}", where="--mfu")
    if experiments is None:
        from tunelens.api import get_experiments

        experiments = get_experiments()
    planned = _checked_cells(spec, experiments, source)
    efficiency = mfu if mfu is not None or gpu == "cpu" else 0.4
    pricer = _Pricer(gpu, efficiency, costs, spec.dtype, peak_flops)
    plans = [pricer.plan(name, experiments[name], sec, cells) for name, sec, cells in planned]
    conditions = sum(
        int(_ask(experiments[name], "plan_conditions", cells) or 0) for name, _, cells in planned
    )
    model_bytes = [size.total * BYTES.get(str(spec.dtype), 4) for size in pricer.sizes.values()]
    return Plan(
        accelerator=gpu,
        peak_flops=next(iter(pricer.peaks.values()), peak_flops or 0.0),
        mfu=efficiency,
        experiments=plans,
        model_sizes={k: asdict(v) for k, v in pricer.sizes.items()},
        device_memory_bytes=DEVICE_MEMORY.get(gpu),
        fixed=run_seconds(costs, model_bytes, conditions),
        costs=costs.source,
        workers=_local_workers(gpu, experiments, planned),
    )


def _local_workers(
    gpu: str, experiments: Mapping[str, Experiment], planned: list[tuple[str, Any, list[Cell]]]
) -> int:
    """How many of the plan's cells ``tunelens run`` would run at once here (the local
    executor's automatic count); 1 when the plan prices an accelerator."""
    if gpu != "cpu":
        return 1
    from tunelens.runs.executors import Job, automatic_workers

    jobs = [Job(experiments[name], cell) for name, _, cells in planned for cell in cells]
    return max(1, min(automatic_workers(jobs), len(jobs))) if jobs else 1


# ---------------------------------------------------------------- prompt length


def model_context(name: str) -> tuple[int, Path] | None:
    """(positions, config path) of a local model with a fixed context; None otherwise
    (not on this machine, or relative positions such as T5's)."""
    from tunelens.models.paths import is_world_model, world_model_dir

    directory = world_model_dir(name) if is_world_model(name) else Path(name).expanduser()
    config_path = directory / "config.json"
    if not config_path.is_file():
        return None
    config = read_json(config_path, what="model config")
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value, config_path
    return None


def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from tunelens.models.paths import is_world_model, world_model_dir

    if is_world_model(name):
        return AutoTokenizer.from_pretrained(str(world_model_dir(name)), local_files_only=True)
    # Never a download, never remote code: a name that is no local directory fails here.
    return AutoTokenizer.from_pretrained(str(Path(name).expanduser()), local_files_only=True)


def _longest(tokenizer: Any, prompts: list[str]) -> tuple[int, str]:
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    return lengths[i], prompts[i]


def check_prompt_lengths(
    sections: Sequence[tuple[Experiment, Any]],
    inputs: Any,
    source: str | None,
    cell_models: Sequence[Sequence[str]] = (),
) -> None:
    """The longest prompt of each section against each local model's context (exit 2 if over).

    The prompts are each experiment's ``plan_prompts`` hook (a :class:`PlanPrompts` names
    the models and the spec key; a plain list is checked against ``cell_models``, the
    models of that section's cells, under the experiment's name). Models not on this
    machine, and models without a fixed context (T5), are not checked.
    """
    for i, (experiment, section) in enumerate(sections):
        prompts = _ask(experiment, "plan_prompts", section, inputs)
        if not prompts:
            continue
        if isinstance(prompts, PlanPrompts):
            models, key = prompts.models, prompts.key or experiment.name
        else:
            models = list(cell_models[i]) if i < len(cell_models) else []
            key = experiment.name
        for model in models:
            found = model_context(model)
            if found is None:
                continue
            context, config_path = found
            length, _ = _longest(_tokenizer(model), list(prompts))
            if length > context:
                raise TunelensInputError(
                    f"the longest prompt is {length} tokens, more than the {context} positions "
                    f"of model {model} ({config_path}); lower it or use a longer-context model",
                    source=source,
                    where=key,
                )
