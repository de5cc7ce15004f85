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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from tunelens.errors import TunelensInputError
from tunelens.models.batching import (
    EncodedPair,
    collate,
    forward_logits,
    label_counts,
    token_losses,
)
from tunelens.models.loading import LoadedModel
from tunelens.models.tuning.adapters import _check_plain, _SavedFlags
from tunelens.models.tuning.config import TuningConfig
from tunelens.models.tuning.loop import (
    _check_finite,
    _encode,
    _lr_lambda,
    _optimizer,
    _set_train_mode,
    step_batches,
)
from tunelens.models.tuning.targets import (
    AdapterState,
    _adapter_dtype,
    _adapter_key,
    _module_shapes,
    initial_lora_state,
    resolve_target_modules,
    target_module_names,
)


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
    dtype = _adapter_dtype(model)
    scaling = config.lora_alpha / config.lora_r
    wrapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    layers = []
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            base = modules[name]
            stack = [
                torch.stack([s[_adapter_key(name, m)] for s in states]).to(device, dtype)
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
    at a time. Load a result with :meth:`TunedModel.load_adapter_state` or
    :func:`attach_lora`. The base model is left untouched.
    """
    if config.method != "lora":
        raise TunelensInputError(
            "tune_many_sets tunes LoRA adapters; method must be 'lora'", where="tuning.method"
        )
    _check_plain(loaded)
    seeds = [config.seed] * len(sets) if seeds is None else list(seeds)
    if len(seeds) != len(sets):
        raise ValueError(f"{len(seeds)} seeds for {len(sets)} sets")
    encoded = [_encode(loaded, pairs, config, None) for pairs in sets]
    base = loaded.model
    names = target_module_names(base, resolve_target_modules(base, config.target_modules))
    shapes = _module_shapes(base, names)
    groups: dict[int, list[int]] = {}
    for i, pairs in enumerate(encoded):
        groups.setdefault(len(pairs), []).append(i)
    chunk = sets_per_batch or len(sets)
    results: list[AdapterState | None] = [None] * len(sets)
    flags = _SavedFlags.of(base)
    try:
        for param in base.parameters():
            param.requires_grad_(False)
        for members in groups.values():
            for start in range(0, len(members), chunk):
                block = members[start : start + chunk]
                states = [initial_lora_state(shapes, config.lora_r, seeds[i]) for i in block]
                trained = _train_lockstep(
                    loaded,
                    names,
                    [encoded[i] for i in block],
                    states,
                    [seeds[i] for i in block],
                    block,
                    config,
                )
                for i, state in zip(block, trained, strict=True):
                    results[i] = state
    finally:
        flags.restore(base)
        base.eval()
    return [r for r in results if r is not None]


def _train_lockstep(
    loaded: LoadedModel,
    names: Sequence[str],
    encoded: Sequence[Sequence[EncodedPair]],
    states: Sequence[AdapterState],
    seeds: Sequence[int],
    set_ids: Sequence[int],
    config: TuningConfig,
) -> list[AdapterState]:
    """Train equal-sized sets together; returns their final adapter states (CPU)."""
    model, kind = loaded.model, loaded.kind
    pad_id = loaded.tokenizer.pad_token_id
    schedules = [step_batches(len(e), config, seed) for e, seed in zip(encoded, seeds, strict=True)]
    n_sets = len(encoded)
    with batched_lora(model, names, states, config) as layers:
        params = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
        optimizer = _optimizer(params, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(config, len(schedules[0]))
        )
        torch.manual_seed(config.seed)
        _set_train_mode(model, config)
        for layer in layers:
            layer.dropout.train()
        try:
            for step in range(len(schedules[0])):
                rows = [
                    e[i]
                    for e, schedule in zip(encoded, schedules, strict=True)
                    for i in schedule[step]
                ]
                batch = {k: v.to(loaded.device) for k, v in collate(rows, pad_id, kind).items()}
                logits = forward_logits(model, batch, kind, pad_id)
                per_set = token_losses(logits, batch["labels"], kind).view(n_sets, -1).sum(
                    1
                ) / label_counts(batch["labels"], kind).view(n_sets, -1).sum(1).clamp(min=1)
                for j, value in enumerate(per_set.tolist()):
                    _check_finite(value, step + 1, config, "loss", set_ids[j])
                per_set.sum().backward()
                if config.max_grad_norm is not None:
                    _clip_per_set(params, config.max_grad_norm, step + 1, config, set_ids)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.eval()
        return [
            {
                key: tensor
                for name, layer in zip(names, layers, strict=True)
                for key, tensor in (
                    (
                        _adapter_key(name, "lora_A"),
                        layer.lora_A[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                    (
                        _adapter_key(name, "lora_B"),
                        layer.lora_B[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                )
            }
            for s in range(n_sets)
        ]


def _clip_per_set(
    params: Sequence[torch.nn.Parameter],
    max_norm: float,
    step: int,
    config: TuningConfig,
    set_ids: Sequence[int],
) -> None:
    """``clip_grad_norm_`` for each set's slice of the stacked parameters separately."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    for j, value in enumerate(norms.tolist()):
        _check_finite(value, step, config, "gradient norm", set_ids[j])
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).view(-1, *([1] * (g.dim() - 1))))
