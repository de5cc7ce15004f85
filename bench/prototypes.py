"""PROTOTYPES, not library code: two shared-prefix paths measured next to the library.

Both are meant to move into the library (see bench/README.md); until then
they live here, built from the library's own pieces, and the benchmark checks
them against the same baselines as the library.

1. :func:`capture_packed` (hidden states): instead of running the shared
   prefix once and then copying its key/value cache for every batch of
   suffixes (``capture_with_shared_prefix``: the cache copies, ``copy_`` and
   ``cat``, take about a fifth of its time on a CPU), the prefix and all the
   suffixes go into **one row** -- ``[prefix, suffix 1, ..., suffix n]`` -- with a
   4-D attention mask in which every suffix sees the prefix and itself only,
   and position ids that restart after the prefix for each suffix. One
   forward, no padding, no cache; causal attention makes each suffix's states
   those of ``prefix + suffix`` alone.

2. :func:`tune_many_sets_shared_prefix` (per-set tuning): the demonstrations of
   one convergence set are prompts of one task; with the definition on, every
   prompt of a set starts with the same ``<s> Definition: ... Input:`` tokens,
   most of each training row (27 of 32 tokens for the world tasks of the
   benchmark). ``tune_many_sets`` recomputes that prefix for every row of every
   step; on a CPU, where the work is bound by FLOPs and memory traffic rather
   than per-call overhead, stacking the sets alone gains little over
   sequential PEFT runs. Here every optimizer step runs, per set, the prefix
   once (batch = sets, with gradients, ``use_cache=True``), repeats its
   key/value cache over the set's rows (``DynamicCache.batch_repeat_interleave``,
   differentiable) and runs only the suffixes (rest of the prompt + target) on
   top, with explicit position ids. Causal attention makes this the same
   computation as the full rows, so the adapters equal those of sequential
   runs up to float rounding. Everything else (per-set LoRA by ``torch.bmm``,
   seeded init and batch order, per-set loss normalisation and clipping) is
   ``tune_many_sets``'s own code, imported from the library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunelens.models import tuning
from tunelens.models.batching import EncodedPair, collate_causal, label_counts, token_losses

# Attention implementations that take a custom 4-D boolean mask as it is.
_MASKABLE = ("sdpa", "eager")


@torch.no_grad()
def capture_packed(
    loaded: Any, prefix: str, suffixes: list[str], max_tokens: int = 2048
) -> torch.Tensor:
    """``capture_last_token_states(loaded, [prefix + s for s in suffixes])`` in packed rows.

    Each forward holds the prefix and as many suffixes as fit in ``max_tokens``.
    Prompts whose tokens do not extend the prefix's, and models that take no
    position ids or custom masks, take the library's paths.
    """
    from tunelens.models.hidden_states import (
        _accepts_position_ids,
        capture_last_token_states,
        capture_with_shared_prefix,
        split_shared_prefix,
    )

    model = loaded.model
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if (
        loaded.kind != "causal"
        or not suffixes
        or not _accepts_position_ids(model)
        or attention not in _MASKABLE
    ):
        return capture_with_shared_prefix(loaded, prefix, suffixes)
    prefix_ids, rests = split_shared_prefix(loaded.tokenizer, prefix, suffixes)
    if not prefix_ids:
        return capture_last_token_states(loaded, [prefix + s for s in suffixes])
    results: list[torch.Tensor | None] = [None] * len(suffixes)
    plain = [i for i, r in enumerate(rests) if not r]  # no shared prefix, or nothing after it
    packable = [i for i, r in enumerate(rests) if r]
    n_prefix = len(prefix_ids)
    while packable:
        rows, budget = [], max_tokens - n_prefix
        while packable and (not rows or len(rests[packable[0]]) <= budget):
            budget -= len(rests[packable[0]])
            rows.append(packable.pop(0))
        ids, positions, owner, last = list(prefix_ids), list(range(n_prefix)), [-1] * n_prefix, []
        for j, i in enumerate(rows):
            ids += rests[i]
            positions += range(n_prefix, n_prefix + len(rests[i]))
            owner += [j] * len(rests[i])
            last.append(len(ids) - 1)
        owners = torch.tensor(owner, device=loaded.device)
        causal = torch.ones(len(ids), len(ids), dtype=torch.bool, device=loaded.device).tril()
        visible = (owners[:, None] == owners[None, :]) | (owners[None, :] == -1)
        mask = (causal & visible)[None, None]
        if attention == "eager":  # eager attention adds the mask to the scores
            dtype = next(model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        out = model(
            input_ids=torch.tensor([ids], device=loaded.device),
            attention_mask=mask,
            position_ids=torch.tensor([positions], device=loaded.device),
            output_hidden_states=True,
            use_cache=False,
        )
        index = torch.tensor(last, device=loaded.device)
        states = torch.stack([h[0, index] for h in out.hidden_states], dim=1)
        for i, state in zip(rows, states.float().cpu(), strict=True):
            results[i] = state
    if plain:
        states = capture_last_token_states(loaded, [prefix + suffixes[i] for i in plain])
        for i, state in zip(plain, states, strict=True):
            results[i] = state
    return torch.stack(results)  # type: ignore[arg-type]


def shared_prefix_length(encoded: Sequence[EncodedPair]) -> int:
    """Tokens that every prompt of a set starts with, leaving each prompt at least its last token.

    The last prompt token stays in the suffix because its logits predict the
    first target token.
    """
    prompts = [e.prompt_ids for e in encoded]
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def _supported(loaded: Any) -> bool:
    """Causal LMs that take position ids and return a DynamicCache-like cache."""
    from tunelens.models.hidden_states import _accepts_position_ids

    return loaded.kind == "causal" and _accepts_position_ids(loaded.model)


def tune_many_sets_shared_prefix(
    loaded: Any,
    sets: Sequence[Sequence[tuple[str, str]]],
    config: Any,
    *,
    seeds: Sequence[int] | None = None,
    sets_per_batch: int | None = None,
) -> list[dict[str, Any]]:
    """``tune_many_sets`` with each set's common prompt prefix computed once per step."""
    if not _supported(loaded):
        return tuning.tune_many_sets(
            loaded, sets, config, seeds=seeds, sets_per_batch=sets_per_batch
        )
    tuning._check_plain(loaded)
    seeds = [config.seed] * len(sets) if seeds is None else list(seeds)
    encoded = [tuning._encode(loaded, pairs, config, None) for pairs in sets]
    base = loaded.model
    names = tuning.target_module_names(
        base, tuning.resolve_target_modules(base, config.target_modules)
    )
    shapes = tuning._module_shapes(base, names)
    groups: dict[int, list[int]] = {}
    for i, pairs in enumerate(encoded):
        groups.setdefault(len(pairs), []).append(i)
    chunk = sets_per_batch or len(sets)
    results: list[dict[str, Any] | None] = [None] * len(sets)
    flags = tuning._SavedFlags.of(base)
    try:
        for param in base.parameters():
            param.requires_grad_(False)
        for members in groups.values():
            for start in range(0, len(members), chunk):
                block = members[start : start + chunk]
                states = [tuning.initial_lora_state(shapes, config.lora_r, seeds[i]) for i in block]
                args = (
                    loaded,
                    names,
                    [encoded[i] for i in block],
                    states,
                    [seeds[i] for i in block],
                    block,
                    config,
                )
                prefixes = [shared_prefix_length(encoded[i]) for i in block]
                train = _train_lockstep_prefix if min(prefixes) > 0 else tuning._train_lockstep
                for i, state in zip(block, train(*args), strict=True):
                    results[i] = state
    finally:
        flags.restore(base)
        base.eval()
    return [r for r in results if r is not None]


def _train_lockstep_prefix(
    loaded: Any,
    names: Sequence[str],
    encoded: Sequence[Sequence[EncodedPair]],
    states: Sequence[Any],
    seeds: Sequence[int],
    set_ids: Sequence[int],
    config: Any,
) -> list[dict[str, torch.Tensor]]:
    model, device = loaded.model, loaded.device
    pad_id = loaded.tokenizer.pad_token_id
    n_sets = len(encoded)
    lengths = [shared_prefix_length(e) for e in encoded]
    width = max(lengths)
    prefix_ids = torch.full((n_sets, width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((n_sets, width), dtype=torch.long)
    for s, (pairs, n) in enumerate(zip(encoded, lengths, strict=True)):
        prefix_ids[s, :n] = torch.tensor(pairs[0].prompt_ids[:n])
        prefix_mask[s, :n] = 1
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
    prefix_positions = torch.arange(width, device=device).expand(n_sets, -1)
    starts = torch.tensor(lengths, device=device)
    suffixes = [
        [EncodedPair(e.prompt_ids[n:], e.target_ids) for e in pairs]
        for pairs, n in zip(encoded, lengths, strict=True)
    ]
    schedules = [
        tuning.step_batches(len(e), config, seed) for e, seed in zip(encoded, seeds, strict=True)
    ]
    trunk = model.base_model  # the decoder without the LM head: the prefix needs no logits
    with tuning.batched_lora(model, names, states, config) as layers:
        params = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
        optimizer = tuning._optimizer(params, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, tuning._lr_lambda(config, len(schedules[0]))
        )
        torch.manual_seed(config.seed)
        tuning._set_train_mode(model, config)
        for layer in layers:
            layer.dropout.train()
        try:
            for step in range(len(schedules[0])):
                rows = len(schedules[0][step])  # lockstep: every set takes equal batches
                batch = {
                    k: v.to(device)
                    for k, v in collate_causal(
                        [
                            suffix[i]
                            for suffix, schedule in zip(suffixes, schedules, strict=True)
                            for i in schedule[step]
                        ],
                        pad_id,
                    ).items()
                }
                cache = trunk(
                    input_ids=prefix_ids,
                    attention_mask=prefix_mask,
                    position_ids=prefix_positions,
                    use_cache=True,
                ).past_key_values
                cache.batch_repeat_interleave(rows)
                suffix_width = batch["input_ids"].shape[1]
                logits = model(
                    input_ids=batch["input_ids"],
                    attention_mask=torch.cat(
                        [prefix_mask.repeat_interleave(rows, dim=0), batch["attention_mask"]], dim=1
                    ),
                    position_ids=(
                        starts.repeat_interleave(rows)[:, None]
                        + torch.arange(suffix_width, device=device)
                    ),
                    past_key_values=cache,
                    use_cache=True,
                ).logits
                labels = batch["labels"]
                per_set = token_losses(logits, labels, "causal").view(n_sets, -1).sum(
                    1
                ) / label_counts(labels, "causal").view(n_sets, -1).sum(1).clamp(min=1)
                for j, value in enumerate(per_set.tolist()):
                    tuning._check_finite(value, step + 1, config, "loss", set_ids[j])
                per_set.sum().backward()
                if config.max_grad_norm is not None:
                    tuning._clip_per_set(params, config.max_grad_norm, step + 1, config, set_ids)
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
                        tuning._adapter_key(name, "lora_A"),
                        layer.lora_A[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                    (
                        tuning._adapter_key(name, "lora_B"),
                        layer.lora_B[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                )
            }
            for s in range(n_sets)
        ]
