"""Many small LoRA fine-tunes at once (batched LoRA): one adapter per set, one forward/backward.

Why home-made: a convergence cell tunes one adapter per demonstration set
(dozens of sets of k pairs each, a few steps each). Sequential PEFT runs pay
the whole per-step overhead (Python, kernel launches, optimizer) once per set,
and PEFT's multi-adapter support (several named adapters, or mixed-batch
inference with ``adapter_names``) trains one adapter at a time. Here every set's
batch is stacked along the batch dimension and :class:`BatchedLoraLinear` applies
each set's own A/B matrices with ``torch.bmm``, so one forward/backward and one
AdamW step train all sets. The loss is normalised and the gradient clipped per
set, and AdamW is elementwise, so each adapter equals the one a sequential
:func:`~tunelens.models.tuning.tune_on_pairs` run gives with the same seed and
settings (up to float rounding); ``tests/integration/test_tuning.py`` checks it
and ``bench/`` measures the speed-up against sequential PEFT.

Shared prompt prefixes. The prompts of one set are prompts of one task: with
the definition on, every row of a set starts with the same ``<s> Definition:
... Input:`` tokens, most of the row. Computing that prefix once per step and
set instead of once per row is what makes the batched run faster than
sequential PEFT on a CPU, where the work is bound by the token positions
computed rather than by per-call overhead. A lockstep step takes one of three
layouts (:func:`choose_layout`; the rest of the loop is the same for all):

* ``"packed"``: one row per set, ``[prefix, rest 1, ..., rest b]``, with a 4-D
  attention mask under which every rest sees the prefix and itself, and
  position ids that go on from the prefix for each rest: no padding within a
  set, no cache. For attention implementations that take a custom mask (sdpa,
  eager).
* ``"cache"``: the prefixes run first (batch = sets, with gradients), their
  key/value cache is repeated over each set's rows
  (``DynamicCache.batch_repeat_interleave``, differentiable) and the rests run
  on top with explicit position ids. For the other attention implementations,
  and packed rows too long for dense attention.
* ``"rows"``: the full rows, padded to the step's longest: encoder-decoders,
  models whose forward takes no position ids, sets without a useful shared
  prefix.

Causal attention makes the three the same computation, so their adapters agree
up to float rounding (``tests/integration/test_tuning.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch

from tunelens.errors import TunelensInputError
from tunelens.models.batching import (
    IGNORE_INDEX,
    EncodedPair,
    collate,
    collate_causal,
    forward_logits,
    label_counts,
    target_losses,
    token_losses,
)
from tunelens.models.hidden_states import packable, sliding_window
from tunelens.models.loading import LoadedModel
from tunelens.models.memory import retry_halving
from tunelens.models.packing import PackedRow, attention_mask, model_mask, padded_row
from tunelens.models.tuning.adapters import (
    SavedFlags,
    TunedModel,
    attach_lora,
    check_plain,
    execution_device,
)
from tunelens.models.tuning.config import TuningConfig
from tunelens.models.tuning.loop import (
    DivergenceGuard,
    encode_training_pairs,
    lr_lambda,
    make_optimizer,
    set_train_mode,
    step_batches,
    sum_on_cpu,
    vocabulary_size,
)
from tunelens.models.tuning.per_set import tune_on_pairs
from tunelens.models.tuning.targets import (
    AdapterState,
    adapter_dtype,
    adapter_key,
    initial_lora_state,
    module_shapes,
    resolve_target_modules,
    target_module_names,
)
from tunelens.models.wrappers import forward_takes

Layout = Literal["auto", "packed", "cache", "rows"]
LAYOUTS: tuple[str, ...] = ("auto", "packed", "cache", "rows")

MIN_PREFIX_SAVING = 0.1
"""``layout="auto"`` shares prefixes when that saves at least this fraction of the positions."""

CPU_ACTIVATION_BUDGET = 1 << 20
"""On a CPU, lockstep steps hold at most about this many activation floats (4 MiB in fp32).

Measured on a 2-core EPYC (2 MiB L2 per core; bench/RESULTS.md): a 20M Llama
trains 30 sets x 8 short rows 1.25x faster in two chunks of 15 than in one.
"""

PACKED_MAX_TOKENS = 1024
"""Longest packed row ``layout="auto"`` builds; longer blocks take the cache layout."""


class BatchedLoraLinear(torch.nn.Module):
    """A frozen linear layer plus one LoRA update per example set, applied by batched matmul.

    The batch holds ``n_sets`` equal blocks of rows, set-major; block s gets
    ``base(x) + B_s A_s dropout(x) * alpha / r``, exactly PEFT's LoRA forward.
    Works for inputs shaped [batch, ..., in] and for token-flattened [batch * seq, in].
    """

    def __init__(
        self,
        base: torch.nn.Module,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        dropout: float,
    ):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(lora_a)  # [sets, r, in]
        self.lora_B = torch.nn.Parameter(lora_b)  # [sets, out, r]
        self.scaling = scaling
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base(x, *args, **kwargs)
        result_dtype = result.dtype
        n_sets = self.lora_A.shape[0]
        xs = self.dropout(x.to(self.lora_A.dtype)).reshape(n_sets, -1, x.shape[-1])
        hidden = torch.bmm(xs, self.lora_A.transpose(1, 2))
        delta = torch.bmm(hidden, self.lora_B.transpose(1, 2)) * self.scaling
        return (result + delta.reshape(result.shape)).to(result_dtype)


@contextmanager
def batched_lora(
    model: torch.nn.Module,
    names: Sequence[str],
    states: Sequence[AdapterState],
    config: TuningConfig,
) -> Iterator[list[BatchedLoraLinear]]:
    """Within the block, each named module of ``model`` carries one LoRA adapter per state.

    The original modules are put back on exit; base weights are never written.
    """
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    dtype = adapter_dtype(model)
    scaling = config.lora_alpha / config.lora_r
    wrapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    layers = []
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            base = modules[name]
            where = execution_device(base, device)  # its own device on a dispatched model
            stack = [
                torch.stack([s[adapter_key(name, m)] for s in states]).to(where, dtype)
                for m in ("lora_A", "lora_B")
            ]
            layer = BatchedLoraLinear(base, stack[0], stack[1], scaling, config.lora_dropout)
            setattr(parent, child, layer)
            wrapped.append((parent, child, base))
            layers.append(layer)
        yield layers
    finally:
        for parent, child, base in reversed(wrapped):
            setattr(parent, child, base)


def tune_many_sets(
    loaded: LoadedModel,
    sets: Sequence[Sequence[tuple[str, str]]],
    config: TuningConfig,
    *,
    seeds: Sequence[int] | None = None,
    sets_per_batch: int | None = None,
    layout: Layout = "auto",
    losses: list[list[float]] | None = None,
) -> list[AdapterState]:
    """One LoRA fine-tune per set of pairs, all at once; returns each set's adapter weights.

    Sets with the same number of pairs take the same number of steps with the
    same batch sizes, so they train in lockstep: their batches are stacked along
    the batch dimension and a :class:`BatchedLoraLinear` gives each its own
    adapter in one forward/backward. Losses are normalised and gradients
    clipped per set, and AdamW is elementwise, so set i ends where
    ``tune_on_pairs(loaded, sets[i], config with seed=seeds[i])`` ends (equal up
    to float rounding; exactly only with ``lora_dropout`` 0 and
    ``model_dropout`` off, the defaults). ``seeds`` defaults to ``config.seed``
    for every set; ``sets_per_batch`` bounds memory by training that many sets
    at a time (sets of similar length together). Load a result with
    :meth:`TunedModel.load_adapter_state` or :func:`attach_lora`. The base model
    is left untouched.

    ``layout`` says how a step's rows are laid out (see the module docstring):
    ``"auto"`` computes each set's shared prompt prefix once per step where that
    saves work and the model allows it (:func:`choose_layout`), ``"rows"``
    always runs the full padded rows; ``"packed"`` and ``"cache"`` force a
    shared-prefix layout (a ValueError where the model cannot take it).

    ``losses``, where given, is filled with each set's loss at every step (one
    list per set, in the order of ``sets``), as :attr:`TunedModel.losses` holds
    them for :func:`~tunelens.models.tuning.tune_on_pairs`.
    """
    seeds = _checked_seeds(loaded, sets, config, seeds, layout)
    encoded = [encode_training_pairs(loaded, pairs, config, None) for pairs in sets]
    base = loaded.model
    names = target_module_names(base, resolve_target_modules(base, config.target_modules))
    shapes = module_shapes(base, names)
    groups = _lockstep_groups(encoded)
    results: list[AdapterState | None] = [None] * len(sets)
    if losses is not None:
        losses[:] = [[] for _ in sets]
    flags = SavedFlags.of(base)
    try:
        for param in base.parameters():
            param.requires_grad_(False)
        for members in groups:
            _train_group(
                loaded,
                names,
                shapes,
                encoded,
                members,
                seeds,
                config,
                layout,
                sets_per_batch,
                losses,
                results,
                single=len(sets) == 1,
            )
    finally:
        flags.restore(base)
        base.eval()
    return [r for r in results if r is not None]


def _checked_seeds(
    loaded: LoadedModel,
    sets: Sequence[Sequence[tuple[str, str]]],
    config: TuningConfig,
    seeds: Sequence[int] | None,
    layout: Layout,
) -> list[int]:
    """Each set's seed (``config.seed`` where none are given), once the request is one that
    :func:`tune_many_sets` can run: LoRA, a known layout, a model without an adapter."""
    if config.method != "lora":
        raise TunelensInputError(
            "tune_many_sets tunes LoRA adapters; method must be 'lora'", where="tuning.method"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    check_plain(loaded)
    checked = [config.seed] * len(sets) if seeds is None else list(seeds)
    if len(checked) != len(sets):
        raise ValueError(f"{len(checked)} seeds for {len(sets)} sets")
    return checked


def _lockstep_groups(encoded: Sequence[Sequence[EncodedPair]]) -> list[list[int]]:
    """The sets that train in lockstep (as many pairs each), shortest first within a group:
    sets of similar length share a chunk (less padding)."""
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(encoded)), key=lambda i: _tokens(encoded[i])):
        groups.setdefault(len(encoded[i]), []).append(i)
    return list(groups.values())


def _train_group(
    loaded: LoadedModel,
    names: Sequence[str],
    shapes: Any,
    encoded: Sequence[Sequence[EncodedPair]],
    members: Sequence[int],
    seeds: Sequence[int],
    config: TuningConfig,
    layout: Layout,
    sets_per_batch: int | None,
    losses: list[list[float]] | None,
    results: list[AdapterState | None],
    *,
    single: bool,
) -> None:
    """Train one lockstep group in chunks of ``sets_per_batch`` sets (default
    :func:`_chunk_size`), each chunk as large as the last one that fit in memory."""
    chosen = choose_layout(loaded, [encoded[i] for i in members], config, layout)
    chunk = sets_per_batch or _chunk_size(loaded, [encoded[i] for i in members], chosen, config)
    start = 0
    while start < len(members):
        chunk, done = _train_chunk(
            loaded,
            names,
            shapes,
            encoded,
            members[start:],
            seeds,
            config,
            chosen,
            chunk,
            losses,
            results,
            single=single,
        )
        start += done


def _train_chunk(
    loaded: LoadedModel,
    names: Sequence[str],
    shapes: Any,
    encoded: Sequence[Sequence[EncodedPair]],
    members: Sequence[int],
    seeds: Sequence[int],
    config: TuningConfig,
    layout: Layout,
    chunk: int,
    losses: list[list[float]] | None,
    results: list[AdapterState | None],
    *,
    single: bool,
) -> tuple[int, int]:
    """Train the next ``chunk`` sets of ``members`` together; on an accelerator that runs out
    of memory, fewer (:func:`~tunelens.models.memory.retry_halving`: halved until they
    fit). Returns (the chunk size that fit, sets trained)."""

    def run(n: int) -> int:
        block = list(members[:n])
        if losses is not None:
            for i in block:
                losses[i].clear()  # a retried block starts its losses again
        states = [initial_lora_state(shapes, config.lora_r, seeds[i]) for i in block]
        trained = _train_lockstep(
            loaded,
            names,
            [encoded[i] for i in block],
            states,
            [seeds[i] for i in block],
            block if not single else [None],  # one set: no set to name
            config,
            layout=layout,
            losses=None if losses is None else [losses[i] for i in block],
        )
        for i, state in zip(block, trained, strict=True):
            results[i] = state
        return len(block)

    done, fitted = retry_halving(
        run, min(chunk, len(members)), loaded.device, "tuning: sets per forward"
    )
    return fitted, done


def tune_set(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    config: TuningConfig,
) -> TunedModel:
    """:func:`~tunelens.models.tuning.tune_on_pairs` for one set, on this module's fast path.

    LoRA: the set is tuned by :func:`tune_many_sets` (its shared prompt prefix,
    e.g. the task definition, computed once per step) and its adapter loaded
    into a fresh :func:`~tunelens.models.tuning.attach_lora` model, with the
    step losses recorded; the same adapter and losses as ``tune_on_pairs`` up
    to float rounding, in about half the time on the world models. Full
    fine-tuning is ``tune_on_pairs`` itself. ``unload()`` the result as usual.
    """
    if config.method != "lora":
        return tune_on_pairs(loaded, pairs, config)
    losses: list[list[float]] = []
    (state,) = tune_many_sets(loaded, [pairs], config, losses=losses)
    tuned = attach_lora(loaded, config)
    try:
        tuned.load_adapter_state(state)
    except BaseException:
        tuned.unload()
        raise
    tuned.losses = losses[0]
    return tuned


def _tokens(encoded: Sequence[EncodedPair]) -> int:
    return sum(len(e.prompt_ids) + len(e.target_ids) for e in encoded)


def _chunk_size(
    loaded: LoadedModel,
    encoded: Sequence[Sequence[EncodedPair]],
    layout: str,
    config: TuningConfig,
) -> int:
    """Sets per forward: all of them, or on a CPU as many as :data:`CPU_ACTIVATION_BUDGET` allows.

    A step's activations are about (token positions) x (widest layer) floats; on
    a CPU, steps whose activations stay near the caches run faster per token.
    Chunks are made even (two of 15 rather than 20 and 10).
    """
    if loaded.device.type != "cpu":
        return len(encoded)
    width = _widest_layer(loaded.model)
    positions = sum(_step_positions(pairs, layout, config) for pairs in encoded)
    chunks = max(1, math.ceil(positions * width / CPU_ACTIVATION_BUDGET))
    return math.ceil(len(encoded) / min(chunks, len(encoded)))


def _step_positions(pairs: Sequence[EncodedPair], layout: str, config: TuningConfig) -> float:
    """About how many token positions one step of a set computes in ``layout``."""
    rows = min(config.batch_size, len(pairs))
    n = shared_prefix_length(pairs) if layout != "rows" else 0
    rests = [len(e.prompt_ids) + len(e.target_ids) - n for e in pairs]
    if layout == "packed":
        return n + rows * sum(rests) / len(rests)
    return n + rows * max(rests)


def _widest_layer(model: torch.nn.Module) -> int:
    """Output features of the widest linear layer of the blocks (the LM head left out)."""
    get_head: Any = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    widths = [
        int(getattr(module, "out_features", 0) or getattr(module, "nf", 0))
        for module in model.modules()
        if module is not head
    ]
    return max([w for w in widths if w > 0], default=1)


def shared_prefix_length(encoded: Sequence[EncodedPair]) -> int:
    """Tokens that every prompt of a set starts with, leaving each prompt at least its last token.

    The last prompt token stays with the rest of the row because its logits
    predict the first target token.
    """
    prompts = [e.prompt_ids for e in encoded]
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def prefix_saving(encoded: Sequence[Sequence[EncodedPair]], config: TuningConfig) -> float:
    """The fraction of an epoch's token positions that computing each shared prefix once saves.

    A set of m rows in batches of b takes ceil(m / b) steps per epoch; each step
    runs its prefix once instead of once per row.
    """
    total = sum(_tokens(pairs) for pairs in encoded)
    saved = sum(
        shared_prefix_length(pairs) * (len(pairs) - math.ceil(len(pairs) / config.batch_size))
        for pairs in encoded
    )
    return saved / max(1, total)


def choose_layout(
    loaded: LoadedModel,
    encoded: Sequence[Sequence[EncodedPair]],
    config: TuningConfig,
    layout: Layout = "auto",
) -> Literal["packed", "cache", "rows"]:
    """The layout of a lockstep block of sets (``tune_many_sets``'s ``layout`` resolved).

    A shared-prefix layout needs a causal LM whose forward takes position ids
    and that takes no position information from the mask (ALiBi), with every
    row within its sliding window if it has one; packed rows also need an
    attention implementation that applies a custom 4-D mask (sdpa, eager: the
    hidden-state capture's rule, :func:`tunelens.models.hidden_states.packable`).

    ``"auto"``: the full rows where no shared-prefix layout applies, for
    recurrent models, and for blocks where the shared prefixes save less than
    :data:`MIN_PREFIX_SAVING` of the token positions; otherwise packed rows
    when the longest packed row has at most :data:`PACKED_MAX_TOKENS` tokens
    (dense attention over a packed row costs its length squared), else the
    prefix's key/value cache, which needs every set to have a prefix.
    """
    if layout == "rows":
        return "rows"
    model = loaded.model
    model_config = getattr(model, "config", None)
    window = sliding_window(model_config)
    longest = max(len(e.prompt_ids) + len(e.target_ids) for pairs in encoded for e in pairs)
    shareable = (
        loaded.kind == "causal"
        and forward_takes(model, "position_ids")
        and not getattr(model_config, "alibi", False)
        and (window is None or longest <= window)
    )
    can_pack = shareable and packable(loaded)
    prefixes = [shared_prefix_length(pairs) for pairs in encoded]
    if layout == "auto":
        stateful = getattr(model, "_is_stateful", False)  # recurrent state, no key/value cache
        if not shareable or stateful or prefix_saving(encoded, config) < MIN_PREFIX_SAVING:
            return "rows"
        if can_pack and _longest_packed_row(encoded, prefixes, config) <= PACKED_MAX_TOKENS:
            return "packed"
        return "cache" if min(prefixes) > 0 else "rows"
    if not shareable:
        raise ValueError(
            f"layout {layout!r} needs a causal LM that takes position ids (no ALiBi, rows "
            "within its sliding window)"
        )
    if layout == "packed" and not can_pack:
        attention = getattr(model_config, "_attn_implementation", None)
        raise ValueError(
            f"layout 'packed' needs an attention implementation that takes a 4-D mask "
            f"(sdpa, eager), not {attention!r}"
        )
    if layout == "cache" and min(prefixes) == 0:
        raise ValueError("layout 'cache' needs a shared prompt prefix in every set")
    return layout


def _longest_packed_row(
    encoded: Sequence[Sequence[EncodedPair]], prefixes: Sequence[int], config: TuningConfig
) -> int:
    """An upper bound of the packed row length: the prefix and the longest batch of rests."""
    longest = 0
    for pairs, n in zip(encoded, prefixes, strict=True):
        rests = sorted((len(e.prompt_ids) + len(e.target_ids) - n for e in pairs), reverse=True)
        longest = max(longest, n + sum(rests[: config.batch_size]))
    return longest


StepLosses = Callable[[Sequence[Sequence[int]]], tuple[torch.Tensor, torch.Tensor]]
"""One step's forward: each set's pair indices -> (summed token losses, label counts) per row.

Rows are set-major, the same number per set (one per set in packed rows).
"""


def _train_lockstep(
    loaded: LoadedModel,
    names: Sequence[str],
    encoded: Sequence[Sequence[EncodedPair]],
    states: Sequence[AdapterState],
    seeds: Sequence[int],
    set_ids: Sequence[int | None],
    config: TuningConfig,
    *,
    layout: Layout = "rows",
    losses: Sequence[list[float]] | None = None,
) -> list[AdapterState]:
    """Train equal-sized sets together; returns their final adapter states (CPU).

    ``losses[j]``, where given, receives set j's loss after every step."""
    model = loaded.model
    schedules = [step_batches(len(e), config, seed) for e, seed in zip(encoded, seeds, strict=True)]
    n_sets = len(encoded)
    chosen = choose_layout(loaded, encoded, config, layout)
    step_losses: StepLosses
    if chosen == "packed":
        step_losses = _packed_losses(loaded, encoded)
    elif chosen == "cache":
        step_losses = _cache_losses(loaded, encoded)
    else:
        step_losses = _row_losses(loaded, encoded)
    with batched_lora(model, names, states, config) as layers:
        params = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
        optimizer = make_optimizer(params, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(config, len(schedules[0]))
        )
        guards = [
            DivergenceGuard(config, vocabulary_size(loaded), i, total_steps=len(schedules[0]))
            for i in set_ids
        ]
        _check_norms(guards, 0, _set_norms(params))
        torch.manual_seed(config.seed)
        set_train_mode(model, config)
        for layer in layers:
            layer.dropout.train()
        try:
            for step in range(1, len(schedules[0]) + 1):
                sums, counts = step_losses([schedule[step - 1] for schedule in schedules])
                per_set = sums.view(n_sets, -1).sum(1) / counts.view(n_sets, -1).sum(1).clamp(min=1)
                for j, value in enumerate(per_set.tolist()):
                    guards[j].loss(step, value)
                    if losses is not None:
                        losses[j].append(value)
                per_set.sum().backward()
                grad_norms = _clip_per_set(params, config.max_grad_norm)
                for guard, norm in zip(guards, grad_norms, strict=True):
                    guard.grad_norm(step, norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                _check_norms(guards, step, _set_norms(params))
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.eval()
        return [
            {
                key: tensor
                for name, layer in zip(names, layers, strict=True)
                for key, tensor in (
                    (
                        adapter_key(name, "lora_A"),
                        layer.lora_A[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                    (
                        adapter_key(name, "lora_B"),
                        layer.lora_B[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                )
            }
            for s in range(n_sets)
        ]


def _row_losses(loaded: LoadedModel, encoded: Sequence[Sequence[EncodedPair]]) -> StepLosses:
    """The full rows of every set, padded to the step's longest (any model)."""
    model, kind = loaded.model, loaded.kind
    pad_id = loaded.tokenizer.pad_token_id

    def losses(batches: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [pairs[i] for pairs, batch in zip(encoded, batches, strict=True) for i in batch]
        batch = {k: v.to(loaded.device) for k, v in collate(rows, pad_id, kind).items()}
        logits = forward_logits(model, batch, kind, pad_id)
        return token_losses(logits, batch["labels"], kind), label_counts(batch["labels"], kind)

    return losses


def _packed_losses(loaded: LoadedModel, encoded: Sequence[Sequence[EncodedPair]]) -> StepLosses:
    """One row per set: its prefix, then the rest of each of the step's rows, under a 4-D mask.

    A row is a :class:`~tunelens.models.packing.PackedRow` whose first segment
    is the prefix and whose other segments continue it, one per training row,
    under :func:`~tunelens.models.packing.attention_mask` (every rest sees the
    prefix and itself, causally) with position ids that go on from the
    prefix's, so each rest computes what ``prefix + rest`` alone does. The
    padding that evens the rows out is one more segment, which sees only itself.
    """
    model, device = loaded.model, loaded.device
    pad_id = loaded.tokenizer.pad_token_id
    prefixes = [shared_prefix_length(pairs) for pairs in encoded]

    def losses(batches: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows: list[tuple[PackedRow, list[int]]] = []
        for pairs, batch, n in zip(encoded, batches, prefixes, strict=True):
            prefix = list(pairs[batch[0]].prompt_ids[:n])
            ids, targets, positions = prefix, [IGNORE_INDEX] * n, list(range(n))
            segments, parents = [0] * n, [-1]
            for i in batch:
                prompt, target = pairs[i].prompt_ids[n:], pairs[i].target_ids
                ids += prompt + target
                targets += [IGNORE_INDEX] * len(prompt) + list(target)
                positions += range(n, n + len(prompt) + len(target))
                segments += [len(parents)] * (len(prompt) + len(target))
                parents.append(0 if n else -1)
            rows.append((PackedRow(ids, positions, segments, parents, {}), targets))
        width = max(len(row.ids) for row, _ in rows)
        masks, row_ids, row_positions, row_targets = [], [], [], []
        for unpadded, row_labels in rows:
            row = padded_row(unpadded, width, pad_id)
            masks.append(attention_mask(row, device))
            row_ids.append(row.ids)
            row_positions.append(row.positions)
            row_targets.append(row_labels + [IGNORE_INDEX] * (width - len(unpadded.ids)))
        mask = model_mask(torch.cat(masks), model)
        return target_losses(
            model,
            torch.tensor(row_targets, device=device),
            input_ids=torch.tensor(row_ids, device=device),
            attention_mask=mask,
            position_ids=torch.tensor(row_positions, device=device),
            use_cache=False,
        )

    return losses


def _cache_losses(loaded: LoadedModel, encoded: Sequence[Sequence[EncodedPair]]) -> StepLosses:
    """Each set's prefix once (batch = sets), its key/value cache repeated over the set's rows.

    The prefixes run through the decoder without its LM head, with gradients;
    ``DynamicCache.batch_repeat_interleave`` repeats them differentiably, and the
    rests run on top with position ids that go on from each set's prefix.
    """
    model, device = loaded.model, loaded.device
    pad_id = loaded.tokenizer.pad_token_id
    lengths = [shared_prefix_length(pairs) for pairs in encoded]
    width = max(lengths)
    prefix_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for s, (pairs, n) in enumerate(zip(encoded, lengths, strict=True)):
        prefix_ids[s, :n] = torch.tensor(pairs[0].prompt_ids[:n])
        prefix_mask[s, :n] = 1
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
    prefix_positions = torch.arange(width, device=device).expand(len(encoded), -1)
    starts = torch.tensor(lengths, device=device)
    rests = [
        [EncodedPair(e.prompt_ids[n:], e.target_ids) for e in pairs]
        for pairs, n in zip(encoded, lengths, strict=True)
    ]
    trunk = getattr(model, "base_model", model)  # the decoder: the prefix needs no logits
    # The cache argument: ``cache`` in transformers 5.x, ``past_key_values`` before.
    cache_argument = "cache" if forward_takes(model, "cache") else "past_key_values"
    fallback: list[StepLosses] = []  # the full rows, where the model returns no DynamicCache

    def losses(batches: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if fallback:
            return fallback[0](batches)
        rows = len(batches[0])  # lockstep: every set takes equal batches
        batch = {
            k: v.to(device)
            for k, v in collate_causal(
                [rest[i] for rest, b in zip(rests, batches, strict=True) for i in b], pad_id
            ).items()
        }
        out = trunk(
            input_ids=prefix_ids,
            attention_mask=prefix_mask,
            position_ids=prefix_positions,
            use_cache=True,
        )
        cache: Any = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if not callable(getattr(cache, "batch_repeat_interleave", None)):
            fallback.append(_row_losses(loaded, encoded))
            return fallback[0](batches)
        cache.batch_repeat_interleave(rows)
        suffix_width = batch["input_ids"].shape[1]
        return target_losses(
            model,
            batch["labels"],
            input_ids=batch["input_ids"],
            attention_mask=torch.cat(
                [prefix_mask.repeat_interleave(rows, dim=0), batch["attention_mask"]], dim=1
            ),
            position_ids=starts.repeat_interleave(rows)[:, None]
            + torch.arange(suffix_width, device=device),
            use_cache=True,
            **{cache_argument: cache},
        )

    return losses


def _clip_per_set(params: Sequence[torch.nn.Parameter], max_norm: float | None) -> list[float]:
    """``clip_grad_norm_`` for each set's slice of the stacked parameters separately.

    Returns each set's gradient norm before clipping (``max_norm`` None: no clipping).
    """
    grads = [p.grad for p in params if p.grad is not None]
    norms = sum_on_cpu([g.float().pow(2).flatten(1).sum(1) for g in grads]).sqrt()
    if max_norm is not None:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.device, g.dtype).view(-1, *([1] * (g.dim() - 1))))
    return norms.tolist()


def _set_norms(params: Sequence[torch.nn.Parameter]) -> list[float]:
    """Each set's trainable-parameter norm (the stacked parameters' slices, set-major)."""
    with torch.no_grad():
        squares = [p.detach().float().pow(2).flatten(1).sum(1) for p in params]
        return sum_on_cpu(squares).sqrt().tolist()


def _check_norms(guards: Sequence[DivergenceGuard], step: int, norms: Sequence[float]) -> None:
    for guard, norm in zip(guards, norms, strict=True):
        guard.param_norm(step, norm)
