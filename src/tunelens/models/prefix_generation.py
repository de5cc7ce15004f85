"""Greedy generation on top of a shared prefix computed once (the fast path of
:func:`tunelens.models.predict.generate_predictions`).

Prompts that share a long token prefix (an ICL prompt set's demonstrations, a
Tk-Instruct task's definition and positive examples) are grouped with the
prefix tree of :func:`tunelens.models.packing.prefix_tree`. Each group's
prefix runs through the model once (:func:`prefix_cache`, one forward that
fills a transformers ``DynamicCache``); the group's suffixes are then generated
in batches, each on a copy of that cache repeated to the batch
(``DynamicCache.batch_repeat_interleave``). ``generate`` is given the full
sequences, prefix included (it skips the cached positions), and an attention
mask that is 1 on the prefix, 0 on the padding, which sits *between* prefix and
suffix (:func:`group_inputs`), and 1 on the suffix: the position ids that
``generate`` derives from the mask (its cumulative sum) then number every row's
tokens 0, 1, ... without a gap, exactly as in the left-padded plain path.

Grouping (:func:`plan_groups`): a group is the set of prompts under a node of
the prefix tree, its prefix the tokens up to that node, cut so that every
member keeps at least one token to feed ``generate``. A group qualifies with at
least :data:`MIN_GROUP_PROMPTS` prompts, a prefix of at least
:data:`MIN_PREFIX_TOKENS` tokens, and a saving (``(members - 1) x prefix``
tokens not computed again) of at least ``min_saved`` tokens; of a node and its
descendants, the plan keeps whichever saves more prefix tokens, so prompts
that share a chat header across tasks and a definition within each task are
grouped by task. Prompts in no group take the plain path.

``min_saved`` is where a group pays for itself (:func:`break_even_tokens`): a
group costs one more forward (its prefix) and its own ``generate`` calls,
where the plain path would have put its prompts into batches with others. That
fixed cost grows with the layers (Python and kernel launches per block and
step), the saving with the parameters per token, so the break-even is
:data:`CALL_COST` x layers / parameters tokens. Measured on this machine class
(process time, one thread, the audit's Tk prompts of 40 world tasks with
definition + 2 examples, 50-token prefixes, 4 new tokens): groups of 2, 4 and
8 prompts took 0.71 / 0.78 / 0.74 s on the fast path against 0.33 / 0.63 /
0.98 s plain on ``world`` (1.62M parameters, 6 layers: break-even about 227
saved tokens a group), and 0.36 / 0.43 / 0.44 s against 0.12 / 0.19 / 0.43 s
on ``world-small`` (0.48M, 3 layers: about 360). A 20M-parameter model breaks
even at about 18 tokens, a 7B one at under one: the fast path then takes every
group the tree offers.

This module plans and runs; whether the fast path is taken at all (a causal LM
whose cache is the plain full-attention ``DynamicCache``) is
:func:`supports_prefix_cache`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tunelens.models.packing import PrefixNode, prefix_tree

# A shared prefix shorter than this saves less than the extra forward and the
# separate generate call cost (one small forward of a batch of one).
MIN_PREFIX_TOKENS = 16
# Two prompts are the least that can share anything.
MIN_GROUP_PROMPTS = 2
# A group's fixed cost in parameter-tokens per layer: break_even_tokens() = CALL_COST x
# layers / parameters (fitted to the figures in the module docstring: 222 tokens for
# world, 375 for world-small).
CALL_COST = 6e7


def break_even_tokens(parameters: int, layers: int) -> int:
    """Saved prefix tokens at which a group's extra forward and calls pay for themselves."""
    if parameters <= 0:
        return 0
    return math.ceil(CALL_COST * max(1, layers) / parameters)


def model_break_even(model: Any) -> int:
    """:func:`break_even_tokens` of a loaded model (all its parameters, its decoder layers)."""
    parameters = sum(p.numel() for p in model.parameters())
    layers = getattr(_text_config(model), "num_hidden_layers", None) or 1
    return break_even_tokens(parameters, int(layers))


@dataclass(frozen=True)
class PrefixGroup:
    """Prompts (indices) whose first ``prefix_length`` tokens are the same; each is longer."""

    prefix_length: int
    members: tuple[int, ...]


def plan_groups(
    ids: Sequence[Sequence[int]],
    *,
    min_prefix: int = MIN_PREFIX_TOKENS,
    min_prompts: int = MIN_GROUP_PROMPTS,
    min_saved: int = 0,
) -> list[PrefixGroup]:
    """Disjoint groups of prompts that share a prefix worth computing once (see the module).

    Each node of the prefix tree of ``ids`` is either one group (all prompts
    under it, prefix up to its end, less one token where a prompt ends there)
    or the best plan of its children, whichever saves more prefix tokens
    (ties: the one group); a group saving fewer than ``min_saved`` tokens is
    dropped. Groups come back in the order of their first member.
    """
    if not ids:
        return []
    root = prefix_tree(ids)
    nodes: list[PrefixNode] = []  # pre-order: every node before its descendants
    stack = list(root.children)
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack += node.children
    under: dict[int, list[int]] = {}
    best: dict[int, tuple[int, list[PrefixGroup]]] = {}
    for node in reversed(nodes):  # descendants first
        members = list(node.ends) + [i for c in node.children for i in under[id(c)]]
        under[id(node)] = members
        saved = sum(best[id(c)][0] for c in node.children)
        groups = [g for c in node.children for g in best[id(c)][1]]
        end = node.depth + len(node.tokens)
        length = end - 1 if node.ends else end  # a prompt that ends here keeps one token
        own = (len(members) - 1) * length
        if len(members) >= min_prompts and length >= min_prefix and own >= saved:
            best[id(node)] = (own, [PrefixGroup(length, tuple(sorted(members)))])
        else:
            best[id(node)] = (saved, groups)
    plan = [g for c in root.children for g in best[id(c)][1]]
    plan = [g for g in plan if (len(g.members) - 1) * g.prefix_length >= min_saved]
    return sorted(plan, key=lambda g: g.members[0])


def _text_config(model: Any) -> Any:
    config = model.config
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def supports_prefix_cache(model: Any, generation_config: Any) -> bool:
    """Whether ``model`` (a causal LM) can generate on a shared ``DynamicCache`` prefix.

    Only when its cache would be the plain dynamic one with a full-attention
    layer everywhere: no encoder-decoder, no ``cache_implementation`` (static,
    hybrid, quantized, ...) in the generation config, no model that brings its
    own cache, no sliding-window, chunked or linear-attention layer; and eager or SDPA
    attention (flash and flex attention keep the plain path).
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(generation_config, "cache_implementation", None) not in (None, "dynamic"):
        return False
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if not callable(supports) or not supports():
        return False
    text = _text_config(model)
    # padding between prefix and suffix is tested with these two; flash / flex kernels unpad
    # or block the mask their own way, so they keep the plain path
    if getattr(text, "_attn_implementation", None) not in (None, "eager", "sdpa"):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    try:
        probe = DynamicCache(config=text)
    except Exception:  # a config the cache cannot read: not a case to guess about
        return False
    return all(type(layer) is DynamicLayer for layer in probe.layers)


@torch.no_grad()
def prefix_cache(model: Any, prefix: Sequence[int], device: Any) -> Any | None:
    """A ``DynamicCache`` of ``prefix`` (batch of one), or None where the model's cache is
    not a plain full-attention ``DynamicCache`` of exactly those tokens."""
    cache = DynamicCache(config=_text_config(model))
    input_ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    model(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), cache=cache, use_cache=True
    )
    if type(cache) is not DynamicCache or not all(type(x) is DynamicLayer for x in cache.layers):
        return None
    if cache.get_seq_length() != len(prefix):
        return None
    return cache


def expanded(cache: Any, rows: int) -> Any:
    """A copy of the batch-of-one ``cache`` repeated to ``rows`` rows."""
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(rows)
    return copied


def group_inputs(
    prefix_length: int, rows: Sequence[Sequence[int]], pad_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``rows`` (full prompts that share their first
    ``prefix_length`` tokens): the prefix, then padding (mask 0), then each row's suffix,
    so every suffix ends in the last column."""
    suffixes = [list(r[prefix_length:]) for r in rows]
    width = max(len(s) for s in suffixes)
    ids = torch.full((len(rows), prefix_length + width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), prefix_length + width), dtype=torch.long)
    ids[:, :prefix_length] = torch.tensor(list(rows[0][:prefix_length]), dtype=torch.long)
    mask[:, :prefix_length] = 1
    for j, suffix in enumerate(suffixes):
        n = len(suffix)
        ids[j, prefix_length + width - n :] = torch.tensor(suffix, dtype=torch.long)
        mask[j, prefix_length + width - n :] = 1
    return ids.to(device), mask.to(device)
