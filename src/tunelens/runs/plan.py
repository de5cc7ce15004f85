"""`tunelens plan`: what a spec will cost before it runs: cells, tokens, FLOPs, memory, time.

Everything here is an **estimate** for budgeting, not a measurement:

- Token counts come from the spec's fields (k, n_pairs, epochs, instances per
  task, evaluation instances, ...) times a typical length per example: 8 tokens
  for the embedded world's tasks, 200 for tasks tunelens does not inspect (a
  Super-NaturalInstructions instance with its output is roughly that long).
  Training tokens are counted without padding; ICL prompts without reusing the
  shared demonstration prefix (an upper bound). An experiment may give better
  numbers by having an ``estimate_tokens(section, cell)`` method (the hook).
- FLOPs (:mod:`tunelens.measures.flops`, Kaplan et al. 2020, Table 1):
  ``2 * N`` per forward-only token and ``6 * N`` per training token
  (forward + backward), N = the non-embedding parameter count of the model
  itself, built from its ``config.json`` on the meta device
  (``accelerate.init_empty_weights``: no weights read or allocated), or from a
  table of known
  architectures when the model directory is not on this machine yet (the
  example specs name ``models/Llama-2-7b-hf``). The token counts are totals
  over sequences of estimated length, so the attention (context) term is left
  out. LoRA saves the weight gradients (~4N rather than 6N); the estimate
  keeps 6N.
- Time: FLOPs / (accelerator peak * MFU). Peaks are dense bf16 tensor-core
  figures (H100 SXM 989 TFLOP/s, A100 312 TFLOP/s); ``cpu`` measures a quick
  fp32 matmul on this machine.
- Peak memory: weights, plus for training activations of one batch (16-bit
  rule of thumb ~34 bytes per token per hidden unit per layer, without
  recomputation) and, for full fine-tuning, gradients and Adam states
  (16 bytes per parameter in total).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunelens.api import Cell, Experiment
from tunelens.errors import TunelensInputError
from tunelens.io import read_json, read_text
from tunelens.measures.flops import ModelShape, forward_flops, training_flops
from tunelens.spec import Spec

TokenCounts = dict[str, int]  # {"forward": tokens in forward-only passes, "backward": trained}
TokenEstimator = Callable[[Any, Cell], TokenCounts]

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
    # The embedded world model's recipe (tunelens.models.world_model), vocabulary rounded up.
    "world": {
        "model_type": "llama",
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 1024,
        "tie_word_embeddings": True,
    },
}


def count_parameters(config: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """(non-embedding, total, hidden, layers, heads) from a Hugging Face config dict."""
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
        body = enc * (attn + ffn + 2 * h) + dec * (2 * attn + ffn + 3 * h) + 2 * h + buckets
        tied = bool(config.get("tie_word_embeddings", True))
        embed = vocab * h * (1 if tied else 2)
        return body, body + embed, h, enc + dec, heads
    if kind == "gpt2" or "n_embd" in config:
        h, n_layers = int(config["n_embd"]), int(config["n_layer"])
        inner = int(config.get("n_inner") or 4 * h)
        per_layer = 4 * h * h + 4 * h + 2 * h * inner + inner + h + 4 * h
        body = n_layers * per_layer + 2 * h
        embed = vocab * h + int(config.get("n_positions", 1024)) * h
        return body, body + embed, h, n_layers, int(config.get("n_head", 12))
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
    return body, body + embed, h, n_layers, heads


def known_architecture(name: str) -> str | None:
    """The table entry a model name or path refers to ('models/Llama-2-7b-hf' -> 'llama-2-7b')."""
    base = Path(name.rstrip("/")).name.lower().replace("_", "-")
    for key in sorted(KNOWN_ARCHITECTURES, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(key)}($|[^a-z0-9])", base):
            return key
    return None


def sizes_from_model(directory: Path) -> tuple[int, int, int, int, int]:
    """(non-embedding, total, hidden, layers, heads) of the model in ``directory``, built empty.

    The model is built from its config with ``accelerate.init_empty_weights``
    (parameters on the meta device: shapes, no memory, no weights read) and its
    parameters counted: tied weights once; token, position and relative-position
    embeddings and an untied output head are the embedding part. Layers count
    the encoder's and the decoder's blocks of an encoder-decoder.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from tunelens.models.layers import block_counts

    config = AutoConfig.from_pretrained(directory, local_files_only=True)  # no remote code
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config)
    model.tie_weights()  # on the meta device from_config leaves tied weights apart
    total = sum(p.numel() for p in model.parameters())  # shared (tied) parameters once
    embedding: dict[int, int] = {}
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    head = model.get_output_embeddings()
    for module in [*modules, *([head] if head is not None else [])]:
        for param in module.parameters(recurse=False):
            embedding[id(param)] = param.numel()
    text: Any = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = sum(block_counts(config))
    return (
        total - sum(embedding.values()),
        total,
        int(text.hidden_size),
        layers,
        int(getattr(text, "num_attention_heads", 1) or 1),
    )


def model_size(name_or_path: str) -> ModelSize:
    """Sizes from the model itself (built empty, no weights), else from the known table.

    A directory with a config.json is sized by :func:`sizes_from_model`; where
    transformers cannot build it (an architecture this transformers lacks), the
    config's fields are counted by :func:`count_parameters`. A name with no
    directory on this machine is looked up in :data:`KNOWN_ARCHITECTURES`.
    """
    if name_or_path == "world":
        from tunelens.models.paths import world_model_dir

        config_path = world_model_dir() / "config.json"
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


# ---------------------------------------------------------------- token estimators


def _capped(tokens: int, steps: int | None, batch: int, per_example: int, runs: int = 1) -> int:
    """Training tokens, limited by ``max_steps`` when the spec sets one."""
    return tokens if steps is None else min(tokens, runs * steps * batch * per_example)


def convergence_tokens(section: Any, cell: Cell) -> TokenCounts:
    """Per (demonstration set, anchor) pair: anchor, ICL and IT passes; tune each set."""
    p = cell.params
    shape = task_shape(str(p.get("tasks", getattr(section, "tasks", ""))))
    e = shape.example_tokens
    d = shape.definition_tokens if p.get("definition") else 0
    k, n_pairs = int(p.get("k", 8)), int(p.get("n_pairs", 30))
    n_sets = math.ceil(n_pairs / int(p.get("anchors_per_set", 1)))
    query = d + e
    forward = n_pairs * (query + (k * e + query) + query)
    tuning = p.get("tuning") or {}
    epochs, batch = int(tuning.get("epochs", 10)), int(tuning.get("batch_size", 8))
    steps_per_set = None
    if tuning.get("max_steps"):
        steps_per_set = int(tuning["max_steps"])
    backward = _capped(n_sets * epochs * k * e, steps_per_set, batch, e, n_sets)
    return {"forward": forward, "backward": backward}


def audit_tokens(section: Any, cell: Cell) -> TokenCounts:
    """Multi-task tuning on the training tasks, then zero-shot scoring of held-out tasks."""
    p = cell.params
    if p.get("baseline") in ("random", "copy_input", "copy_demo"):
        return {"forward": 0, "backward": 0}
    test = task_shape(str(p.get("test", "")), "test")
    n_pos = int(p.get("n_positive", 2))
    evals = test.tasks * int(p.get("eval_instances_per_task", 100))
    forward = 0
    for encoding in p.get("eval_encodings") or ["definition_examples"]:  # one pass each
        shots = n_pos if encoding == "definition_examples" else 0
        prompt = test.definition_tokens + shots * test.example_tokens + test.example_tokens
        forward += evals * (prompt + int(p.get("max_new_tokens", 8)))
    if "baseline" in p:
        return {"forward": forward, "backward": 0}
    train = task_shape(str(p.get("train", "")), "train")
    n = p.get("instances_per_task", 5)
    per_task = train.instances_per_task if n == "full" else float(n)
    if train.exact:
        per_task = min(per_task, train.instances_per_task)
    example = train.example_tokens * (1 + (n_pos if p.get("examples") != "none" else 0))
    example += train.definition_tokens if p.get("definition") != "none" else 0
    tuning = p.get("tuning") or {}
    epochs, batch = int(tuning.get("epochs", 2)), int(tuning.get("batch_size", 16))
    tokens = int(epochs * train.tasks * per_task * example)
    return {
        "forward": forward,
        "backward": _capped(tokens, tuning.get("max_steps"), batch, example),
    }


TOKEN_ESTIMATORS: dict[str, TokenEstimator] = {
    "convergence": convergence_tokens,
    "audit": audit_tokens,
}


def estimate_tokens(section: Any, cell: Cell) -> TokenCounts:
    """The default estimator: by the cell's experiment; unknown experiments count nothing."""
    estimator = TOKEN_ESTIMATORS.get(cell.experiment)
    return estimator(section, cell) if estimator else {"forward": 0, "backward": 0}


# ---------------------------------------------------------------- memory and plan


def _training_shape(experiment: str, section: Any, cell: Cell) -> tuple[int, int]:
    """(batch size, tokens per sequence) of the cell's training batches."""
    p = cell.params
    tuning = p.get("tuning") or {}
    batch = int(tuning.get("batch_size", 8))
    if experiment == "audit":
        shape = task_shape(str(p.get("train", "")), "train")
        n_pos = int(p.get("n_positive", 2))
        return batch, shape.definition_tokens + (n_pos + 1) * shape.example_tokens
    shape = task_shape(str(p.get("tasks", "")))
    return min(batch, int(p.get("k", 8))), shape.definition_tokens + shape.example_tokens


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
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """A whole study's estimate; ``experiments`` in run order."""

    accelerator: str
    peak_flops: float
    mfu: float
    experiments: list[ExperimentPlan]
    model_sizes: dict[str, dict[str, Any]]
    device_memory_bytes: int | None

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
        return sum(e.seconds for e in self.experiments)

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
            )
        }
        return {
            "accelerator": self.accelerator,
            "peak_flops": self.peak_flops,
            "mfu": self.mfu,
            "device_memory_bytes": self.device_memory_bytes,
            "experiments": [asdict(e) for e in self.experiments],
            "model_sizes": self.model_sizes,
            "total": totals,
        }


def measure_cpu_flops(seconds: float = 0.3, n: int = 512) -> float:
    """FLOP/s of fp32 matmuls on this machine's CPU (a quick, rough peak)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / elapsed


def accelerator_peak(gpu: str) -> float:
    """Peak FLOP/s of an accelerator name, measuring the CPU for 'cpu'."""
    if gpu == "cpu":
        return measure_cpu_flops()
    if gpu not in PEAK_FLOPS:
        raise TunelensInputError(
            f"unknown accelerator {gpu!r}; expected one of {', '.join([*PEAK_FLOPS, 'cpu'])}",
            where="--gpu",
        )
    return PEAK_FLOPS[gpu]


def _cell_model(cell: Cell) -> str:
    return str(cell.params.get("model", "world"))


def plan_study(
    spec: Spec,
    *,
    gpu: str = "h100",
    mfu: float = 0.4,
    experiments: Mapping[str, Experiment] | None = None,
    peak_flops: float | None = None,
    source: str | None = None,
) -> Plan:
    """Estimate every experiment of ``spec``: cells, tokens, FLOPs, peak memory, time.

    First the spec's tasks load (those on this machine; a task set that is here
    but broken is an error, ``spec.allow_missing_tasks`` skips split entries
    without a file) and are checked as ``tunelens run`` checks them
    (:mod:`tunelens.runs.preflight`: pool sizes against k, relevance 'other'
    against the number of tasks), then the longest prompts against the
    context of every local model (:func:`check_prompt_lengths`). A failure is
    one :class:`TunelensInputError` naming ``source`` (the spec) and the key.
    """
    if not 0 < mfu <= 1:
        raise TunelensInputError(f"MFU must lie in (0, 1], got {mfu}", where="--mfu")
    if experiments is None:
        from tunelens.api import get_experiments

        experiments = get_experiments()
    from tunelens.api import StudyInputs
    from tunelens.runs.preflight import preflight
    from tunelens.runs.study import plan_cells

    inputs = StudyInputs(strict=False, allow_missing=spec.allow_missing_tasks)
    planned = plan_cells(spec, experiments, inputs)
    sections = [(experiments[name], section) for name, section, _ in planned]
    preflight(sections, inputs, source)
    check_prompt_lengths(sections, inputs, source)
    peak = peak_flops if peak_flops is not None else accelerator_peak(gpu)
    sizes: dict[str, ModelSize] = {}
    plans = []
    for name, section, cells in planned:
        experiment = experiments[name]
        estimator: TokenEstimator = getattr(experiment, "estimate_tokens", estimate_tokens)
        plan = ExperimentPlan(name, sorted({_cell_model(c) for c in cells}))
        for cell in cells:
            model = _cell_model(cell)
            if model not in sizes:
                sizes[model] = model_size(model)
            size = sizes[model]
            tokens = estimator(section, cell)
            fwd, bwd = int(tokens.get("forward", 0)), int(tokens.get("backward", 0))
            shape = ModelShape(size.non_embedding, size.layers, size.hidden)
            flops = forward_flops(fwd, shape, attention=False) + training_flops(
                bwd, shape, attention=False
            )
            tuning = cell.params.get("tuning") or {}
            batch, seq = _training_shape(name, section, cell)
            memory = peak_memory(
                size,
                str(cell.params.get("dtype") or spec.dtype),
                training=bwd > 0,
                full=tuning.get("method") == "full",
                batch=batch,
                seq=seq,
            )
            plan.cells += 1
            plan.forward_tokens += fwd
            plan.backward_tokens += bwd
            plan.flops += flops
            plan.peak_memory_bytes = max(plan.peak_memory_bytes, memory)
            plan.seconds += flops / (peak * mfu)
        plans.append(plan)
    return Plan(
        accelerator=gpu,
        peak_flops=peak,
        mfu=mfu,
        experiments=plans,
        model_sizes={k: asdict(v) for k, v in sizes.items()},
        device_memory_bytes=DEVICE_MEMORY.get(gpu),
    )


# ---------------------------------------------------------------- prompt length


def model_context(name: str) -> tuple[int, Path] | None:
    """(positions, config path) of a local model with a fixed context; None otherwise
    (not on this machine, or relative positions such as T5's)."""
    if name == "world":
        from tunelens.models.paths import world_model_dir

        directory = world_model_dir()
    else:
        directory = Path(name).expanduser()
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

    if name == "world":
        from tunelens.models.paths import world_model_dir

        return AutoTokenizer.from_pretrained(str(world_model_dir()), local_files_only=True)
    # Never a download, never remote code: a name that is no local directory fails here.
    return AutoTokenizer.from_pretrained(str(Path(name).expanduser()), local_files_only=True)


def _longest(tokenizer: Any, prompts: list[str]) -> tuple[int, str]:
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    return lengths[i], prompts[i]


def _convergence_prompts(section: Any, tasks: Any) -> list[str]:
    """The ICL prompts of the first seed at the largest k (the longest the cells make)."""
    from tunelens.prompts import PromptStyle, render_prompt
    from tunelens.tasks.sampling import sample_demo_sets

    k_max = max(section.k)
    style = PromptStyle(
        template="plain" if section.template == "chat" else section.template,
        definition=any(section.definition),
        n_positive=0,
    )
    prompts = []
    for relevance in section.relevance:
        sets = sample_demo_sets(
            tasks,
            n_pairs=section.n_pairs,
            anchors_per_set=section.anchors_per_set,
            k=k_max,
            relevance=relevance,
            seed=section.seeds[0],
            k_max=k_max,
        )
        for demo_set in sets:
            for anchor in demo_set.anchors:
                prompts.append(render_prompt(demo_set.task, anchor.input, demo_set.demos, style))
    return prompts


def _audit_prompts(section: Any, tasks: Any) -> list[str]:
    """Tk-Instruct prompts (definition + positive examples) of the evaluated instances."""
    from tunelens.prompts import PromptStyle, render_prompt

    style = PromptStyle(template="tk", definition=True, n_positive=section.n_positive)
    return [
        render_prompt(task, inst.input, None, style)
        for task in tasks
        for inst in task.instances[: section.eval_instances_per_task]
    ]


def check_prompt_lengths(
    sections: list[tuple[Experiment, Any]], inputs: Any, source: str | None
) -> None:
    """The longest prompt of each section against each local model's context (exit 2 if over).

    Convergence: the ICL prompts at the largest k (key ``convergence.k``); audit:
    the Tk-Instruct evaluation prompts (key ``audit.n_positive``). Models not on
    this machine, and models without a fixed context (T5), are not checked.
    """
    for experiment, section in sections:
        if experiment.name == "convergence":
            models, ref, key = list(section.models), section.tasks, "convergence.k"
            make = _convergence_prompts
        elif experiment.name == "audit":
            models, ref, key = [str(section.model)], section.test, "audit.n_positive"
            make = _audit_prompts
        else:
            continue
        tasks = inputs.tasks(ref)
        contexts = [(m, c) for m in models if (c := model_context(m)) is not None]
        if not tasks or not contexts:
            continue
        prompts = make(section, tasks)
        if not prompts:
            continue
        for model, (context, config_path) in contexts:
            length, _ = _longest(_tokenizer(model), prompts)
            if length > context:
                raise TunelensInputError(
                    f"the longest prompt is {length} tokens, more than the {context} positions "
                    f"of model {model} ({config_path}); lower it or use a longer-context model",
                    source=source,
                    where=key,
                )
