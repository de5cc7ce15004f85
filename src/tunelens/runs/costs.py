"""What a cell does and what that costs: the work counts and time model of `tunelens plan`.

A cell's time is not its FLOPs over a peak. On 2 CPU cores with the embedded
world models (0.48M-1.62M parameters) a forward call costs about a millisecond
whatever it computes, and 9x more demonstration sets cost 1.5x more CPU
(issue 16). So a cell is described by its **work** (:class:`Work`): tokens
(forward-only and trained, for FLOPs), and the calls that carry a fixed cost
each -- no-grad forward calls, ``generate`` calls and their decoding steps,
optimizer steps (per-set PEFT, lockstep many-set, multi-task), tuning runs
(adapter set-up and removal, the multi-task Accelerator), scored samples,
random-init model builds. Each experiment counts its own cells' work
(its ``estimate_work`` hook, e.g. :mod:`tunelens.experiments.convergence.plan`)
with the primitives here, the way it batches (captures and last-token forwards
in batches of 16: :func:`forward_work`; generation in
:func:`tunelens.models.predict.token_batches` of the real prompt lengths:
:func:`generation_work`; training micro-batches: :func:`training_attention`,
:func:`tuning_steps`), from the cell's own prompts where its tasks are on this
machine, rendered as the cell renders them and counted with the model's
tokenizer (:class:`TokenCounter`; 4 characters per token when the model is not
here). Decoding is counted to ``max_new_tokens`` (an upper bound: a model that
answers early stops early).

:func:`cell_seconds` prices the work with a :class:`CostModel`:

    seconds = cell + sum(count x cost per call at this depth)
            + weight passes x weight bytes / memory bandwidth
            + FLOPs / (peak x efficiency(hidden size))

with FLOPs ``2 N`` per forward token, ``4 N`` per LoRA training token (frozen
base: no weight gradients) and ``6 N`` per fully trained token
(:mod:`tunelens.measures.flops`). A per-call cost is ``a + b x layers``
(Python and kernel dispatch grow with depth); the weight term is what a call
costs once the weights no longer fit in cache (one pass per forward call and
decoding step, three per training step); the efficiency is the share of the
matmul peak a forward reaches at that width.

:data:`CPU_COSTS` is calibrated once on this machine class (2 cores of an AMD
EPYC, 2 MB L2 per core, fp32, one torch thread as
:mod:`tunelens.runs.threads` gives small models) by ``bench/plan_calibration.py``,
in CPU time (``time.process_time``, best of repeats), so that a shared machine
gives an idle machine's figures; the figures are those of one run of it, see
the constant. A run's fixed costs (:func:`run_seconds`) are the interpreter
and imports, the study's set-up (tasks, model fingerprints), each model's load,
and the aggregation with the report. On a GPU the same dispatch constants are
used (Python-bound, not measured on a GPU) with the GPU's memory bandwidth and
the ``--mfu`` given.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PerLayer = tuple[float, float]  # (a, b): seconds = a + b * layers

CAPTURE_BATCH = 16  # capture_last_token_states / last_token_forward rows per call
CHARS_PER_TOKEN = 4.0  # English BPE, for a model that is not on this machine


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work (see the module docstring and :data:`CPU_COSTS`)."""

    startup_s: float  # interpreter + imports of `tunelens run`, once per run
    setup_s: float  # study set-up (tasks loaded, models fingerprinted), once per run
    finish_s: float  # aggregation, results.json, report.html and plots, once per run
    report_condition_s: float  # aggregation, plots and tables per reported condition
    load_s: float  # loading one model (fixed part; plus its weight bytes / load_bytes_per_s)
    load_bytes_per_s: float
    # per cell of an experiment, by its name: its own set-up and statistics, where a
    # calibration measured them; an experiment not here costs its ``cell_overhead_s``
    cell_s: dict[str, float]
    sample_s: float  # per evaluated sample: EM, ROUGE-L, the sample record and its log line
    forward_call: PerLayer  # one no-grad forward call
    generate_call: PerLayer  # one generate call (set-up and prefill dispatch)
    decode_step: PerLayer  # one decoding step of a generate call
    optimizer_step: PerLayer  # one training step of one model (per-set PEFT, full tuning)
    lockstep_step: PerLayer  # one step of tune_many_sets (all sets of a chunk at once)
    multitask_step: PerLayer  # one step of multitask_tune (Accelerate)
    tuning_run: PerLayer  # attach + encode + unload of one per-set tuning
    lockstep_run: PerLayer  # set-up of one tune_many_sets call
    multitask_run: PerLayer  # Accelerator, data loader and unload of one multi-task tuning
    model_build_s: float  # a random-init model (controls): fixed part
    init_s_per_parameter: float
    attention_s: float  # per attention score element (one layer, one head, one query-key pair)
    attention_relative_s: float  # the same with T5's relative position bias (built per call)
    training_attention_s: float  # per score element of a training step (forward + backward)
    training_attention_relative_s: float
    memory_bytes_per_s: float  # weight streaming once the weights leave the cache
    cache_bytes: int  # weights up to this size stay in cache (no weight term)
    # (hidden size, share of the peak) points, ascending, per kind of token
    efficiency: dict[str, tuple[tuple[int, float], ...]]
    source: str = ""

    def per_layer(self, name: str, layers: int) -> float:
        a, b = getattr(self, name)
        return a + b * layers

    def efficiency_at(self, hidden: int, kind: str = "forward") -> float:
        """Share of the matmul peak ``kind`` tokens (forward, generate, training, lockstep)
        reach at this hidden size: interpolated in log hidden size between the calibrated
        points, constant beyond them."""
        points = self.efficiency[kind]
        sizes = [h for h, _ in points]
        if hidden <= sizes[0]:
            return points[0][1]
        if hidden >= sizes[-1]:
            return points[-1][1]
        i = bisect.bisect_right(sizes, hidden)
        (h0, e0), (h1, e1) = points[i - 1], points[i]
        t = (math.log(hidden) - math.log(h0)) / (math.log(h1) - math.log(h0))
        return e0 + t * (e1 - e0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Calibrated by `bench/plan_calibration.py` (CPU time, best of 5 (3 for child processes),
# one torch thread) on this machine class: a 2-core AMD EPYC VM, fp32 matmul peak
# 91.9 GFLOP/s per thread in CPU time, torch 2 / transformers 5, at load average 2.1-2.5
# (other jobs running; CPU time leaves them out). Per-call pairs (a, b) are fitted on the
# tiny 2-layer Llama and the 3-layer world model (now `world-small`; the 6-layer `world`
# was not in the fit, and `bench/run.py --plan-error` on the default spec over it, with
# shared-prefix generation counted, gave -31% wall; rerun the calibration with
# `load_model("world-small")` to reproduce these figures); the bandwidth is the 6-layer 19.6M
# Llama's 4-token forward over that line (78 MB of weights); the efficiencies come from
# realistic batches of each kind on the three models; what a tiny cell of each
# experiment costs beyond everything counted is its class's ``cell_overhead_s`` (cell_s
# here overrides it by name); aggregation and report per reported (convergence)
# condition come from resuming (all cells found) runs of 8 and 2 conditions (measured
# with the script's commands after that run, at load 3). Loads: the CPU
# time of load_model (weights are memory-mapped); the read rate for large weights is
# assumed (1 GB/s), not measured.
CPU_COSTS = CostModel(
    startup_s=7.3,
    setup_s=0.41,
    finish_s=1.17,
    report_condition_s=0.31,
    load_s=0.51,
    load_bytes_per_s=1e9,
    cell_s={},
    sample_s=2.2e-5,
    forward_call=(0.0, 0.00053),
    generate_call=(0.0, 0.00146),
    decode_step=(0.00091, 0.00009),
    optimizer_step=(0.00265, 0.00154),
    lockstep_step=(0.00136, 0.00176),
    multitask_step=(0.00495, 0.00132),
    tuning_run=(0.0186, 0.0),
    lockstep_run=(0.0077, 0.0),
    multitask_run=(0.0059, 0.0059),
    model_build_s=0.0045,
    init_s_per_parameter=7.7e-9,
    attention_s=2.1e-9,
    attention_relative_s=7.2e-9,
    training_attention_s=7.2e-9,
    training_attention_relative_s=3.7e-8,
    memory_bytes_per_s=7.5e9,
    cache_bytes=4 * 2**20,
    efficiency={
        "forward": ((32, 0.05), (96, 0.419), (512, 0.644)),
        "generate": ((32, 0.058), (96, 0.595), (512, 0.698)),
        "training": ((32, 0.07), (96, 0.382), (512, 0.579)),
        "lockstep": ((32, 0.119), (96, 0.412), (512, 1.0)),
    },
    source="bench/plan_calibration.py, 2-core AMD EPYC, fp32, 1 thread",
)

GPU_MEMORY_BYTES_PER_S = {"h100": 3.35e12, "a100": 2.0e12}


@dataclass
class Work:
    """What one cell does (see the module docstring); counts add up over cells."""

    forward_tokens: int = 0  # no-grad forwards: captures, last-token readings, patching
    generate_tokens: int = 0  # generation: prompt tokens (prefill) + new tokens
    decode_tokens: int = 0  # of generate_tokens, the new ones (each runs the LM head)
    training_tokens: int = 0  # one-model training: per-set PEFT, full, multi-task
    lockstep_tokens: int = 0  # tune_many_sets: every set's rows in one stacked batch
    full_training_tokens: int = 0  # of the trained tokens, those with every weight trained
    # of training_tokens / lockstep_tokens, the targets (an encoder-decoder's decoder side)
    training_targets: int = 0
    lockstep_targets: int = 0
    forward_calls: int = 0
    generate_calls: int = 0
    decode_steps: int = 0
    optimizer_steps: int = 0
    lockstep_steps: int = 0
    multitask_steps: int = 0
    tuning_runs: int = 0
    lockstep_runs: int = 0
    multitask_runs: int = 0
    samples: int = 0
    model_builds: int = 0
    trained_parameters_steps: int = 0  # full tuning: parameters x optimizer steps (AdamW)
    # attention score elements per layer and head: rows x width^2 of every padded batch of
    # no-grad passes, and of every training micro-batch (forward and backward together)
    attention: float = 0.0
    training_attention: float = 0.0
    exact: bool = False  # counted from the cell's own prompts

    def add(self, other: Work) -> None:
        for f in fields(self):
            if f.name != "exact":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def all_forward_tokens(self) -> int:
        return self.forward_tokens + self.generate_tokens

    @property
    def all_training_tokens(self) -> int:
        return self.training_tokens + self.lockstep_tokens

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "exact"}


@dataclass(frozen=True)
class ModelFacts:
    """What pricing needs about a model."""

    non_embedding: int
    total: int
    hidden: int
    layers: int
    bytes_per_parameter: int = 4
    heads: int = 1
    head: int = 0  # LM head weights (run on trained and new tokens)
    encoder: int = 0  # an encoder-decoder's prompt-token parameters: encoder + cross k/v
    relative_attention: bool = False  # T5-style relative position bias
    attention_layers: int = 0  # layers whose attention spans the prompt (0: all layers)


@dataclass
class Seconds:
    """A cell's (or a study's) time in parts."""

    overhead: float = 0.0  # per-call dispatch, per-cell and per-sample costs
    weights: float = 0.0  # weight streaming
    compute: float = 0.0  # FLOPs / (peak x efficiency)
    fixed: float = 0.0  # start-up, set-up, model loads, report (a run's, not a cell's)
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.overhead + self.weights + self.compute + self.fixed

    def add(self, other: Seconds) -> None:
        self.overhead += other.overhead
        self.weights += other.weights
        self.compute += other.compute
        self.fixed += other.fixed
        for key, value in other.parts.items():
            self.parts[key] = self.parts.get(key, 0.0) + value

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "overhead": self.overhead,
            "weights": self.weights,
            "compute": self.compute,
            "fixed": self.fixed,
            "parts": dict(sorted(self.parts.items())),
        }


TOKEN_KINDS = ("forward", "generate", "training", "lockstep")


def _flops_by_kind(work: Work, model: ModelFacts, *, priced: bool = True) -> dict[str, float]:
    """Model FLOPs per kind of token: 2N forward, 4N LoRA training, 6N full training.

    ``priced`` (the time model): the LM head (``model.head``) runs on new and
    trained tokens too, and an encoder-decoder's prompt tokens run through its
    encoder and the decoder's cross-attention keys and values only
    (``model.encoder`` parameters) while its targets and new tokens run
    through the rest and the head (a T5-large prompt token: 48% of 2N + head).
    Unpriced, every token is charged 2N / 4N / 6N (Kaplan's non-embedding
    convention, the FLOPs a plan reports).
    """
    n = float(model.non_embedding)
    h = float(model.head) if priced else 0.0
    split = priced and 0 < model.encoder < model.non_embedding
    source = float(model.encoder) if split else n + h  # per prompt-side token
    target = n - model.encoder + h if split else n + h  # per target-side token
    full = work.full_training_tokens
    full_plain = min(full, work.training_tokens)
    full_lock = min(full - full_plain, work.lockstep_tokens)

    def trained(tokens: int, targets: int, full_tokens: int) -> float:
        targets = min(targets, tokens)  # unsplit, source == target: targets change nothing
        per_token = (source * (tokens - targets) + target * targets) / max(1, tokens)
        return (4 * (tokens - full_tokens) + 6 * full_tokens) * per_token

    prompt = work.generate_tokens - work.decode_tokens
    return {
        "forward": 2 * n * work.forward_tokens,
        "generate": (
            2 * source * prompt + 2 * target * work.decode_tokens
            if split
            else 2 * n * work.generate_tokens + 2 * h * work.decode_tokens
        ),
        "training": trained(work.training_tokens, work.training_targets, full_plain),
        "lockstep": trained(work.lockstep_tokens, work.lockstep_targets, full_lock),
    }


def work_flops(work: Work, model: ModelFacts) -> float:
    """Model FLOPs of the work: 2N per forward token, 4N per LoRA and 6N per fully trained
    token, N the non-embedding parameters (Kaplan et al. 2020)."""
    return sum(_flops_by_kind(work, model, priced=False).values())


def cell_seconds(
    experiment: str,
    work: Work,
    model: ModelFacts,
    costs: CostModel,
    *,
    peak_flops: float,
    efficiency: float | None = None,
    memory_bytes_per_s: float | None = None,
    cell_s: float | None = None,
) -> Seconds:
    """The time of one cell's work on one model (``efficiency`` None: the calibrated curves).

    The cell's own fixed seconds are ``costs.cell_s[experiment]`` where the cost model has
    them, else ``cell_s`` (the experiment's ``cell_overhead_s``; None: looked up on the
    registered experiment of that name, 0 for none).
    """
    layers = model.layers
    calls: dict[str, tuple[int, str]] = {
        "forward calls": (work.forward_calls, "forward_call"),
        "generate calls": (work.generate_calls, "generate_call"),
        "decoding steps": (work.decode_steps, "decode_step"),
        "optimizer steps": (work.optimizer_steps, "optimizer_step"),
        "lockstep steps": (work.lockstep_steps, "lockstep_step"),
        "multi-task steps": (work.multitask_steps, "multitask_step"),
        "tuning runs": (work.tuning_runs, "tuning_run"),
        "lockstep runs": (work.lockstep_runs, "lockstep_run"),
        "multi-task runs": (work.multitask_runs, "multitask_run"),
    }
    parts = {label: count * costs.per_layer(name, layers) for label, (count, name) in calls.items()}
    parts["samples"] = work.samples * costs.sample_s
    parts["model builds"] = work.model_builds * (
        costs.model_build_s + model.total * costs.init_s_per_parameter
    )
    parts["cells"] = _cell_overhead(experiment, costs, cell_s)
    relative = model.relative_attention
    per_element = costs.attention_relative_s if relative else costs.attention_s
    per_trained = costs.training_attention_relative_s if relative else costs.training_attention_s
    spans = (model.attention_layers or model.layers) * model.heads
    parts["attention"] = spans * (
        work.attention * per_element + work.training_attention * per_trained
    )
    overhead = sum(parts.values())
    weight_bytes = model.total * model.bytes_per_parameter
    bandwidth = memory_bytes_per_s or costs.memory_bytes_per_s
    passes = (
        work.forward_calls
        + work.generate_calls
        + work.decode_steps
        + 3 * (work.optimizer_steps + work.lockstep_steps + work.multitask_steps)
    )
    weights = passes * weight_bytes / bandwidth if weight_bytes > costs.cache_bytes else 0.0
    # AdamW over fully trained weights: parameter, gradient and two moments read and written
    weights += work.trained_parameters_steps * 7 * model.bytes_per_parameter / bandwidth
    compute = 0.0
    for kind, flops in _flops_by_kind(work, model).items():
        share = efficiency if efficiency is not None else costs.efficiency_at(model.hidden, kind)
        compute += flops / (peak_flops * share)
    parts = {k: v for k, v in parts.items() if v}
    parts["weight streaming"] = weights
    parts["FLOPs"] = compute
    return Seconds(overhead=overhead, weights=weights, compute=compute, parts=parts)


def _cell_overhead(experiment: str, costs: CostModel, cell_s: float | None) -> float:
    """Seconds one cell of ``experiment`` costs beyond its counted work: the cost model's
    calibrated figure, else the experiment's own (asked of the registry when not given, so
    that a caller with only the name prices a cell as ``tunelens plan`` does)."""
    if experiment in costs.cell_s:
        return costs.cell_s[experiment]
    if cell_s is not None:
        return cell_s
    from tunelens.api import get_experiments

    return float(getattr(get_experiments().get(experiment), "cell_overhead_s", 0.0))


def run_seconds(costs: CostModel, model_bytes: Sequence[int], conditions: int = 0) -> Seconds:
    """A run's fixed costs: start-up, set-up, one load per model, aggregation and a report
    with ``conditions`` conditions (each experiment's ``plan_conditions``)."""
    loads = sum(costs.load_s + b / costs.load_bytes_per_s for b in model_bytes)
    parts = {
        "start-up": costs.startup_s,
        "study set-up": costs.setup_s,
        "model loads": loads,
        "results and report": costs.finish_s + conditions * costs.report_condition_s,
    }
    return Seconds(fixed=sum(parts.values()), parts=parts)


# ---------------------------------------------------------------- counting tokens


class TokenCounter:
    """Token counts of texts: the model's tokenizer where the model is on this machine,
    else one token per :data:`CHARS_PER_TOKEN` characters (plus one special token).

    Each distinct text is tokenised once per counter: a study's cells ask about
    the same evaluation prompts again and again (every audit condition scores
    the same held-out prompts; 40 cells of the Kung spec asked for 67,072
    encodings of about 1,800 texts).
    """

    def __init__(self, tokenizer: Any | None = None):
        self.tokenizer = tokenizer
        self._seen: dict[tuple[bool, str], tuple[int, ...]] = {}

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def _encode(self, texts: Sequence[str], special: bool) -> list[tuple[int, ...]]:
        new = list(dict.fromkeys(t for t in texts if (special, t) not in self._seen))
        if new:
            assert self.tokenizer is not None
            ids = self.tokenizer(new, add_special_tokens=special)["input_ids"]
            for text, row in zip(new, ids, strict=True):
                self._seen[(special, text)] = tuple(row)
        return [self._seen[(special, t)] for t in texts]

    def lengths(self, texts: Sequence[str], *, special: bool = True) -> list[int]:
        if not texts:
            return []
        if self.tokenizer is None:
            return [
                max(1, math.ceil(len(t) / CHARS_PER_TOKEN)) + (1 if special else 0) for t in texts
            ]
        return [len(row) for row in self._encode(texts, special)]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]] | None:
        """The texts' token ids (special tokens included); ``None`` without a tokenizer."""
        if self.tokenizer is None or not texts:
            return None
        return [list(row) for row in self._encode(texts, True)]

    def sample_mean(self, texts: Sequence[str], limit: int = 512, *, special: bool = True) -> float:
        """Mean length over at most ``limit`` texts taken evenly across ``texts``."""
        if not texts:
            return 0.0
        step = max(1, len(texts) // limit)
        sample = list(texts[::step])[:limit]
        return sum(self.lengths(sample, special=special)) / len(sample)


def generate_batches(
    lengths: Sequence[int], max_new_tokens: int, kind: str = "causal", device: str = "cpu"
) -> list[list[int]]:
    """The batches :func:`tunelens.models.predict.generate_predictions` makes of these prompts
    on ``device`` (its default token budget)."""
    from tunelens.models.predict import default_batch_tokens, token_batches

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    widths = (
        [(n + max_new_tokens,) for n in lengths]
        if kind == "causal"
        else [(n, max_new_tokens) for n in lengths]
    )
    return token_batches(order, widths, max_batch_tokens=default_batch_tokens(device))


def _batch_attention(widths: Sequence[int]) -> float:
    """rows x width^2 of one padded batch whose rows have these lengths."""
    return len(widths) * max(widths) ** 2 if widths else 0.0


def generation_work(
    lengths: Sequence[int],
    max_new_tokens: int,
    kind: str = "causal",
    device: str = "cpu",
    *,
    token_ids: Sequence[Sequence[int]] | None = None,
    min_saved_tokens: int = 0,
) -> Work:
    """Greedy generation of prompts of these lengths: prefill and decoding to the bound.

    With ``token_ids`` (a causal model), prompts that share a long prefix are
    counted as :func:`tunelens.models.predict.generate_predictions` runs them:
    each group that saves at least ``min_saved_tokens`` (the model's break-even,
    :func:`tunelens.models.prefix_generation.break_even_tokens`) one forward of
    its prefix in one row, then its suffixes generated in token-budget batches
    on the cached prefix (the plan assumes the model's cache allows it, as
    every full-attention decoder does).
    """
    if not lengths:
        return Work()
    work = Work()
    rest = list(range(len(lengths)))
    if token_ids is not None and kind == "causal":
        from tunelens.models.predict import default_batch_tokens, shared_prefix_batches

        grouped: set[int] = set()
        widths = [(n + max_new_tokens,) for n in lengths]
        plan = shared_prefix_batches(
            token_ids,
            widths,
            max_batch_tokens=default_batch_tokens(device),
            min_saved_tokens=min_saved_tokens,
        )
        for group, batches in plan:
            prefix = group.prefix_length
            work.add(forward_work([prefix], batch=1))
            for rows in batches:
                width = max(lengths[i] for i in rows)
                new = sum(lengths[i] - prefix for i in rows)
                work.add(
                    Work(
                        generate_tokens=new + len(rows) * max_new_tokens,
                        decode_tokens=len(rows) * max_new_tokens,
                        generate_calls=1,
                        decode_steps=max_new_tokens,
                        # the suffixes' scores against the whole row, then each new token
                        attention=len(rows)
                        * ((width - prefix) * width + max_new_tokens * (width + max_new_tokens)),
                    )
                )
            grouped.update(group.members)
        rest = [i for i in rest if i not in grouped]
    if rest:
        plain = [lengths[i] for i in rest]
        batches = generate_batches(plain, max_new_tokens, kind, device)
        attention = 0.0
        for rows in batches:
            width = max(plain[i] for i in rows)
            # the prefill's scores, then each new token against the prompt and what came before
            attention += len(rows) * (width**2 + max_new_tokens * (width + max_new_tokens))
        work.add(
            Work(
                generate_tokens=sum(plain) + len(plain) * max_new_tokens,
                decode_tokens=len(plain) * max_new_tokens,
                generate_calls=len(batches),
                decode_steps=len(batches) * max_new_tokens,
                attention=attention,
            )
        )
    return work


def forward_work(lengths: Sequence[int], batch: int = CAPTURE_BATCH, passes: int = 1) -> Work:
    """``passes`` no-grad forwards over prompts of these lengths in batches of ``batch``."""
    if not lengths:
        return Work()
    attention = sum(_batch_attention(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return Work(
        forward_tokens=passes * sum(lengths),
        forward_calls=passes * math.ceil(len(lengths) / batch),
        attention=passes * attention,
    )


def training_attention(lengths: Sequence[int], batch: int, steps: int) -> float:
    """Score elements (rows x width^2) of ``steps`` training micro-batches over rows of
    these lengths, ``batch`` rows each, grouped by length (as a lockstep run pads)."""
    if not lengths or not steps:
        return 0.0
    ordered = sorted(lengths)
    per_epoch = sum(_batch_attention(ordered[i : i + batch]) for i in range(0, len(ordered), batch))
    epochs = steps / max(1, math.ceil(len(lengths) / batch))
    return per_epoch * epochs


# ---------------------------------------------------------------- tuning


def tuning_steps(n_rows: int, tuning: dict[str, Any]) -> int:
    """Optimizer steps of one tuning run over ``n_rows`` pairs (epochs, batch, max_steps)."""
    batch = int(tuning.get("batch_size", 8))
    accumulation = int(tuning.get("gradient_accumulation_steps", 1) or 1)
    per_epoch = math.ceil(n_rows / batch)
    steps = int(tuning.get("epochs", 1)) * per_epoch
    if tuning.get("max_steps"):
        steps = min(steps, int(tuning["max_steps"]) * accumulation)
    return steps
